"""Fixtures for the security tests: the tiny bundle and image, an auth database template.

The secured-server helpers (``Secured``, ``secured_app``, ``make_db``) live with the
server's tests in :mod:`tests.serve.secured`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.serve.secured import auth_db_template  # noqa: F401 (fixture)

_DEPS = ("fastapi", "uvicorn", "httpx", "jwt", "pyotp", "argon2", "cryptography")
if any(importlib.util.find_spec(m) is None for m in _DEPS):
    # pip install 'cvdeploy[serve,security]' is missing: the serving-side tests cannot run.
    collect_ignore = [
        "test_audit.py",
        "test_cli.py",
        "test_tls.py",
        "test_units.py",
    ]


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The serving tests' tiny detector bundle (model name ``tiny``)."""
    from tests.serve.conftest import make_bundle

    return make_bundle(tmp_path_factory.mktemp("sec-bundle"))


@pytest.fixture(scope="session")
def jpeg(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from tests.tiny_models import write_image

    return write_image(tmp_path_factory.mktemp("sec-img") / "a.jpg", h=48, w=80).read_bytes()
