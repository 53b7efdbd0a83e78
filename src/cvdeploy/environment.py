"""Environment fingerprint: library versions, CPU model and instruction sets, GPU.

:func:`compare` lists the differences from a recorded fingerprint that are known to change
numerics or speed.

Recorded with every artifact and every measurement, so that a number can always be traced
to the machine and the software that produced it, and compared with ``cvdeploy env``.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvdeploy.version import __version__

PACKAGES = (
    "numpy",
    "opencv-python-headless",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "openvino",
    "nncf",
    "torch",
    "onnxslim",
    "ai-edge-litert",
    "litert-torch",
    "tensorflow-cpu",
    "onnx2tf",
    "tensorrt",
    "pycocotools",
)
# Instruction sets that change INT8/FP16 speed or numerics.
CPU_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "amx_fp16",
    "asimd",
    "asimddp",
    "asimdhp",
    "fphp",
    "bf16",
    "i8mm",
    "sve",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that matter for numerics and speed."""
    out: dict[str, str] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """CPU model, logical core count and the relevant instruction-set flags."""
    model = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and value.strip():
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return {
        "model": model,
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "flags": sorted(f for f in CPU_FLAGS if f in flags),
    }


def gpu_info() -> list[dict[str, str]]:
    """NVIDIA GPUs and driver (empty without ``nvidia-smi``)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        res = subprocess.run(
            [exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    gpus = []
    for line in res.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "driver": parts[1], "memory": parts[2]})
    return gpus


def fingerprint() -> dict[str, Any]:
    """The environment fingerprint recorded with artifacts and measurements."""
    return {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "os": f"{platform.system()} {platform.release()}",
        "cvdeploy": __version__,
        "packages": package_versions(),
        "cpu": cpu_info(),
        "gpus": gpu_info(),
    }


# What a change of each package can alter: the runtimes and the preprocessing change the
# served numbers; the converters only change what a re-export would produce.
_RUNTIME_PACKAGES = {
    "numpy",
    "opencv-python-headless",
    "onnxruntime",
    "onnxruntime-gpu",
    "openvino",
    "torch",
    "ai-edge-litert",
    "tensorrt",
    "pycocotools",
}
# CPU features whose presence selects other INT8/FP16/BF16 kernels (other rounding, speed).
_NUMERIC_FLAGS = {
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "amx_fp16",
    "asimddp",
    "asimdhp",
    "fphp",
    "bf16",
    "i8mm",
    "f16c",
}


@dataclass(frozen=True, slots=True)
class Difference:
    """One difference between a recorded environment and the current one.

    Attributes:
        field: What differs (``packages.openvino``, ``cpu.flags``, ``gpus``...).
        recorded: The recorded value (as text).
        current: The current value (as text).
        affects: ``"numerics and speed"``, ``"speed"`` or ``"re-export"``.
        note: Why it matters.
    """

    field: str
    recorded: str
    current: str
    affects: str
    note: str = ""


def _version(v: Any) -> str:
    return "absent" if v in (None, "") else str(v)


def compare(current: Mapping[str, Any], recorded: Mapping[str, Any]) -> list[Difference]:
    """Differences from ``recorded`` known to change numerics or speed.

    Only what the recorded fingerprint holds is compared, so a partial record (e.g. the
    conditions of a latency measurement) compares cleanly.

    Args:
        current: The current :func:`fingerprint`.
        recorded: A fingerprint recorded with an artifact or a measurement.

    Returns:
        The differences, most consequential kinds first.
    """
    out: list[Difference] = []
    if "python" in recorded and recorded["python"] != current.get("python"):
        out.append(
            Difference(
                "python",
                _version(recorded["python"]),
                _version(current.get("python")),
                "speed",
                "interpreter version: pre/post-processing speed",
            )
        )
    if "cvdeploy" in recorded and recorded["cvdeploy"] != current.get("cvdeploy"):
        out.append(
            Difference(
                "cvdeploy",
                _version(recorded["cvdeploy"]),
                _version(current.get("cvdeploy")),
                "numerics and speed",
                "the pre/post-processing code",
            )
        )
    rec_pk: Mapping[str, Any] = recorded.get("packages") or {}
    cur_pk: Mapping[str, Any] = current.get("packages") or {}
    for name in sorted(rec_pk):
        a, b = rec_pk.get(name), cur_pk.get(name)
        if a == b:
            continue
        runtime = name in _RUNTIME_PACKAGES
        out.append(
            Difference(
                f"packages.{name}",
                _version(a),
                _version(b),
                "numerics and speed" if runtime else "re-export",
                "runtime or preprocessing library" if runtime else "converter: only a new export",
            )
        )
    rec_cpu: Mapping[str, Any] = recorded.get("cpu") or {}
    cur_cpu: Mapping[str, Any] = current.get("cpu") or {}
    if rec_cpu:
        if "model" in rec_cpu and rec_cpu.get("model") != cur_cpu.get("model"):
            out.append(
                Difference(
                    "cpu.model",
                    _version(rec_cpu.get("model")),
                    _version(cur_cpu.get("model")),
                    "speed",
                    "another processor",
                )
            )
        if "flags" in rec_cpu:
            rf, cf = set(rec_cpu.get("flags") or ()), set(cur_cpu.get("flags") or ())
            if rf != cf:
                changed = rf ^ cf
                numeric = sorted(changed & _NUMERIC_FLAGS)
                out.append(
                    Difference(
                        "cpu.flags",
                        "missing now: " + (", ".join(sorted(rf - cf)) or "none"),
                        "new now: " + (", ".join(sorted(cf - rf)) or "none"),
                        "numerics and speed" if numeric else "speed",
                        f"{', '.join(numeric)} select other INT8/FP16 kernels"
                        if numeric
                        else "other vector instructions",
                    )
                )
        rc, cc = rec_cpu.get("logical_cores"), cur_cpu.get("logical_cores")
        if "logical_cores" in rec_cpu and rc != cc:
            out.append(Difference("cpu.logical_cores", _version(rc), _version(cc), "speed"))
    if "gpus" in recorded:
        rg = [_gpu_text(g) for g in recorded.get("gpus") or []]
        cg = [_gpu_text(g) for g in current.get("gpus") or []]
        if _gpu_names(rg, recorded) != _gpu_names(cg, recorded):
            out.append(
                Difference(
                    "gpus",
                    "; ".join(rg) or "none",
                    "; ".join(cg) or "none",
                    "numerics and speed",
                    "GPU or driver: TensorRT engines are tied to both",
                )
            )
    order = {"numerics and speed": 0, "speed": 1, "re-export": 2}
    return sorted(out, key=lambda d: order.get(d.affects, 3))


def _gpu_text(g: Any) -> str:
    if isinstance(g, Mapping):
        name = str(g.get("name", "?"))
        return f"{name} (driver {g['driver']})" if g.get("driver") else name
    return str(g)


def _gpu_names(texts: list[str], recorded: Mapping[str, Any]) -> list[str]:
    # A record without drivers (a latency measurement's) compares GPU names only.
    has_driver = any(isinstance(g, Mapping) and g.get("driver") for g in recorded["gpus"] or [])
    return texts if has_driver else [t.split(" (driver")[0] for t in texts]


def recorded_environment(check_data: Mapping[str, Any]) -> dict[str, Any] | None:
    """The environment a check was measured in, as a (partial) fingerprint, or ``None``.

    Evaluations record a full ``environment``; latency measurements record
    ``conditions.hardware`` and ``conditions.versions``.
    """
    env = check_data.get("environment")
    if isinstance(env, Mapping):
        return dict(env)
    cond = check_data.get("conditions")
    if not isinstance(cond, Mapping):
        return None
    hw = cond.get("hardware") or {}
    ver = dict(cond.get("versions") or {})
    out: dict[str, Any] = {}
    if "python" in ver:
        out["python"] = ver.pop("python")
    if "cvdeploy" in ver:
        out["cvdeploy"] = ver.pop("cvdeploy")
    if ver:
        out["packages"] = ver
    if hw:
        out["cpu"] = {
            k: v
            for k, v in (
                ("model", hw.get("cpu")),
                ("flags", hw.get("cpu_flags")),
                ("logical_cores", hw.get("logical_cores")),
            )
            if v is not None
        }
        if "gpus" in hw:
            out["gpus"] = [{"name": n} for n in hw.get("gpus") or []]
    return out or None
