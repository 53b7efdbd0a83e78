"""The export stage's vocabulary: the target registry, options, contexts and results.

Targets are registered in :data:`EXPORTERS` by format name (``"module:function"``, imported
only when used). A target function takes an :class:`ExportContext` and a staging directory,
writes the artifact's files there and returns what it :class:`Produced`; the stage
(:mod:`cvdeploy.export.run`) then passes it through the gate (:mod:`cvdeploy.export.gate`)
and adds it to the bundle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvdeploy.bundle import Artifact
from cvdeploy.errors import BackendUnavailable, UsageError
from cvdeploy.precision import inference_precision_for, require_native
from cvdeploy.registry import Registry
from cvdeploy.runtime import RUNTIMES
from cvdeploy.runtime.tensorrt import tensorrt_unavailable
from cvdeploy.spec import IOSpec, ModelSpec
from cvdeploy.verify import ParityResult

EXPORTERS = Registry("exporter")
EXPORTERS.register(
    "onnx",
    "cvdeploy.export.onnx:export_onnx",
    requires=("onnx", "onnxruntime"),
    extra="onnxruntime",
    description="ONNX (from torch: TorchScript exporter + onnxslim)",
)
EXPORTERS.register(
    "openvino",
    "cvdeploy.export.openvino:export_openvino",
    requires=("openvino",),
    extra="openvino",
    description="OpenVINO IR, FP32/FP16 weights (openvino.convert_model from ONNX or torch)",
)
EXPORTERS.register(
    "tflite",
    "cvdeploy.export.tflite:export_tflite",
    requires=("onnx2tf", "tensorflow", "ai_edge_litert"),
    extra="tflite",
    description="TFLite FP32/FP16, NHWC (onnx2tf from the ONNX graph)",
)
EXPORTERS.register(
    "tensorrt",
    "cvdeploy.export.tensorrt:export_tensorrt",
    extra="tensorrt",
    description="TensorRT engine FP32/FP16, INT8 from a Q/DQ ONNX (NVIDIA GPU)",
    check=tensorrt_unavailable,
)
# Precisions each target can produce (``FORMAT:PRECISION`` in ``--format``; ``--half``: fp16).
# OpenVINO ``fp16`` and ``bf16`` compute in that precision (native CPU support required);
# ``int8-bf16`` is the bundle's OpenVINO INT8 model with its float parts in bf16.
PRECISIONS: dict[str, tuple[str, ...]] = {
    "onnx": ("fp32",),
    "openvino": ("fp32", "fp16", "bf16", "int8-bf16"),
    "tflite": ("fp32", "fp16"),
    "tensorrt": ("fp32", "fp16", "int8"),
}
GPU_FORMATS = frozenset({"tensorrt"})
"""Formats that run on a GPU: their reduced precisions are not checked against the CPU."""


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """Options shared by every target."""

    imgsz: tuple[int, int] | None = None
    batch: int = 1
    dynamic: bool = False
    opset: int = 17
    simplify: bool = True
    half: bool = False


@dataclass(slots=True)
class ExportContext:
    """What a target function gets: the source artifact (in staging) and the options."""

    spec: ModelSpec
    source: Artifact
    source_file: Path
    options: ExportOptions
    images: list[np.ndarray]
    torch_module: Any = None
    precision: str = "fp32"
    reference: Artifact | None = None
    """What the gate compares with (default: ``source``); an INT8-derived artifact is
    compared with the FP32 model its INT8 source was quantized from."""


@dataclass(slots=True)
class Produced:
    """What a target function returns."""

    format: str
    precision: str
    io: IOSpec
    main_file: str
    facts: dict[str, Any] = field(default_factory=dict)
    inference_precision: str | None = None
    """What the artifact computes in (default: :func:`inference_precision_for`)."""

    @property
    def runtime_precision(self) -> str:
        """The inference precision the artifact is gated and recorded at."""
        return self.inference_precision or inference_precision_for(self.format, self.precision)


@dataclass(slots=True)
class ExportOutcome:
    """The result for one requested format."""

    artifact_id: str
    status: str  # "added" | "refused" | "failed"
    message: str = ""
    parity: ParityResult | None = None


@dataclass(slots=True)
class ExportReport:
    """The result of one export call."""

    bundle: Path
    source: str
    outcomes: list[ExportOutcome]
    notes: list[str] = field(default_factory=list)
    """What the export decided on its own (e.g. which images the gate used), said once."""

    @property
    def ok(self) -> bool:
        """Whether every requested artifact was added."""
        return all(o.status == "added" for o in self.outcomes)


TargetFn = Callable[[ExportContext, Path], Produced]


def artifact_id_for(fmt: str, options: ExportOptions, precision: str | None = None) -> str:
    """Default artifact id of a format with the options (``onnx-fp32``, ``openvino-fp16``)."""
    return f"{fmt}-{precision or ('fp16' if options.half else 'fp32')}"


def parse_targets(formats: Sequence[str], options: ExportOptions) -> list[tuple[str, str]]:
    """Parse ``--format`` entries (``tflite``, ``openvino:fp16``) into (format, precision).

    Raises:
        UsageError: An unknown format, or a precision the format cannot produce.
    """
    out: list[tuple[str, str]] = []
    for raw in formats:
        fmt, _, prec = raw.strip().partition(":")
        if not fmt:
            continue
        EXPORTERS.entry(fmt)
        prec = prec.strip().lower() or ("fp16" if options.half else "fp32")
        allowed = PRECISIONS.get(fmt, ("fp32",))
        if prec not in allowed:
            raise UsageError(
                f"{fmt} cannot be exported as {prec}: it supports {', '.join(allowed)}"
                + (
                    " (INT8 needs an explicitly quantized source, and only tensorrt builds "
                    "one from it)"
                    if prec == "int8"
                    else ""
                ),
                hint="INT8 OpenVINO/ONNX come from `cvdeploy quantize`"
                if prec == "int8"
                else f"use one of {', '.join(f'{fmt}:{p}' for p in allowed)}",
            )
        if (fmt, prec) not in out:
            out.append((fmt, prec))
    if not out:
        raise UsageError("no --format given", hint=f"formats: {', '.join(EXPORTERS.names())}")
    return out


def check_available(targets: Sequence[tuple[str, str]]) -> None:
    """Refuse, before anything is written, targets whose exporter or runtime cannot run here,
    and reduced precisions this CPU cannot compute natively (``openvino:bf16`` without
    AVX512_BF16/AMX, ``openvino:fp16`` without AVX512_FP16/AMX-FP16).

    Raises:
        BackendUnavailable: Naming the format, the reason and the install hint.
    """
    for fmt, prec in targets:
        if fmt not in GPU_FORMATS:
            require_native(inference_precision_for(fmt, prec), what=f"{fmt}:{prec}")
    for fmt, _ in targets:
        av = EXPORTERS.availability(fmt)
        if not av.available:
            raise BackendUnavailable(f"cannot export {fmt}: the exporter is {av.reason}")
        if fmt in RUNTIMES.names():
            rav = RUNTIMES.availability(fmt)
            if not rav.available:
                raise BackendUnavailable(
                    f"cannot export {fmt}: its runtime is {rav.reason}, so the artifact "
                    "could not pass the parity gate here"
                )
