"""The Runner contract: load, run, close.

A runner executes one artifact's model file on one backend. The base class checks inputs
against the artifact's :class:`~cvdeploy.spec.IOSpec` (rank, static dimensions, dtype), so
a backend only implements ``_load``, ``_run`` and ``_close``.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

import numpy as np

from cvdeploy.errors import ShapeError, UsageError
from cvdeploy.precision import check_inference_precision
from cvdeploy.spec import IOSpec

_NP_DTYPES: dict[str, type[np.generic]] = {
    "float32": np.float32,
    "float16": np.float16,
    "uint8": np.uint8,
    "int8": np.int8,
}


def numpy_dtype(name: str) -> type[np.generic]:
    """The numpy dtype for a spec dtype name."""
    return _NP_DTYPES[name]


@dataclass(frozen=True, slots=True)
class RunnerOptions:
    """Options shared by all runners; backend-specific ones go in ``extra``.

    Attributes:
        threads: Intra-op threads (``None``: the backend's default).
        device: ``cpu`` or ``cuda`` / ``gpu`` where the backend supports it.
        extra: Backend settings (e.g. ONNX Runtime ``graph_optimization_level``,
            OpenVINO ``PERFORMANCE_HINT``); unknown keys are rejected by the backend.
    """

    threads: int | None = None
    device: str = "cpu"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be >= 1, got {self.threads}")


class Runner(abc.ABC):
    """Runs one model file. Use as a context manager or call :meth:`load` / :meth:`close`.

    Args:
        model_path: The artifact's main model file.
        io: What the artifact takes and returns.
        options: Runner options.
        model_bytes: The model in memory (decrypted models); overrides reading ``model_path``
            where the backend supports it.
        weights_bytes: The artifact's second file in memory, for formats that keep weights
            apart (OpenVINO ``.bin``).
        inference_precision: What the float parts must compute in (``f32``, ``bf16``,
            ``f16``): the artifact's recorded :attr:`~cvdeploy.bundle.Artifact.runtime_precision`.
            A backend that cannot compute in it, or a CPU without native arithmetic in it,
            refuses at load; a backend never picks a precision on its own.
    """

    format: ClassVar[str] = ""
    supports_bytes: ClassVar[bool] = False
    inference_precisions: ClassVar[frozenset[str]] = frozenset({"f32"})
    """Inference precisions the backend can be pinned to."""

    def __init__(
        self,
        model_path: Path,
        io: IOSpec,
        *,
        options: RunnerOptions | None = None,
        model_bytes: bytes | None = None,
        weights_bytes: bytes | None = None,
        inference_precision: str = "f32",
    ) -> None:
        self.model_path = Path(model_path)
        self.io = io
        self.options = options or RunnerOptions()
        self.model_bytes = model_bytes
        self.weights_bytes = weights_bytes
        self.inference_precision = check_inference_precision(inference_precision)
        self.effective_precision: str | None = None
        """The precision the loaded model computes in, as the backend reports it."""
        self._loaded = False
        if (model_bytes is not None or weights_bytes is not None) and not self.supports_bytes:
            raise UsageError(f"the {self.format} runner cannot load a model from memory")
        if inference_precision not in self.inference_precisions:
            raise UsageError(
                f"the {self.format} runner computes in "
                f"{', '.join(sorted(self.inference_precisions))} only, not {inference_precision}",
                hint="run this artifact with the runtime it was made for",
            )

    # life cycle -------------------------------------------------------------------------
    def load(self) -> Self:
        """Load the model (idempotent)."""
        if not self._loaded:
            self._load()
            if self.effective_precision is None:
                self.effective_precision = self.inference_precision
            self._loaded = True
        return self

    def close(self) -> None:
        """Release the model (idempotent)."""
        if self._loaded:
            self._close()
            self._loaded = False

    def __enter__(self) -> Self:
        return self.load()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def loaded(self) -> bool:
        """Whether :meth:`load` has run."""
        return self._loaded

    # calls ------------------------------------------------------------------------------
    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """Run the model on one input batch.

        Args:
            x: The input tensor, in the artifact's layout and dtype.

        Returns:
            The outputs, in the order of ``io.outputs``, as float32 numpy arrays.

        Raises:
            ShapeError: ``x`` does not fit the artifact's input.
        """
        if not self._loaded:
            self.load()
        self.check_input(x)
        return [np.asarray(o) for o in self._run(x)]

    def check_input(self, x: np.ndarray) -> None:
        """Check rank, static dimensions and dtype of ``x`` against the artifact's input."""
        spec = self.io.input
        if x.ndim != len(spec.shape):
            raise ShapeError(
                f"input {spec.name!r} needs {len(spec.shape)} dimensions "
                f"{list(spec.shape)}, got shape {list(x.shape)}"
            )
        bad = [
            i
            for i, (want, got) in enumerate(zip(spec.shape, x.shape, strict=True))
            if want != -1 and want != got
        ]
        if bad:
            what = "batch size" if bad == [0] else "shape"
            raise ShapeError(
                f"input {spec.name!r} has a fixed {what}: it takes {list(spec.shape)} "
                f"(-1 = any), got {list(x.shape)}",
                hint="re-export with --dynamic or --batch N to accept other shapes",
            )
        want_dtype = numpy_dtype(spec.dtype)
        if x.dtype != want_dtype:
            raise ShapeError(f"input {spec.name!r} takes {spec.dtype}, got {x.dtype}")

    @abc.abstractmethod
    def _load(self) -> None: ...

    @abc.abstractmethod
    def _run(self, x: np.ndarray) -> list[np.ndarray]: ...

    def _close(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        """Runtime settings in effect (for the record of a measurement)."""
        return {
            "format": self.format,
            "threads": self.options.threads,
            "device": self.options.device,
            **dict(self.options.extra),
            "inference_precision": self.effective_precision or self.inference_precision,
        }


def reject_unknown(extra: Mapping[str, Any], known: set[str], backend: str) -> None:
    """Raise a :class:`UsageError` for backend options the backend does not know."""
    unknown = sorted(set(extra) - known)
    if unknown:
        raise UsageError(
            f"unknown {backend} option(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
