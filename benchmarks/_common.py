"""What the benchmark scripts share (run as ``python benchmarks/NAME.py``, this folder is on
``sys.path``)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The repository root."""


def realworld_root() -> Path:
    """``$CVDEPLOY_REALWORLD`` or ``../shared/realworld`` beside the repository."""
    env = os.environ.get("CVDEPLOY_REALWORLD")
    return Path(env) if env else ROOT.parent / "shared" / "realworld"


def cpu_kind() -> str:
    """``bf16`` on a CPU with native bf16 (AVX512_BF16/AMX), ``avx2`` on an x86 CPU without,
    else the architecture: result files carry it, so both CPU kinds' figures are kept."""
    from cvdeploy.environment import cpu_info
    from cvdeploy.precision import native_precisions

    info = cpu_info()
    if "bf16" in native_precisions(info["flags"]):
        return "bf16"
    return "avx2" if "avx2" in info["flags"] else str(info["arch"])
