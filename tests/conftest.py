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


def _drop_reduced_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    import cvdeploy.environment as environment
    from tests.cpu import REDUCED_FLAGS

    real = environment.cpu_info

    def cpu_info(*args: object, **kwargs: object) -> dict[str, object]:
        info = dict(real(*args, **kwargs))  # type: ignore[arg-type]
        info["flags"] = [f for f in info["flags"] if f not in REDUCED_FLAGS]  # type: ignore[attr-defined]
        return info

    monkeypatch.setattr(environment, "cpu_info", cpu_info)


@pytest.fixture()
def plain_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """cvdeploy sees a CPU without native bf16/FP16 arithmetic (as on an AVX2-only EPYC)."""
    _drop_reduced_flags(monkeypatch)


@pytest.fixture(autouse=True)
def _plain_cpu_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """``CVDEPLOY_TEST_PLAIN_CPU=1``: every test sees a CPU without native bf16/FP16."""
    if os.environ.get("CVDEPLOY_TEST_PLAIN_CPU") == "1":
        _drop_reduced_flags(monkeypatch)


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
