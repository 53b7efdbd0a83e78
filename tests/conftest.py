"""Shared pytest configuration and fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers (also declared in pyproject.toml) so -m selections work."""
    config.addinivalue_line("markers", "slow: heavy tests (training, conversions)")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "realworld: uses ../shared/realworld (skipped when absent)")


@pytest.fixture(scope="session")
def realworld() -> Path:
    """The real-world models and data: ``$CVDEPLOY_REALWORLD`` or ``../shared/realworld``."""
    env = os.environ.get("CVDEPLOY_REALWORLD")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "realworld"
    if not root.is_dir():
        pytest.skip(
            "../shared/realworld is absent: real-world models and data are not on this machine"
        )
    return root
