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
