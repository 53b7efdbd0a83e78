"""Fixtures for the serving tests: tiny bundles, images, slow runners, app clients."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cvdeploy.bundle import Bundle
from cvdeploy.export.importer import ImportOverrides, import_model
from cvdeploy.pipeline.predictor import Predictor
from tests.serve.secured import auth_db_template  # noqa: F401 (fixture)
from tests.tiny_models import NC, tiny_detector_onnx, write_image

_SERVE_DEPS = ("fastapi", "uvicorn", "prometheus_client", "multipart", "httpx")
_SECURITY_DEPS = ("jwt", "pyotp", "argon2", "cryptography")
if any(importlib.util.find_spec(m) is None for m in _SERVE_DEPS):
    # The serve extra is not installed (pip install cvdeploy[serve]): nothing here can run.
    collect_ignore_glob = ["test_*.py"]
elif any(importlib.util.find_spec(m) is None for m in _SECURITY_DEPS):
    # The security extra is missing: the secured-server tests cannot run.
    collect_ignore = ["test_attacks.py", "test_session.py", "test_session_browser.py"]

NAMES = tuple(f"n{i}" for i in range(NC))


def make_bundle(root: Path, *, seed: int = 0, name: str = "tiny") -> Path:
    """A bundle of the tiny detector (dynamic batch) named ``name``."""
    root.mkdir(parents=True, exist_ok=True)
    src = tiny_detector_onnx(root / f"{name}.onnx", seed=seed)
    import_model(src, out=root / "bundle", overrides=ImportOverrides(decoder="yolov8", names=NAMES))
    return root / "bundle"


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("serve-bundle"))


@pytest.fixture(scope="session")
def jpeg(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_image(tmp_path_factory.mktemp("img") / "a.jpg", h=48, w=80).read_bytes()


def ico_bytes() -> bytes:
    """A valid image in a format the server does not decode (a Windows icon)."""
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(buf, format="ICO")
    return buf.getvalue()


class SlowRunner:
    """Wraps a runner, sleeping before each run (and optionally on load)."""

    def __init__(self, inner: Any, *, delay: float, load_delay: float = 0.0) -> None:
        self.inner = inner
        self.io = inner.io
        self.delay = delay
        self.load_delay = load_delay
        self.calls: list[int] = []

    def load(self) -> Any:
        time.sleep(self.load_delay)
        return self.inner.load()

    def run(self, x: Any) -> Any:
        time.sleep(self.delay)
        self.calls.append(int(x.shape[0]))
        return self.inner.run(x)

    def close(self) -> None:
        self.inner.close()


def slow_factory(delay: float, load_delay: float = 0.0) -> Callable[[Bundle, Any], list[Predictor]]:
    """A predictor factory whose runners sleep ``delay`` s per batch (``load_delay`` on load)."""
    from cvdeploy.serve.models import default_predictors

    def factory(bundle: Bundle, config: Any) -> list[Predictor]:
        preds = default_predictors(bundle, config)
        for p in preds:
            p.runner = SlowRunner(p.runner, delay=delay, load_delay=load_delay)  # type: ignore[assignment]
        return preds

    return factory


def wait_ready(client: Any, timeout: float = 120.0) -> None:
    """Poll /readyz until 200."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"server not ready after {timeout} s: {client.get('/readyz').json()}")


@contextmanager
def serving(source: Path, *, factory: Any = None, ready: bool = True, **cfg: Any) -> Iterator[Any]:
    """A TestClient (lifespan running) for a bundle or registry."""
    from fastapi.testclient import TestClient

    from cvdeploy.serve.app import create_app
    from cvdeploy.serve.config import ServeConfig

    cfg.setdefault("warmup_runs", 1)
    app = create_app(ServeConfig(source=source, **cfg), predictor_factory=factory)
    with TestClient(app, raise_server_exceptions=False) as client:
        if ready:
            wait_ready(client)
        yield client


def route_permissions(app: Any) -> dict[tuple[str, str], str | None]:
    """``(first method, path) -> permission`` of every route, checking that each is guarded.

    Every route must be an ``APIRoute``; the probes (``PUBLIC_ROUTES``) declare no permission
    and have no permission dependency; every other route declares one (OpenAPI
    ``x-permission``) and depends on exactly that one.
    """
    from fastapi.routing import APIRoute

    from cvdeploy.serve.state import PUBLIC_ROUTES

    out: dict[tuple[str, str], str | None] = {}
    for route in app.routes:
        assert isinstance(route, APIRoute), f"{route} is not an APIRoute: it cannot be guarded"
        perm = (route.openapi_extra or {}).get("x-permission")
        deps = [getattr(d.call, "permission", None) for d in route.dependant.dependencies]
        if route.path in PUBLIC_ROUTES or (route.openapi_extra or {}).get("x-probe"):
            assert perm is None and not any(deps), route.path
        else:
            assert perm, f"{route.path} declares no permission"
            assert deps == [perm], f"{route.path}: dependency {deps} != declared {perm}"
        out[(sorted(route.methods)[0], route.path)] = perm
    return out
