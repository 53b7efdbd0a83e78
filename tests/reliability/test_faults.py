"""Faults: kill -9 at seeded moments, a full disk, a model file removed while serving, slow
clients, a crashing worker, and a secured server restarted after every attack."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability.faults import (
    PROMOTE_MOMENTS,
    audit_load_fault,
    bundle_fault,
    cli,
    leftovers,
    promote_fault,
)
from tests.serve.conftest import make_bundle, serving

PREDICT = "/v1/models/tiny/predict"
RAW = {"content-type": "image/jpeg"}


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    from cvdeploy.security.audit import write_key
    from cvdeploy.serve.registry import ModelRegistry

    reg = ModelRegistry(tmp_path / "reg", create=True)
    reg.add(make_bundle(tmp_path / "a", seed=0))
    reg.add(make_bundle(tmp_path / "b", seed=1))
    write_key(tmp_path / "audit.key")
    return tmp_path


@pytest.mark.slow
def test_promote_and_rollback_killed_at_every_moment(registry: Path) -> None:
    outcomes = [promote_fault(registry, m) for m in PROMOTE_MOMENTS]
    outcomes += [promote_fault(registry, m, rollback=True) for m in PROMOTE_MOMENTS[2:]]
    bad = [o.to_dict() for o in outcomes if not (o.killed and o.survived)]
    assert not bad, bad


@pytest.mark.slow
def test_bundle_changes_killed_leave_a_loadable_bundle(tmp_path: Path) -> None:
    from tests.tiny_models import write_image

    bundle = make_bundle(tmp_path / "m")
    images = tmp_path / "images"
    for i in range(4):
        write_image(images / f"{i}.jpg", h=64, w=64, seed=i)
    key = tmp_path / "model.key"
    assert cli(["keygen", "--key-file", str(key)])[0] == 0
    export = ["export", str(bundle), "--format", "openvino", "--data", str(images)]
    quant = ["quantize", str(bundle), "--calib", str(images), "--backend", "onnxruntime"]
    outcomes = [
        bundle_fault(bundle, export, scenario="export", moment="bundle.staged", kill_after=None),
        bundle_fault(bundle, export, scenario="export", moment="random", kill_after=2.5),
        bundle_fault(bundle, quant, scenario="quantize", moment="random", kill_after=3.0),
        bundle_fault(
            bundle,
            ["encrypt", str(bundle), "--key-file", str(key)],
            scenario="encrypt",
            moment="bundle.staged",
            kill_after=None,
        ),
    ]
    bad = [o.to_dict() for o in outcomes if not o.survived]
    assert not bad, bad
    assert outcomes[0].killed and outcomes[3].killed
    rc, out = cli(["encrypt", str(bundle), "--key-file", str(key)])
    assert rc == 0, out
    assert leftovers(bundle) == []  # the next change removed what the killed ones left


@pytest.mark.slow
def test_audit_appends_under_load_killed_at_random(tmp_path: Path) -> None:
    outcomes = audit_load_fault(tmp_path, seed=19, rounds=3)
    bad = [o.to_dict() for o in outcomes if not o.survived]
    assert not bad, bad


# a full disk ---------------------------------------------------------------------------------
@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "192k") -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path`` (root only; the test skips without it)."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(root: Path, leave: int) -> Path:
    """Fill a file system, then free about ``leave`` bytes; returns the filler file."""
    import os

    filler = root / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        size = os.fstat(fd).st_size
        os.ftruncate(fd, max(0, size - -(-leave // 4096) * 4096))
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_under_the_audit_log_and_a_bundle_write(
    tmp_path: Path, tiny_bundle: Path, auth_db_template: Any, jpeg: bytes
) -> None:
    from cvdeploy.security.audit import load_key, rotated_files, verify_log
    from tests.serve.secured import secured_app

    with small_tmpfs(tmp_path / "small") as small:
        sec = {"audit_log": small / "audit.log"}
        with secured_app(tiny_bundle, tmp_path, auth_db_template, **sec) as s:
            hdr = {**RAW, **s.auth("legit")}
            assert s.client.post(PREDICT, content=jpeg, headers=hdr).status_code == 200
            filler = _fill(small, leave=0)
            codes = [
                s.client.post(PREDICT, content=jpeg, headers=hdr).status_code for _ in range(8)
            ]
            assert 503 in codes and set(codes) <= {200, 503}, codes  # never a 500
            filler.unlink()
            assert s.client.post(PREDICT, content=jpeg, headers=hdr).status_code == 200
            report = verify_log(rotated_files(small / "audit.log"), load_key(s.audit_key))
            assert report.ok, report.problems
        # a bundle written onto a full disk: a clear error, nothing half-written left
        (small / "audit.log").unlink()
        _fill(small, leave=0)
        rc, out = cli(
            [
                "encrypt",
                str(tiny_bundle),
                "--key-file",
                str(_key(tmp_path)),
                "--out",
                str(small / "enc"),
            ]
        )
        assert rc in (1, 2), out
        assert "Traceback" not in out and "space" in out.lower(), out
        assert not (small / "enc").exists() and leftovers(small / "enc") == []
    from cvdeploy.bundle import Bundle

    Bundle.load(tiny_bundle)  # the source is untouched


def _key(tmp: Path) -> Path:
    key = tmp / "m.key"
    if not key.exists():
        assert cli(["keygen", "--key-file", str(key)])[0] == 0
    return key


# serving faults --------------------------------------------------------------------------------
def test_a_model_file_removed_while_serving(tmp_path: Path, tiny_bundle: Path, jpeg: bytes) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    with serving(bundle) as c:
        assert c.post(PREDICT, content=jpeg, headers=RAW).status_code == 200
        (bundle / "onnx-fp32" / "model.onnx").unlink()
        assert c.post(PREDICT, content=jpeg, headers=RAW).status_code == 200  # in memory
        r = c.post("/v1/models/tiny/reload")
        assert r.status_code == 409 and r.json()["error"], r.text
        assert str(tmp_path) not in r.text  # named, without the host's paths
        assert c.post(PREDICT, content=jpeg, headers=RAW).status_code == 200
        assert c.get("/readyz").status_code == 200
        assert 'status="500"' not in c.get("/metrics").text


def test_a_crashing_worker_fails_only_its_batch(tiny_bundle: Path, jpeg: bytes) -> None:
    from tests.serve.conftest import SlowRunner, slow_factory

    crashes = {"left": 2}

    class Crashing(SlowRunner):
        def run(self, x: Any) -> Any:
            if crashes["left"] > 0:
                crashes["left"] -= 1
                raise MemoryError("the runtime ran out of memory")
            return super().run(x)

    def factory(bundle: Any, config: Any) -> Any:
        preds = slow_factory(0.0)(bundle, config)
        for p in preds:
            p.runner = Crashing(p.runner.inner, delay=0.0)  # type: ignore[attr-defined]
        return preds

    with serving(tiny_bundle, factory=factory, warmup_runs=0, workers=1) as c:
        codes = [c.post(PREDICT, content=jpeg, headers=RAW).status_code for _ in range(5)]
        assert codes[:2] == [500, 500] and codes[2:] == [200, 200, 200], codes
        assert c.get("/readyz").status_code == 200
        body = c.post(PREDICT, content=jpeg, headers=RAW)
        assert body.status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_slow_clients_do_not_starve_others(tiny_bundle: Path, jpeg: bytes) -> None:
    """Slowloris, bounded: 64 connections trickle a request header for 3 s."""
    import uvicorn

    from cvdeploy.serve.app import create_app
    from cvdeploy.serve.config import ServeConfig

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(ServeConfig(source=tiny_bundle, warmup_runs=1)),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    socks: list[socket.socket] = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            end = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/readyz").status_code == 200:
                        break
                assert time.monotonic() < end
                time.sleep(0.1)
            for _ in range(64):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(b"POST /v1/models/tiny/predict HTTP/1.1\r\nHost: x\r\n")
                socks.append(s)
            served = 0
            stop = time.monotonic() + 3.0
            while time.monotonic() < stop:
                for s in socks:
                    with contextlib.suppress(OSError):
                        s.sendall(b"X-a: b\r\n")
                r = client.post(PREDICT, content=jpeg, headers=RAW)
                assert r.status_code == 200
                served += 1
            assert served >= 3
    finally:
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()
        server.should_exit = True
        thread.join(timeout=15)
        assert not thread.is_alive()


# a real secured server restarted after the attacks ------------------------------------------
@pytest.mark.slow
def test_secured_server_process_restarts_after_every_attack(
    tmp_path: Path, tiny_bundle: Path, jpeg: bytes, auth_db_template: Any
) -> None:
    import random
    import string

    from cvdeploy.security.audit import load_key, rotated_files, verify_log, write_key
    from tests.serve.test_uvicorn import cli_server

    db, keys, _ = auth_db_template
    shutil.copy(db, tmp_path / "auth.db")
    key_file = write_key(tmp_path / "audit.key")
    args = [
        "--auth-db",
        str(tmp_path / "auth.db"),
        "--audit-log",
        str(tmp_path / "audit.log"),
        "--audit-key-file",
        str(key_file),
    ]
    legit = {**RAW, "Authorization": f"Bearer {keys['legit']}"}
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    rng = random.Random(19)
    json = {**legit, "content-type": "application/json"}
    rounds = [  # each round: a server, its attacks, a legitimate request, then a restart
        [
            lambda c: c.request("X" * 40_000, "/v1/models"),
            lambda c: c.request("".join(rng.choices(string.ascii_uppercase, k=5000)), "/healthz"),
            lambda c: c.get("/v1/admin/users", headers={"Authorization": "Bearer x.y.z"}),
        ],
        [
            lambda c: c.post(PREDICT, content=b"[" * 100_000 + b"]" * 100_000, headers=json),
            lambda c: c.post(PREDICT, content=b'{"images": [' + b"9" * 5000 + b"]}", headers=json),
            lambda c: c.post(
                "/v1/auth/token",
                content=b"[" * 5000 + b"]" * 5000,
                headers={"content-type": "application/json"},
            ),
        ],
        [
            lambda c: [c.get(f"/nothing/{i}") for i in range(200)],
            lambda c: [c.post(PREDICT, content=jpeg, headers=RAW) for _ in range(100)],
        ],
    ]
    for i, attacks in enumerate(rounds):
        (tmp_path / f"run{i}").mkdir()
        with cli_server(tiny_bundle, tmp_path / f"run{i}", args=args) as c:
            for attack in attacks:
                with contextlib.suppress(httpx.HTTPError):
                    attack(c)
            assert c.post(PREDICT, content=jpeg, headers=legit).status_code == 200
            assert 'status="500"' not in c.get("/metrics", headers=admin).text
        report = verify_log(rotated_files(tmp_path / "audit.log"), load_key(key_file))
        assert report.ok, (i, report.problems)
    (tmp_path / "last").mkdir()
    with cli_server(tiny_bundle, tmp_path / "last", args=args) as c:  # and once more
        assert c.post(PREDICT, content=jpeg, headers=legit).status_code == 200
