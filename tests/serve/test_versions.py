"""Version switches under load: promote and rollback with zero failed requests."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cvdeploy.serve.registry import ModelRegistry
from tests.serve.conftest import make_bundle, serving

RAW = {"content-type": "image/jpeg"}
PREDICT = "/v1/models/tiny/predict"


@pytest.fixture()
def registry(tmp_path: Path) -> ModelRegistry:
    reg = ModelRegistry(tmp_path / "reg", create=True)
    reg.add(make_bundle(tmp_path / "a", seed=0))
    reg.add(make_bundle(tmp_path / "b", seed=1))
    return reg


class Load:
    """Sends requests from a few threads until stopped; records status and version."""

    def __init__(self, client: Any, jpeg: bytes, threads: int = 3) -> None:
        self.client, self.jpeg = client, jpeg
        self.results: list[tuple[int, str | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop) for _ in range(threads)]

    def _loop(self) -> None:
        while not self._stop.is_set():
            r = self.client.post(PREDICT, content=self.jpeg, headers=RAW)
            self.results.append((r.status_code, r.headers.get("x-model-version")))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


def _wait_version(client: Any, version: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if client.get("/readyz").json()["models"].get("tiny") == version:
            return
        time.sleep(0.05)
    raise AssertionError(f"server did not switch to version {version}")


def test_promote_and_rollback_under_load(registry: ModelRegistry, jpeg: bytes) -> None:
    with serving(registry.root, poll_interval_s=0.1) as c:
        assert c.get("/readyz").json()["models"] == {"tiny": "1"}
        with Load(c, jpeg) as load:
            time.sleep(0.3)
            registry.promote("tiny", "2")
            _wait_version(c, "2")
            time.sleep(0.3)
            registry.rollback("tiny")
            _wait_version(c, "1")
            time.sleep(0.3)
        statuses = [s for s, _ in load.results]
        versions = [v for _, v in load.results]
        assert statuses and set(statuses) == {200}, statuses
        assert "2" in versions and versions[-1] == "1"
        # switching happens once per direction: 1...1 2...2 1...1
        changes = sum(1 for a, b in itertools.pairwise(versions) if a != b)
        assert changes >= 2
        info = c.get("/v1/models/tiny").json()
        assert info["version"] == "1" and info["registry"]["stages"]["production"] == "1"
        assert (
            'cvdeploy_model_reloads_total{model="tiny",result="ok"} 3.0' in c.get("/metrics").text
        )


def test_failing_promote_keeps_the_old_version(registry: ModelRegistry, jpeg: bytes) -> None:
    registry.add(make_bundle(registry.root.parent / "c", seed=2), version="broken")
    model_file = next(registry.bundle_path("tiny", "broken").rglob("*.onnx"))
    model_file.write_bytes(b"corrupted")  # sha256 no longer matches the manifest
    with serving(registry.root, poll_interval_s=0.1) as c:
        with Load(c, jpeg, threads=2) as load:
            registry.promote("tiny", "broken")
            end = time.monotonic() + 20
            while "tiny" not in c.get("/v1/models").json()["errors"]:
                assert time.monotonic() < end, "the failed load was not reported"
                time.sleep(0.05)
            time.sleep(0.2)
        assert load.results and {s for s, _ in load.results} == {200}
        assert {v for _, v in load.results} == {"1"}
        info = c.get("/v1/models/tiny").json()
        assert info["version"] == "1" and "broken failed to load" in info["last_error"]
        assert c.get("/readyz").status_code == 200
        r = c.post("/v1/models/tiny/reload")
        assert r.status_code == 409 and r.json()["version"] == "1"
        registry.promote("tiny", "2")  # a good version afterwards still switches
        _wait_version(c, "2")
        assert c.get("/v1/models/tiny").json()["last_error"] is None


def test_reload_route(registry: ModelRegistry, jpeg: bytes) -> None:
    with serving(registry.root, poll_interval_s=60) as c:
        registry.promote("tiny", "2")
        r = c.post("/v1/models/tiny/reload")
        assert r.status_code == 200 and r.json() == {
            "model": "tiny",
            "outcome": "switched",
            "version": "2",
            "error": None,
        }
        assert c.post(PREDICT, content=jpeg, headers=RAW).headers["x-model-version"] == "2"
        assert c.post("/v1/models/other/reload").status_code == 404
