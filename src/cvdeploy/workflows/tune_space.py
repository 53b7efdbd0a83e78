"""What ``cvdeploy tune`` tries: candidate artifacts and, per runtime, candidate settings.

Settings are the runtime options a :class:`~cvdeploy.runtime.base.RunnerOptions` carries:
``threads`` (intra-op threads) and backend keys in ``extra`` that the backends already accept
(ONNX Runtime ``graph_optimization_level``, ``execution_mode``, ``inter_op_threads``;
OpenVINO ``PERFORMANCE_HINT``, ``NUM_STREAMS``, ``INFERENCE_PRECISION_HINT``). Each format
has a small grid, registered in :data:`SETTINGS_GRIDS`; formats without one get threads only.

Accuracy depends on the artifact, and precision is part of the artifact: bf16 and FP16
compute are artifacts of their own (``openvino-bf16``, ``openvino-int8-bf16``,
``openvino-fp16``), each made through its parity gate and evaluated, and tried only on a CPU
that computes in them natively. The settings grids never change the precision (the runner
pins the artifact's). Accuracy does not depend on threads, streams, graph optimisation or
execution mode; :func:`accuracy_key` names the settings that would (an explicit
``INFERENCE_PRECISION_HINT``), so ``tune`` evaluates each (artifact, accuracy key) once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cvdeploy.bundle import Artifact, Bundle
from cvdeploy.errors import BackendUnavailable, UsageError
from cvdeploy.precision import inference_precision_for, require_native
from cvdeploy.runtime import RUNTIMES, RunnerOptions

DEFAULT_FORMATS = ("onnx", "openvino")
"""Formats tried when none are given (those whose runtime is available here)."""
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int8-bf16")
"""Artifact precisions ``tune`` can try (INT8 ones are made by quantize, then derived)."""
ACCURACY_KEYS = frozenset({"INFERENCE_PRECISION_HINT"})
"""Settings that change the numbers (and so need their own accuracy evaluation)."""
QUANTIZE_BACKENDS = {"openvino": "openvino", "onnx": "onnxruntime"}
"""Which ``cvdeploy quantize`` backend makes an INT8 artifact of a format."""
SettingValue = str | int | float | bool


@dataclass(frozen=True, slots=True)
class Settings:
    """One runtime configuration: intra-op threads plus backend options.

    Attributes:
        threads: Intra-op threads (``None``: the backend's default).
        extra: Backend options (keys the runner accepts; values str/int/float/bool).
    """

    threads: int | None = None
    extra: Mapping[str, SettingValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be >= 1, got {self.threads}")
        for k, v in self.extra.items():
            if not isinstance(v, str | int | float | bool):
                raise UsageError(f"runtime setting {k}={v!r} must be a str, int, float or bool")

    def options(self) -> RunnerOptions:
        """The runner options of this configuration (CPU)."""
        return RunnerOptions(threads=self.threads, extra=dict(self.extra))

    def to_dict(self) -> dict[str, Any]:
        """``{"threads": ..., "device": "cpu", "extra": {...}}`` (the manifest's options)."""
        return {"threads": self.threads, "device": "cpu", "extra": dict(self.extra)}

    def accuracy_key(self) -> tuple[tuple[str, SettingValue], ...]:
        """The settings that change the numbers (see :data:`ACCURACY_KEYS`)."""
        return tuple(sorted((k, v) for k, v in self.extra.items() if k in ACCURACY_KEYS))

    def label(self) -> str:
        """Short description, e.g. ``threads 2, all, sequential`` (values; some keys named)."""
        parts = [f"threads {self.threads or 'default'}"]
        for k, v in self.extra.items():
            name = _LABELS.get(k)
            parts.append(f"{name} {v}" if name else str(v))
        return ", ".join(parts)


_LABELS = {"NUM_STREAMS": "streams", "inter_op_threads": "inter-op"}


GridFn = Callable[[Sequence[int | None], Sequence[str]], list[Settings]]


def _onnx_grid(threads: Sequence[int | None], cpu_flags: Sequence[str]) -> list[Settings]:
    cores = os.cpu_count() or 1
    out = []
    for t in threads:
        for level in ("all", "basic"):
            out.append(
                Settings(t, {"graph_optimization_level": level, "execution_mode": "sequential"})
            )
            if cores > 1:
                out.append(
                    Settings(
                        t,
                        {
                            "graph_optimization_level": level,
                            "execution_mode": "parallel",
                            "inter_op_threads": min(2, cores),
                        },
                    )
                )
    return out


def _openvino_grid(threads: Sequence[int | None], cpu_flags: Sequence[str]) -> list[Settings]:
    # No INFERENCE_PRECISION_HINT: the runner pins each artifact's own precision.
    cores = os.cpu_count() or 1
    out = []
    for t in threads:
        out.append(Settings(t, {"PERFORMANCE_HINT": "LATENCY"}))
        for streams in sorted({1, min(cores, 4)}):
            out.append(Settings(t, {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": streams}))
    return out


def _threads_grid(threads: Sequence[int | None], cpu_flags: Sequence[str]) -> list[Settings]:
    return [Settings(t) for t in threads]


SETTINGS_GRIDS: dict[str, GridFn] = {
    "onnx": _onnx_grid,
    "openvino": _openvino_grid,
}
"""Settings grid per format; other formats (tflite, torch, tensorrt) try threads only."""


def default_threads() -> tuple[int, ...]:
    """Thread counts tried by default: half the cores and all of them (deduplicated)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = max(int(cores or 1), 1)
    return tuple(sorted({max(n // 2, 1), n}))


def settings_grid(
    fmt: str, *, threads: Sequence[int | None], cpu_flags: Sequence[str] = ()
) -> list[Settings]:
    """The settings ``tune`` tries for an artifact of ``fmt``."""
    if not threads:
        raise UsageError("no thread counts to try", hint="pass --threads 1,2")
    return SETTINGS_GRIDS.get(fmt, _threads_grid)(list(threads), list(cpu_flags))


@dataclass(frozen=True, slots=True)
class ArtifactPlan:
    """One (format, precision) to try: an existing artifact, or how to make it.

    Attributes:
        format: Runtime format.
        precision: ``fp32``, ``fp16`` or ``int8``.
        artifact_id: The existing artifact (``None`` when it must be made).
        make: ``export`` or ``quantize`` when it must be made.
    """

    format: str
    precision: str
    artifact_id: str | None = None
    make: str | None = None


def runtime_available(fmt: str) -> str | None:
    """Why ``fmt`` cannot run here (``None`` when it can)."""
    if fmt not in RUNTIMES.names():
        return f"no runtime registered for format {fmt!r}"
    av = RUNTIMES.availability(fmt)
    return None if av.available else av.reason


def plan_artifacts(
    bundle: Bundle,
    *,
    formats: Sequence[str] | None,
    precisions: Sequence[str],
    cpu_flags: Sequence[str] | None = None,
) -> tuple[list[ArtifactPlan], list[str]]:
    """The artifacts to try: every existing one of the formats x precisions, else how to
    make it (export for fp32/fp16/bf16 and for int8-bf16 from the INT8 artifact, quantize for
    int8), and notes on what cannot be tried: a reduced compute precision this CPU has no
    native arithmetic for (``cpu_flags``, default this machine's) is a note, never a plan.

    Raises:
        UsageError: An unknown format or precision.
    """
    from cvdeploy.export import EXPORTERS, GPU_FORMATS
    from cvdeploy.export import PRECISIONS as EXPORT_PRECISIONS

    for p in precisions:
        if p not in PRECISIONS:
            raise UsageError(f"unknown precision {p!r}", hint=f"use {', '.join(PRECISIONS)}")
    notes: list[str] = []
    if formats is None:
        fmts = [f for f in DEFAULT_FORMATS if runtime_available(f) is None]
    else:
        fmts = list(dict.fromkeys(formats))
        known = set(RUNTIMES.names())
        bad = [f for f in fmts if f not in known]
        if bad:
            raise UsageError(
                f"unknown format(s) {', '.join(bad)}", hint=f"formats: {', '.join(sorted(known))}"
            )
    plans: list[ArtifactPlan] = []
    arts: list[Artifact] = list(bundle.manifest.artifacts)
    for fmt in fmts:
        why = runtime_available(fmt)
        if why is not None:
            notes.append(f"{fmt}: not tried, its runtime is {why}")
            continue
        # INT8 first: the int8-bf16 variant is derived from the INT8 artifact
        for prec in sorted(dict.fromkeys(precisions), key=PRECISIONS.index):
            have = [a for a in arts if a.format == fmt and a.precision == prec]
            ip = have[0].runtime_precision if have else inference_precision_for(fmt, prec)
            try:
                if fmt not in GPU_FORMATS:
                    require_native(ip, what=f"{fmt}:{prec}", flags=cpu_flags)
            except BackendUnavailable as exc:
                notes.append(f"{fmt}:{prec}: not tried: {exc.message}")
                continue
            if have:
                plans.extend(ArtifactPlan(fmt, prec, artifact_id=a.id) for a in have)
            elif prec == "int8" and fmt in QUANTIZE_BACKENDS:
                plans.append(ArtifactPlan(fmt, prec, make="quantize"))
            elif (
                prec != "int8"
                and fmt in EXPORTERS.names()
                and prec in EXPORT_PRECISIONS.get(fmt, ())
            ):
                plans.append(ArtifactPlan(fmt, prec, make="export"))
            else:
                notes.append(f"{fmt}:{prec}: no stage makes it (and the bundle has none)")
    return plans, notes
