"""The quantization backends' protocol: one context object in, a quantized model out.

:func:`cvdeploy.optimize.quantize.quantize_bundle` picks the source, builds the calibration
set and the source predictor, then calls the backend registered under the requested name in
:data:`QUANTIZERS` (imported only when used) with a :class:`QuantizeContext`. The backend
writes its model into ``context.workdir`` and returns a :class:`QuantizedModel` (and the
accuracy-budget record when ``--max-drop`` was given); the gate, the bundle edit and the
timing are the stage's. NNCF's algorithm + per-backend modules is the model.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cvdeploy.bundle import Artifact, Bundle
from cvdeploy.errors import UsageError
from cvdeploy.optimize.calibration import EVAL_THRESHOLDS, CalibrationSet, EvalSet
from cvdeploy.pipeline import Predictor, Thresholds
from cvdeploy.registry import Registry
from cvdeploy.runtime import create_runner
from cvdeploy.spec import IOSpec

BACKENDS = ("openvino", "onnxruntime", "tensorrt")
ENGINES = ("ort", "nncf")
NNCF_ENGINE_HINT = (
    "--engine nncf quantizes a depthwise layer's input per channel, which quantize_static cannot"
)
"""Advice when ``--engine ort`` (``quantize_static``) loses too much: its per-tensor input
scales erase small channels of depthwise layers (``cvdeploy doctor`` names such layers)."""
ARTIFACT_IDS = {
    "openvino": "openvino-int8",
    "onnxruntime": "onnx-int8",
    "tensorrt": "onnx-int8-qdq",
}
Log = Callable[[str], None]

QUANTIZERS = Registry("quantize backend")
QUANTIZERS.register(
    "openvino",
    "cvdeploy.optimize.nncf_quant:quantize_openvino",
    requires=("openvino", "nncf"),
    extra="openvino",
    description="NNCF post-training INT8 of the OpenVINO IR",
)
for _name in ("onnxruntime", "tensorrt"):
    QUANTIZERS.register(
        _name,
        "cvdeploy.optimize.ort_quant:quantize_onnxruntime",
        requires=("onnxruntime", "onnx"),
        extra="onnxruntime",
        description="Q/DQ INT8 ONNX (quantize_static or NNCF's ONNX backend)",
    )


@dataclass(frozen=True, slots=True)
class QuantizeOptions:
    """Options of :func:`quantize_bundle`.

    Attributes:
        backend: ``openvino`` (NNCF), ``onnxruntime`` (Q/DQ) or ``tensorrt`` (symmetric
            Q/DQ ONNX from which ``cvdeploy export --format tensorrt:int8`` builds the engine).
        calib_size: Largest number of calibration images.
        method: ``minmax``, ``entropy`` or ``percentile``.
        per_channel: Per-channel weight scales.
        max_drop: Largest acceptable absolute mAP50-95 drop (needs ``eval_data``).
        eval_data: Labelled dataset for mAP (recorded for FP32 and INT8).
        keep_float: Glob patterns of node names kept in float, besides the head.
        force: Accept fewer than 100 calibration images.
        engine: Who writes the ``onnxruntime`` backend's Q/DQ graph: ``ort`` (ONNX Runtime's
            ``quantize_static``) or ``nncf`` (NNCF's ONNX backend: per-channel weights, bias
            correction; on YOLOX-Nano it keeps far more accuracy than ``quantize_static``).
            Either graph runs on ONNX Runtime. Ignored by the other backends.
        source: FP32 artifact id to quantize (default: chosen per backend).
        overwrite: Replace an existing INT8 artifact with the same id.
        gate_cosine: Override the INT8 gate's minimum cosine similarity of raw outputs
            (recorded with the parity check); ``None`` keeps the INT8 tolerance.
        measure: Time FP32 and INT8 and diagnose a small speedup.
        threads: Runtime threads for the latency measurement.
        progress: Show progress bars.
        save_refused: Save the artifact even when it fails the integrity gate, with the
            failed check recorded (never from the CLI: for measuring on a scratch copy of a
            bundle, as doctor's keep-float trial does).
    """

    backend: str = "openvino"
    calib_size: int = 300
    method: str = "minmax"
    per_channel: bool = True
    max_drop: float | None = None
    eval_data: Path | None = None
    keep_float: tuple[str, ...] = ()
    force: bool = False
    engine: str = "ort"
    source: str | None = None
    overwrite: bool = False
    gate_cosine: float | None = None
    measure: bool = True
    threads: int | None = None
    progress: bool = True
    save_refused: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UsageError(f"unknown backend {self.backend!r}", hint=f"use one of {BACKENDS}")
        if self.engine not in ENGINES:
            raise UsageError(f"unknown engine {self.engine!r}", hint=f"use one of {ENGINES}")
        if self.engine != "ort" and self.backend != "onnxruntime":
            raise UsageError(
                f"--engine {self.engine} applies to --backend onnxruntime only",
                hint="the openvino backend always uses NNCF; tensorrt uses quantize_static",
            )
        if self.max_drop is not None and self.eval_data is None:
            raise UsageError(
                "--max-drop needs --eval-data: the drop is measured as mAP50-95 on a labelled set",
                hint="add --eval-data DATA.yaml",
            )
        if self.max_drop is not None and not 0 < self.max_drop < 1:
            raise UsageError(f"--max-drop must be in (0, 1), got {self.max_drop}")
        if self.gate_cosine is not None and not 0 < self.gate_cosine <= 1:
            raise UsageError(f"--gate-cosine must be in (0, 1], got {self.gate_cosine}")


@dataclass(slots=True)
class QuantizedModel:
    """A quantized model written to a temporary directory by a backend."""

    directory: Path
    main_file: str
    format: str
    io: IOSpec
    kept_float: list[str]
    facts: dict[str, Any]
    map50_95: float | None = None


@dataclass(slots=True)
class QuantizeContext:
    """What a quantization backend gets.

    Attributes:
        bundle: The bundle being quantized.
        source: The FP32 artifact to quantize.
        calibration: The calibration images (hygiene-checked).
        source_predictor: A loaded predictor of the source (evaluation thresholds).
        evalset: The labelled set for ``max_drop`` (``None`` without ``eval_data``).
        fp32_map: The source's mAP50-95 on ``evalset`` (``None`` without ``max_drop``).
        options: The quantize options.
        workdir: A temporary directory the backend writes its model under.
        log: Progress notes.
    """

    bundle: Bundle
    source: Artifact
    calibration: CalibrationSet
    source_predictor: Predictor
    evalset: EvalSet | None
    fp32_map: float | None
    options: QuantizeOptions
    workdir: Path
    log: Log


class QuantizeBackend(Protocol):
    """A registered backend: quantize the context's source, return the model and the budget
    record (``None`` without ``max_drop``)."""

    def __call__(self, ctx: QuantizeContext) -> tuple[QuantizedModel, dict[str, Any] | None]:
        """Quantize ``ctx.source`` into ``ctx.workdir``."""
        ...


def match_patterns(names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """Node names matching any of the glob ``patterns``; a pattern matching none is an error."""
    out: list[str] = []
    for pat in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            preview = ", ".join(list(names)[:8])
            raise UsageError(
                f"--keep-float {pat!r} matches no node of the model",
                hint=f"node names look like: {preview} ...",
            )
        out.extend(h for h in hits if h not in out)
    return out


def candidate_predictor(
    bundle: Bundle, cand: QuantizedModel, art_id: str, *, thresholds: Thresholds = EVAL_THRESHOLDS
) -> Predictor:
    """A predictor over a candidate not yet in the bundle (evaluation thresholds by default)."""
    runner = create_runner(cand.format, cand.directory / cand.main_file, cand.io)
    return Predictor(
        spec=bundle.spec, runner=runner, artifact_id=art_id, thresholds=thresholds, batch=1
    )
