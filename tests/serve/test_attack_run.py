"""Regression tests of what the adversarial run against `cvdeploy serve` found (issue 19).

One test per defect over HTTP (the audit log's own are in tests/security/test_audit_anchors.py),
each failing before its fix; every secured test ends with a restart of the server on the
same database and audit log, a legitimate request, and the chain verified.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import string
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cvdeploy.security.audit import load_key, rotated_files, verify_log
from cvdeploy.serve.inputs import PixelBudget, json_depth_ok, loads_bounded
from cvdeploy.serve.registry import ModelRegistry
from tests.serve.conftest import make_bundle, serving
from tests.serve.secured import PASSWORD, RAW, Secured, secured_app

PREDICT = "/v1/models/tiny/predict"


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _legit(s: Secured, jpeg: bytes, who: str = "legit") -> None:
    r = s.client.post(PREDICT, content=jpeg, headers={**RAW, **s.auth(who)})
    assert r.status_code == 200, r.text


def _restart_and_verify(s: Secured, source: Path, tmp: Path, jpeg: bytes, **sec: Any) -> None:
    """A new server on the same auth database and audit log starts, serves and logs."""
    from fastapi.testclient import TestClient

    from cvdeploy.serve.app import create_app
    from cvdeploy.serve.config import ServeConfig
    from tests.serve.conftest import wait_ready

    cfg = {
        "auth_db": tmp / "auth.db",
        "audit_log": s.audit_log,
        "audit_key_file": s.audit_key,
        **sec,
    }
    app = create_app(ServeConfig(source=source, warmup_runs=1, security=cfg))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        r = client.post(PREDICT, content=jpeg, headers={**RAW, **s.auth("legit")})
        assert r.status_code == 200, r.text
    report = verify_log(rotated_files(s.audit_log), load_key(s.audit_key))
    assert report.ok, report.problems


@pytest.fixture
def srv(tmp_path: Path, tiny_bundle: Path, auth_db_template: Any) -> Any:
    with secured_app(tiny_bundle, tmp_path, auth_db_template, predict_burst_per_key=1000) as s:
        yield s


# 1 and 5: a huge method stopped the restart; random methods grew /metrics -------------------
def test_huge_and_random_methods_neither_stop_a_restart_nor_grow_metrics(
    srv: Secured, tmp_path: Path, tiny_bundle: Path, jpeg: bytes
) -> None:
    r = srv.client.request("X" * 40_000, "/v1/models")
    assert r.status_code == 405
    rng = random.Random(0)
    for _ in range(300):
        method = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(8, 2000)))
        assert srv.client.request(method, "/healthz").status_code == 405
    metrics = srv.client.get("/metrics", headers=srv.auth("operator")).text
    assert len(metrics) < 200_000
    methods = {
        line.split('method="')[1].split('"')[0]
        for line in metrics.splitlines()
        if 'method="' in line
    }
    assert methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER"}
    assert max(len(x) for x in srv.audit_log.read_bytes().splitlines()) < 4096
    _restart_and_verify(srv, tiny_bundle, tmp_path, jpeg)


# 4: memory amplification through many large images in one request --------------------------
def test_per_request_pixel_budget(tiny_bundle: Path) -> None:
    big = _png(300, 300)  # 90,000 pixels each, each under max_pixels
    with serving(tiny_bundle, max_request_pixels=200_000, max_pixels=100_000) as c:
        files = [("files", (f"{i}.png", big, "image/png")) for i in range(3)]
        r = c.post(PREDICT, files=files)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_many_pixels"
        r = c.post(PREDICT, files=files[:2])
        assert r.status_code == 200, r.text
        assert 'status="500"' not in c.get("/metrics").text


def test_decoding_never_holds_more_pixels_than_the_budget(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import cvdeploy.serve.routes as routes

    held: list[int] = []
    budgets: list[PixelBudget] = []
    real = routes.decode_checked

    def spy(*a: Any, **k: Any) -> Any:
        held.append(budgets[0].used)
        return real(*a, **k)

    monkeypatch.setattr(routes, "decode_checked", spy)
    img = _png(200, 200)  # 40,000 pixels; the budget fits two requests of two images
    with serving(tiny_bundle, decode_budget_pixels=160_000, max_request_pixels=80_000) as c:
        budgets.append(c.app.state.cvdeploy.decode_budget)
        files = [("files", (f"{i}.png", img, "image/png")) for i in range(2)]
        with ThreadPoolExecutor(8) as ex:
            codes = list(ex.map(lambda _: c.post(PREDICT, files=files).status_code, range(24)))
    assert codes == [200] * 24
    assert held and max(held) <= 160_000
    assert budgets[0].used == 0  # every request gave its pixels back


def test_pixel_budget_waits_in_order_and_times_out() -> None:
    async def main() -> None:
        b = PixelBudget(100)
        assert await b.acquire(60, timeout=1) == 60
        order: list[int] = []

        async def take(n: int) -> None:
            got = await b.acquire(n, timeout=5)
            order.append(n)
            b.release(got)

        waiters = [asyncio.create_task(take(50)), asyncio.create_task(take(30))]
        await asyncio.sleep(0.01)
        assert order == []  # 30 would fit, but waits behind 50: first come, first served
        with pytest.raises(Exception, match="decoding as many pixels"):
            await b.acquire(90, timeout=0.01)
        b.release(60)
        await asyncio.gather(*waiters)
        assert order == [50, 30] and b.used == 0
        assert await b.acquire(10**9, timeout=0) == 100  # more than the capacity: all of it
        b.release(100)

    asyncio.run(main())


# 6: anonymous traffic filled the disk through the audit log ---------------------------------
def test_anonymous_failures_are_aggregated_in_the_audit_log(
    tmp_path: Path, tiny_bundle: Path, auth_db_template: Any, jpeg: bytes
) -> None:
    with secured_app(tiny_bundle, tmp_path, auth_db_template) as s:  # the defaults
        for i in range(400):
            path = "/v1/models" if i % 2 else f"/nothing/{i}"
            assert s.client.get(path).status_code in (401, 404, 429)
        _legit(s, jpeg)
        written = [e for e in s.entries() if e["actor"] == "anonymous"]
        assert len(written) <= 101  # the burst of one address, not 400 fsync'd entries
        assert s.layer.throttle.pending >= 299
        s.mono.advance(61)  # the summary is due
        _legit(s, jpeg)
        summary = [e for e in s.entries() if e["action"] == "audit.suppressed"]
        assert len(summary) == 1 and summary[0]["detail"]["count"] >= 299
        assert set(summary[0]["detail"]["statuses"]) <= {"401", "404", "429"}
    _restart_and_verify(s, tiny_bundle, tmp_path, jpeg)


def test_held_back_counts_are_written_at_shutdown(
    tmp_path: Path, tiny_bundle: Path, auth_db_template: Any
) -> None:
    with secured_app(tiny_bundle, tmp_path, auth_db_template) as s:
        for _ in range(110):
            s.client.get("/v1/models")
    summary = [e for e in s.entries() if e["action"] == "audit.suppressed"]
    assert [e["detail"]["count"] for e in summary] == [10]  # 100 written, 10 counted


# 7: 500s on hostile JSON ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b"[" * 5_000 + b"]" * 5_000,  # small enough for every route, too deep for any
        b'{"images": [' + b"9" * 5000 + b"]}",
        b'{"image": ' + b"1" * 5000 + b"}",
        b'{"a": "' + b"[" * 1000 + b'"}',  # brackets inside a string do not count
    ],
)
def test_hostile_json_is_bad_input_never_a_500(srv: Secured, body: bytes, jpeg: bytes) -> None:
    hdr = {"content-type": "application/json"}
    r = srv.client.post(PREDICT, content=body, headers={**hdr, **srv.auth("legit")})
    assert r.status_code == 400, r.text
    for route in ("/v1/auth/token", "/v1/admin/keys"):
        r = srv.client.post(route, content=body, headers={**hdr, **srv.auth("admin")})
        assert r.status_code in (400, 413, 422), (route, r.status_code, r.text)
    r = srv.client.post("/v1/auth/token", content=b"{" + b" " * 200_000 + b"}", headers=hdr)
    assert r.status_code == 413
    _legit(srv, jpeg)
    metrics = srv.client.get("/metrics", headers=srv.auth("operator")).text
    assert 'status="500"' not in metrics


def test_json_depth_scan() -> None:
    assert json_depth_ok(b'{"a": [[1], {"b": "]]]]"}]}', 3)
    assert not json_depth_ok(b"[[[[1]]]]", 3)
    assert json_depth_ok(b'"\\"[[[[[["', 1)
    assert loads_bounded(b'{"images": []}') == {"images": []}
    with pytest.raises(Exception, match="nested deeper"):
        loads_bounded(b"[" * 40 + b"]" * 40)


# 8 and 13: a scoped key saw other models; viewers saw absolute paths ------------------------
def test_scoped_keys_see_only_their_models_and_no_paths(
    tmp_path: Path, auth_db_template: Any, jpeg: bytes
) -> None:
    reg = ModelRegistry(tmp_path / "reg", create=True)
    reg.add(make_bundle(tmp_path / "a", name="tiny"))
    reg.add(make_bundle(tmp_path / "b", name="other", seed=1))
    with secured_app(reg.root, tmp_path, auth_db_template, predict_burst_per_key=1000) as s:
        s.client.app.state.cvdeploy.stats.recent_every_s = 0.0
        key, _ = s.layer.store.create_key("ops-tiny", role="operator", models=["tiny"])
        mine = {"Authorization": f"Bearer {key}"}
        for model in ("other", "tiny"):
            r = s.client.post(
                f"/v1/models/{model}/predict", content=jpeg, headers={**RAW, **s.auth("admin")}
            )
            assert r.status_code == 200
        listed = s.client.get("/v1/models", headers=mine).json()
        assert [m["name"] for m in listed["models"]] == ["tiny"]
        assert len(s.client.get("/v1/models", headers=s.auth("admin")).json()["models"]) == 2
        stats = s.client.get("/v1/stats", headers=mine).json()
        assert [m["name"] for m in stats["models"]] == ["tiny"]
        assert {r["model"] for r in stats["recent"]} == {"tiny"}
        assert stats["classes"] == {} and stats["scoped_to"] == ["tiny"]
        metrics = s.client.get("/metrics", headers=mine).text
        assert 'model="tiny"' in metrics and 'model="other"' not in metrics
        info = s.client.get("/v1/models/tiny", headers=s.auth("viewer")).text
        assert str(tmp_path) not in info and "/" + tmp_path.parts[1] not in info.replace("/v1/", "")


def test_load_errors_over_http_hide_paths(tmp_path: Path, tiny_bundle: Path) -> None:
    from cvdeploy.serve.routes import public_errors, public_text

    msg = f"version 2 failed to load: {tmp_path}/reg/models/tiny/2/bundle.json: bad json"
    assert str(tmp_path) not in public_text(msg) and ".../bundle.json" in public_text(msg)
    assert public_errors({"a": msg, "b": msg}, frozenset({"a"})).keys() == {"a"}


# 9: anonymous requests used up a client's budget --------------------------------------------
def test_anonymous_requests_do_not_use_up_a_clients_budget(
    tmp_path: Path, tiny_bundle: Path, auth_db_template: Any, jpeg: bytes
) -> None:
    sec = {"predict_burst_per_ip": 5, "predict_burst_per_key": 50}
    with secured_app(tiny_bundle, tmp_path, auth_db_template, **sec) as s:
        codes = [s.client.post(PREDICT, content=jpeg, headers=RAW).status_code for _ in range(400)]
        assert set(codes) <= {401, 429} and 429 in codes  # anonymous: their own budget
        bad = {"Authorization": "Bearer cvd_000000000000_" + "A" * 43}
        assert s.client.post(PREDICT, content=jpeg, headers={**RAW, **bad}).status_code == 429
        for _ in range(5):  # the same address, with a valid key: its own budget is whole
            _legit(s, jpeg)
        r = s.client.post(PREDICT, content=jpeg, headers={**RAW, **s.auth("legit")})
        assert r.status_code == 429  # and that budget is still enforced
    _restart_and_verify(s, tiny_bundle, tmp_path, jpeg)


# 11: sampled request images were world-readable ---------------------------------------------
def test_sampled_requests_are_private(tiny_bundle: Path, tmp_path: Path, jpeg: bytes) -> None:
    log = tmp_path / "log"
    log.mkdir(mode=0o755)
    old = os.umask(0o022)
    try:
        with serving(tiny_bundle, sample_rate=1.0, log_dir=log) as c:
            for _ in range(3):
                assert c.post(PREDICT, content=jpeg, headers=RAW).status_code == 200
    finally:
        os.umask(old)
    images = list((log / "images").iterdir())
    assert images
    for p in [log, log / "images"]:
        assert p.stat().st_mode & 0o777 == 0o700, p
    for p in [log / "index.sqlite", *images]:
        assert p.stat().st_mode & 0o777 == 0o600, p


# 12: a removed user's token worked again once the name was re-added --------------------------
def test_token_of_a_removed_user_stays_dead_when_the_name_returns(
    srv: Secured, tmp_path: Path, tiny_bundle: Path, jpeg: bytes
) -> None:
    r = srv.login("olga")
    token = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert srv.client.get("/metrics", headers=token).status_code == 200
    srv.layer.store.remove_user("olga")
    srv.layer.store.add_user("olga", PASSWORD, role="admin")
    r = srv.client.get("/v1/admin/users", headers=token)
    assert r.status_code == 401, r.text
    assert srv.client.get("/metrics", headers=token).status_code == 401
    reasons = [e["detail"].get("reason") for e in srv.entries()]
    assert "token user removed" in reasons
    _restart_and_verify(srv, tiny_bundle, tmp_path, jpeg)


def test_databases_before_account_ids_get_them(tmp_path: Path) -> None:
    import sqlite3

    from cvdeploy.security.store import SecurityStore

    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE users (name TEXT PRIMARY KEY, role TEXT NOT NULL, models TEXT, "
        "pw_hash TEXT NOT NULL, totp_secret TEXT, totp_last_step INTEGER NOT NULL DEFAULT -1, "
        "created REAL NOT NULL)"
    )
    con.execute("INSERT INTO users VALUES ('ann', 'viewer', NULL, 'x', NULL, -1, 0)")
    con.commit()
    con.close()
    store = SecurityStore(db)
    principal = store.principal_for_user("ann")
    assert principal is not None and principal.uid and len(principal.uid) == 16
    assert store.principal_for_user("ann", "0" * 16) is None


# 13: OpenAPI, HEAD, framing -------------------------------------------------------------------
def test_openapi_documents_every_answer(srv: Secured) -> None:
    schema = srv.client.get("/openapi.json", headers=srv.auth("viewer")).json()
    predict = schema["paths"]["/v1/models/{name}/predict"]["post"]["responses"]
    assert {"200", "400", "401", "403", "404", "413", "415", "422", "429", "503", "504"} <= set(
        predict
    )
    assert "image/jpeg" in predict["200"]["content"]
    assert "text/plain" in schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    err = predict["413"]["content"]["application/json"]["schema"]
    assert err["properties"]["error"]["required"] == ["code", "message"]


def test_head_answers_like_get(srv: Secured, tiny_bundle: Path) -> None:
    r = srv.client.head("/healthz")
    assert r.status_code == 200 and r.content == b""
    r = srv.client.head("/v1/models", headers=srv.auth("viewer"))
    get = srv.client.get("/v1/models", headers=srv.auth("viewer"))
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-length"] == get.headers["content-length"]
    assert srv.client.head("/v1/models").status_code == 401
    last = srv.entries()[-1]["detail"]
    assert (last["method"], last["route"], last["status"]) == ("HEAD", "/v1/models", 401)
    with serving(tiny_bundle) as c:
        assert c.head("/metrics").status_code == 200
        assert 'method="HEAD"' in c.get("/metrics").text


def test_pages_cannot_be_framed(srv: Secured) -> None:
    r = srv.client.get("/login")
    assert r.status_code == 200
    assert r.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    for page in ("/dashboard", "/docs"):
        r = srv.client.get(page, headers=srv.auth("operator"))
        assert r.status_code == 200 and r.headers["x-frame-options"] == "DENY", page


def test_a_full_disk_refuses_instead_of_acknowledging(
    srv: Secured, jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from cvdeploy.security import audit as audit_mod

    real = audit_mod.os.write

    def enospc(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audit_mod.os, "write", enospc)
    r = srv.client.post(PREDICT, content=jpeg, headers={**RAW, **srv.auth("legit")})
    assert r.status_code == 503 and r.json()["error"]["code"] == "audit_unavailable"
    monkeypatch.setattr(audit_mod.os, "write", real)
    _legit(srv, jpeg)
    assert verify_log([srv.audit_log], load_key(srv.audit_key)).ok
    assert json.loads(srv.audit_log.read_text().splitlines()[-1])["action"] == "predict"
