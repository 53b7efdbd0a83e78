"""Environment fingerprint: library versions, CPU model and instruction sets, GPU.

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
from pathlib import Path
from typing import Any

from cvdeploy import __version__

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
    "asimd",
    "asimddp",
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
