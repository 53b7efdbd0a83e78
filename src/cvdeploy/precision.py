"""Precision is part of the artifact: what each artifact computes in, and what a CPU can do.

An artifact records two things:

- its **precision** (``fp32``, ``fp16``, ``bf16``, ``int8``, ``int8-bf16``, ``int8-dynamic``):
  how it was made and which parity tolerance gates it;
- its **inference precision** (``f32``, ``bf16``, ``f16``): what the float parts of the model
  compute in at run time. A runner executes the artifact at exactly this precision, on every
  machine, or refuses to run it.

Why both: runtimes pick a precision on their own. OpenVINO's CPU plugin computes in bf16 by
default on CPUs with native bf16 (AVX512_BF16, AMX: Intel Sapphire Rapids and later, AMD
Zen 4 and later) and in f16 on ARM, so an artifact labelled FP32 would silently run in
reduced precision there. cvdeploy pins it; bf16 and f16 compute are artifacts of their own,
gated and measured, and asked for by name (``openvino:bf16``).

Reduced compute is only offered where the processor does it natively: asking for bf16 on a
CPU without AVX512_BF16/AMX-BF16 is refused (never a slow emulation), and so is f16 compute
without AVX512_FP16/AMX-FP16 (x86) or FP16 arithmetic (ARM).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args

from cvdeploy.environment import Difference
from cvdeploy.errors import BackendUnavailable, UsageError

InferencePrecision = Literal["f32", "bf16", "f16"]
INFERENCE_PRECISIONS: tuple[str, ...] = get_args(InferencePrecision)

# CPU flags (as /proc/cpuinfo names them) that give native arithmetic in each precision.
NATIVE_FLAGS: dict[str, frozenset[str]] = {
    "bf16": frozenset({"avx512_bf16", "amx_bf16", "bf16"}),  # x86; ARMv8.6 "bf16"
    "f16": frozenset({"avx512_fp16", "amx_fp16", "asimdhp", "fphp"}),  # x86; ARM FP16
}
_NAMES = {"f32": "FP32", "bf16": "bf16", "f16": "FP16"}
_NEEDS = {
    "bf16": "AVX512_BF16 or AMX-BF16 (x86) or BF16 (ARM)",
    "f16": "AVX512_FP16 or AMX-FP16 (x86) or FP16 arithmetic (ARM)",
}

# The inference precision of each artifact precision, per format where it differs.
# ``fp16`` TFLite artifacts store FP16 weights that the CPU interpreter (XNNPACK) widens to
# FP32 before computing (measured in tests/runtime/test_precision.py): their compute is f32.
# TensorRT INT8 engines are built with FP16 kernels allowed for the layers left in float.
_DEFAULT: dict[str, str] = {
    "fp32": "f32",
    "int8": "f32",
    "int8-dynamic": "f32",
    "bf16": "bf16",
    "int8-bf16": "bf16",
    "fp16": "f16",
}
_PER_FORMAT: dict[tuple[str, str], str] = {("tflite", "fp16"): "f32", ("tensorrt", "int8"): "f16"}


def check_inference_precision(value: str) -> str:
    """Validate an inference precision name (``f32``, ``bf16``, ``f16``).

    Raises:
        UsageError: Any other value.
    """
    if value not in INFERENCE_PRECISIONS:
        raise UsageError(
            f"unknown inference precision {value!r}",
            hint=f"use one of {', '.join(INFERENCE_PRECISIONS)}",
        )
    return value


def inference_precision_for(fmt: str, precision: str) -> str:
    """The inference precision a new artifact of this format and precision computes in."""
    key = (fmt, precision)
    if key in _PER_FORMAT:
        return _PER_FORMAT[key]
    return _DEFAULT.get(precision, "f32")


def legacy_inference_precision(fmt: str, precision: str) -> str:
    """The inference precision of an artifact recorded before it was part of the manifest.

    Those artifacts were gated with FP32 compute on the CPUs this project ran on then (FP16
    weights widened to FP32, INT8 with FP32 float parts), so that is what they run at.
    """
    if precision in ("bf16", "int8-bf16"):
        return "bf16"
    if fmt == "tensorrt" and precision in ("fp16", "int8"):
        return "f16"  # engines built with FP16 kernels
    return "f32"


def native_precisions(cpu_flags: Iterable[str]) -> set[str]:
    """Inference precisions the CPU computes natively (``f32`` always)."""
    flags = set(cpu_flags)
    return {"f32"} | {p for p, need in NATIVE_FLAGS.items() if flags & need}


def cpu_flags() -> list[str]:
    """This machine's relevant CPU flags (see :func:`cvdeploy.environment.cpu_info`)."""
    import cvdeploy.environment as environment  # looked up at call time (tests simulate CPUs)

    return list(environment.cpu_info()["flags"])


