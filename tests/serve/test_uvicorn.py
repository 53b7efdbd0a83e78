"""Against real uvicorn servers on 127.0.0.1: a `cvdeploy serve` process, and in-thread."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import uvicorn

from cvdeploy.serve.app import create_app
from cvdeploy.serve.config import ServeConfig
from cvdeploy.serve.registry import ModelRegistry
from tests.serve.conftest import ico_bytes, make_bundle, slow_factory

RAW = {"content-type": "image/jpeg"}
PREDICT = "/v1/models/tiny/predict"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(
    client: httpx.Client, proc: subprocess.Popen[bytes] | None, log: Path | None
) -> None:
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"server exited with {proc.returncode}:\n{log.read_text() if log else ''}"
            )
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server not ready within 60 s")


@contextmanager
def cli_server(
    source: Path,
    tmp: Path,
    *,
    args: Sequence[str] = (),
    tls: ssl.SSLContext | None = None,
    **cfg: Any,
) -> Iterator[httpx.Client]:
    """`cvdeploy serve` in a subprocess on a free port; always terminated.

    Args:
        source: Bundle or registry.
        tmp: Where ``serve.yaml`` (from ``cfg``) and ``server.log`` go.
        args: Extra command-line options (``--tls-cert``, ``--auth-db``, ...).
        tls: The client's SSL context: the server is reached over HTTPS with it.
        cfg: ``serve.yaml`` entries.
    """
    port = _free_port()
    conf = tmp / "serve.yaml"
    conf.write_text("".join(f"{k}: {v}\n" for k, v in cfg.items()))
    log = tmp / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cvdeploy.cli.main",
                "serve",
                str(source),
                "--port",
                str(port),
                *(["--config", str(conf)] if cfg else []),
                "--max-wait-ms",
                "2",
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    scheme = "http" if tls is None else "https"
    try:
        with httpx.Client(
            base_url=f"{scheme}://127.0.0.1:{port}", timeout=30, verify=tls or True
        ) as client:
            _wait_ready(client, proc, log)
            yield client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextmanager
def thread_server(config: ServeConfig, **kw: Any) -> Iterator[httpx.Client]:
    """A uvicorn.Server running create_app(...) in a thread on a free port."""
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(config, **kw), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            _wait_ready(client, None, None)
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def test_cli_server_predict_and_bad_input(tmp_path: Path, tiny_bundle: Path, jpeg: bytes) -> None:
    big = cv2.imencode(".png", np.zeros((400, 400, 3), np.uint8))[1].tobytes()
    with cli_server(
        tiny_bundle, tmp_path, max_body_bytes=16384, max_pixels=50000, warmup_runs=1
    ) as c:
        assert c.get("/healthz").json()["status"] == "alive"
        r = c.post(PREDICT, content=jpeg, headers=RAW)
        assert r.status_code == 200 and r.json()["results"][0]["detections"]
        files = [("f", ("a.jpg", jpeg, "image/jpeg")), ("f", ("b.jpg", jpeg, "image/jpeg"))]
        assert len(c.post(PREDICT, files=files).json()["results"]) == 2
        b64 = base64.b64encode(jpeg).decode()
        assert c.post(PREDICT, json={"images": [b64]}).status_code == 200
        r = c.post(PREDICT, content=jpeg, headers=RAW, params={"draw": True})
        assert r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
            for _ in range(40):
                yield b"\0" * 1000

        for kwargs, status in [
            (dict(content=b"plain text", headers=RAW), 415),
            (dict(content=jpeg[:-200], headers=RAW), 400),
            (dict(content=b"x", headers={"content-type": "text/csv"}), 415),
            (dict(content=ico_bytes(), headers={"content-type": "image/x-icon"}), 415),
            (dict(content=b"\0" * 30000, headers=RAW), 413),
            (dict(content=chunks(), headers=RAW), 413),
            (dict(content=big, headers={"content-type": "image/png"}), 413),
        ]:
            r = c.post(PREDICT, **kwargs)
            assert r.status_code == status, r.text
            assert r.json()["error"]["message"]
        assert c.post("/v1/models/zzz/predict", content=jpeg, headers=RAW).status_code == 404
        assert c.post(PREDICT, content=jpeg, headers=RAW).status_code == 200
        metrics = c.get("/metrics").text
        assert 'route="/v1/models/{name}/predict",status="413"' in metrics
        assert 'status="500"' not in metrics


def test_cli_server_follows_registry_under_load(tmp_path: Path, jpeg: bytes) -> None:
    reg = ModelRegistry(tmp_path / "reg", create=True)
    reg.add(make_bundle(tmp_path / "a", seed=0))
    reg.add(make_bundle(tmp_path / "b", seed=1))
    results: list[tuple[int, str | None]] = []
    stop = threading.Event()
    with cli_server(reg.root, tmp_path, poll_interval_s=0.1, warmup_runs=1) as c:

        def loop() -> None:
            with httpx.Client(base_url=str(c.base_url), timeout=30) as own:
                while not stop.is_set():
                    try:
                        r = own.post(PREDICT, content=jpeg, headers=RAW)
                        results.append((r.status_code, r.headers.get("x-model-version")))
                    except httpx.TransportError as exc:
                        results.append((-1, repr(exc)))

        threads = [threading.Thread(target=loop) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            for target, change in (
                ("2", lambda: reg.promote("tiny", "2")),
                ("1", lambda: reg.rollback("tiny")),
            ):
                time.sleep(0.5)
                change()
                end = time.monotonic() + 30
                while c.get("/readyz").json()["models"]["tiny"] != target:
                    assert time.monotonic() < end
                    time.sleep(0.05)
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
    codes = [s for s, _ in results]
    assert len(codes) > 20 and set(codes) == {200}, [r for r in results if r[0] != 200][:5]
    versions = [v for _, v in results]
    assert "2" in versions and versions[-1] == "1"


def test_overload_and_deadline_on_uvicorn(tiny_bundle: Path, jpeg: bytes) -> None:
    cfg = ServeConfig(
        source=tiny_bundle, queue_size=2, max_batch=1, warmup_runs=0, request_timeout_s=1.5
    )
    with thread_server(cfg, predictor_factory=slow_factory(0.25)) as c:

        def call(_: int) -> tuple[int, str | None]:
            with httpx.Client(base_url=str(c.base_url), timeout=30) as own:
                r = own.post(PREDICT, content=jpeg, headers=RAW)
                return r.status_code, r.headers.get("retry-after")

        with ThreadPoolExecutor(12) as ex:
            out = list(ex.map(call, range(12)))
        codes = [s for s, _ in out]
        assert 200 in codes and 503 in codes, codes
        assert set(codes) <= {200, 503, 504}, codes
        assert all(ra == "1" for s, ra in out if s == 503)
        time.sleep(1.0)
        assert c.post(PREDICT, content=jpeg, headers=RAW).status_code == 200


def test_deadline_on_uvicorn(tiny_bundle: Path, jpeg: bytes) -> None:
    cfg = ServeConfig(source=tiny_bundle, warmup_runs=0, request_timeout_s=0.1)
    with thread_server(cfg, predictor_factory=slow_factory(0.4)) as c:
        r = c.post(PREDICT, content=jpeg, headers=RAW)
        assert r.status_code == 504, r.text
        assert c.get("/healthz").status_code == 200


def test_cli_server_keeps_serving_when_a_promoted_version_fails_to_load(
    tmp_path: Path, jpeg: bytes
) -> None:
    reg = ModelRegistry(tmp_path / "reg", create=True)
    reg.add(make_bundle(tmp_path / "a", seed=0))
    reg.add(make_bundle(tmp_path / "b", seed=1), version="broken")
    next(reg.bundle_path("tiny", "broken").rglob("*.onnx")).write_bytes(b"corrupted")
    with cli_server(reg.root, tmp_path, poll_interval_s=0.1, warmup_runs=1) as c:
        reg.promote("tiny", "broken")
        end = time.monotonic() + 30
        while "tiny" not in c.get("/v1/models").json()["errors"]:
            assert time.monotonic() < end, "the failed load was not reported"
            assert c.post(PREDICT, content=jpeg, headers=RAW).status_code == 200
            time.sleep(0.05)
        r = c.post(PREDICT, content=jpeg, headers=RAW)
        assert r.status_code == 200 and r.headers["x-model-version"] == "1"
        assert "broken failed to load" in c.get("/v1/models/tiny").json()["last_error"]
        assert c.get("/readyz").status_code == 200
        assert 'status="500"' not in c.get("/metrics").text
