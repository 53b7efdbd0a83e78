"""Hypothesis profiles: ``ci`` (bounded, the default) and ``long`` (``make fuzz``:
``CVDEPLOY_FUZZ=long``), and the fixtures of the reliability tests."""

from __future__ import annotations

import importlib.util
import os

import pytest

from tests.serve.secured import auth_db_template  # noqa: F401 (fixture)

if importlib.util.find_spec("hypothesis") is None:  # the dev extra is missing
    collect_ignore_glob = ["test_*.py"]
else:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "ci",
        max_examples=150,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    settings.register_profile(
        "long",
        max_examples=5000,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    settings.load_profile("long" if os.environ.get("CVDEPLOY_FUZZ") == "long" else "ci")


def fuzz_scale() -> int:
    """How many times more cases ``make fuzz`` runs than CI (``CVDEPLOY_FUZZ=long``)."""
    return 20 if os.environ.get("CVDEPLOY_FUZZ") == "long" else 1


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> object:
    from tests.serve.conftest import make_bundle

    return make_bundle(tmp_path_factory.mktemp("rel-bundle"))


@pytest.fixture(scope="session")
def jpeg(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from tests.tiny_models import write_image

    return write_image(tmp_path_factory.mktemp("rel-img") / "a.jpg", h=48, w=80).read_bytes()