def describe_native(cpu_flags: Iterable[str]) -> str:
    """E.g. ``native bf16 (avx512_bf16, amx_bf16), no native FP16``."""
    flags = set(cpu_flags)
    parts = []
    for p in ("bf16", "f16"):
        have = sorted(flags & NATIVE_FLAGS[p])
        parts.append(
            f"native {_NAMES[p]} ({', '.join(have)})" if have else f"no native {_NAMES[p]}"
        )
    return ", ".join(parts)


def require_native(
    precision: str,
    *,
    what: str,
    flags: Iterable[str] | None = None,
    device: str = "cpu",
) -> None:
    """Refuse a reduced inference precision the CPU cannot compute natively.

    Args:
        precision: ``f32``, ``bf16`` or ``f16``.
        what: What asked for it (``artifact openvino-bf16``, ``openvino:bf16``), for the message.
        flags: The CPU's flags (default: this machine's).
        device: ``cpu`` checks the flags; a GPU device is left to its runtime.

    Raises:
        UsageError: An unknown precision name.
        BackendUnavailable: The CPU has no native arithmetic in ``precision`` (exit code 2).
    """
    check_inference_precision(precision)
    if precision == "f32" or device not in ("cpu", ""):
        return
    have = list(flags) if flags is not None else cpu_flags()
    if precision in native_precisions(have):
        return
    raise BackendUnavailable(
        f"{what} computes in {_NAMES[precision]}, and this CPU has no native "
        f"{_NAMES[precision]} arithmetic (it needs {_NEEDS[precision]}; this CPU: "
        f"{describe_native(have)}); cvdeploy does not run it in a slow emulation",
        hint="use the fp32 (or int8) artifact here, or run this one on a CPU that has "
        f"{_NEEDS[precision]}",
    )


_RUNTIME_PIN = {
    "openvino": "OpenVINO would pick {p} by default on a CPU with native {p}; cvdeploy pins "
    "INFERENCE_PRECISION_HINT={ip} (the artifact's recorded precision)",
    "onnx": "ONNX Runtime computes FP32 models in FP32 on x86 (its ARM64 bf16 fast-math GEMM "
    "option is set off explicitly)",
    "tflite": "the TFLite interpreter (XNNPACK) computes in FP32, widening FP16 weights",
    "torch": "torch runs with autocast off and refuses reduced-precision FP32 settings",
    "tensorrt": "a TensorRT engine's precision is fixed when it is built (on a GPU)",
}


def precision_differences(
    current: Mapping[str, Any],
    recorded: Mapping[str, Any],
    *,
    fmt: str,
    inference_precision: str,
) -> list[Difference]:
    """Where native bf16/FP16 arithmetic differs between a record's CPU and this one, what
    the runtime will do with the artifact here, and how that was pinned.

    Args:
        current: The current :func:`fingerprint`.
        recorded: A fingerprint recorded with the artifact or one of its measurements.
        fmt: The artifact's format.
        inference_precision: What the artifact computes in (its recorded precision).
    """
    rec_cpu: Mapping[str, Any] = recorded.get("cpu") or {}
    if "flags" not in rec_cpu or fmt == "tensorrt":
        return []
    rec_flags = set(rec_cpu.get("flags") or ())
    cur_flags = set((current.get("cpu") or {}).get("flags") or ())
    rec, cur = native_precisions(rec_flags), native_precisions(cur_flags)
    out: list[Difference] = []
    for p in ("bf16", "f16"):
        if (p in rec) == (p in cur):
            continue
        name = "bf16" if p == "bf16" else "FP16"

        def says(flags: set[str], p: str = p) -> str:
            have = sorted(flags & NATIVE_FLAGS[p])
            return f"yes ({', '.join(have)})" if have else "no"

        if inference_precision == p:
            note = (
                f"this artifact computes in {name}: it was made for a CPU with native {name} "
                "and is refused here (no slow emulation); use its fp32 or int8 sibling"
                if p not in cur
                else f"this artifact computes in {name}, natively on this CPU, as recorded"
            )
        else:
            pin = _RUNTIME_PIN.get(fmt, "").format(p=name, ip=inference_precision)
            note = (
                f"this CPU has native {name}: {pin}; the artifact still computes in "
                f"{inference_precision} (a {name} artifact is its own choice: "
                f"`cvdeploy export BUNDLE --format {fmt}:{'bf16' if p == 'bf16' else 'fp16'}`)"
                if p in cur
                else f"this CPU has no native {name}: the artifact computes in "
                f"{inference_precision} as recorded ({name} artifacts are refused here)"
            )
        out.append(
            Difference(
                f"native {name}", says(rec_flags), says(cur_flags), "numerics and speed", note
            )
        )
    return out
