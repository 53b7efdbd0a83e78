"""Attack tests against a secured server: each attack is refused with the right status and
an audit entry, while a legitimate client keeps being served in between."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import jwt
import pytest

from cvdeploy.security.audit import load_key, verify_log
from tests.serve.conftest import route_permissions
from tests.serve.secured import PASSWORD, RAW, Secured, secured_app

PREDICT = "/v1/models/tiny/predict"

# Every guarded route with a request that reaches it, and its permission.
ROUTES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("POST", PREDICT, "predict", {}),
    ("GET", "/v1/models", "read", {}),
    ("GET", "/v1/models/tiny", "read", {}),
    ("POST", "/v1/models/tiny/reload", "reload", {}),
    ("GET", "/metrics", "metrics", {}),
    ("GET", "/v1/stats", "metrics", {}),
    ("GET", "/dashboard", "metrics", {}),
    ("GET", "/openapi.json", "docs", {}),
    ("GET", "/docs", "docs", {}),
    ("GET", "/docs/assets/swagger-ui.css", "docs", {}),
    ("GET", "/v1/auth/whoami", "whoami", {}),
    ("GET", "/v1/admin/users", "users", {}),
    ("GET", "/v1/admin/keys", "users", {}),
    ("POST", "/v1/admin/keys", "users", {"json": {"label": "x", "role": "viewer"}}),
    ("DELETE", "/v1/admin/keys/000000000000", "users", {}),
]
ROLE_OK = {
    "viewer": {"read", "docs", "whoami"},
    "predictor": {"read", "docs", "whoami", "predict"},
    "operator": {"read", "docs", "whoami", "predict", "metrics", "reload"},
    "admin": {"read", "docs", "whoami", "predict", "metrics", "reload", "users"},
}


@pytest.fixture
def srv(tmp_path: Path, tiny_bundle: Path, auth_db_template: Any) -> Any:
    with secured_app(
        tiny_bundle, tmp_path, auth_db_template, predict_burst_per_key=1000, lockout_after=3
    ) as s:
        yield s


def _call(
    s: Secured, method: str, path: str, jpeg: bytes, headers: dict[str, str], **kw: Any
) -> Any:
    if path.endswith("/predict"):
        kw = {"content": jpeg, **kw}
        headers = {**RAW, **headers}
    return s.client.request(method, path, headers=headers, **kw)


def _legit(s: Secured, jpeg: bytes) -> None:
    r = s.client.post(PREDICT, content=jpeg, headers={**RAW, **s.auth("legit")})
    assert r.status_code == 200, r.text


def _denied_entries(s: Secured, status: int) -> list[dict[str, Any]]:
    return [e for e in s.entries() if e["detail"].get("status") == status]


def _chain_ok(s: Secured) -> None:
    report = verify_log([s.audit_log], load_key(s.audit_key))
    assert report.ok, report.problems


def test_every_route_declares_a_permission_when_secured(srv: Secured) -> None:
    seen = {k for k, perm in route_permissions(srv.client.app).items() if perm is not None}
    # the attack table below covers every guarded route
    table = {
        (
            m,
            p.replace("tiny", "{name}")
            .replace("000000000000", "{key_id}")
            .replace("swagger-ui.css", "{asset}"),
        )
        for m, p, _, _ in ROUTES
    }
    table = {
        (m, p.replace("/v1/models/{name}/predict", "/v1/models/{name}/predict")) for m, p in table
    }
    # the log-in routes need no credentials by design (tests/serve/test_session.py)
    login = {
        ("POST", "/v1/auth/token"),
        ("POST", "/v1/auth/session"),
        ("POST", "/v1/auth/logout"),
        ("GET", "/login"),
    }
    assert seen - login == table


def test_no_credentials_wrong_role_and_bad_keys(srv: Secured, jpeg: bytes) -> None:
    for method, path, perm, kw in ROUTES:
        r = _call(srv, method, path, jpeg, {}, **kw)
        assert r.status_code == 401, (path, r.status_code, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        _legit(srv, jpeg)
        for role, allowed in ROLE_OK.items():
            if perm in allowed:
                continue
            r = _call(srv, method, path, jpeg, srv.auth(role), **kw)
            assert r.status_code == 403, (path, role, r.status_code)
            assert r.json()["error"]["code"] == "forbidden"
        _legit(srv, jpeg)
    # another model's scoped key, a revoked key, an expired key, a forged secret
    r = _call(srv, "POST", PREDICT, jpeg, srv.auth("other_model"))
    assert r.status_code == 403
    assert srv.client.get("/v1/models/tiny", headers=srv.auth("other_model")).status_code == 403
    for who in ("revoked",):
        assert _call(srv, "POST", PREDICT, jpeg, srv.auth(who)).status_code == 401
    srv.wall.advance(120)  # past the 60 s expiry
    assert _call(srv, "POST", PREDICT, jpeg, srv.auth("expiring")).status_code == 401
    key = srv.keys["legit"]
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert _call(srv, "POST", PREDICT, jpeg, {"X-API-Key": forged}).status_code == 401
    _legit(srv, jpeg)
    # audit: every refusal recorded, with its reason where there is one
    reasons = {e["detail"].get("reason") for e in _denied_entries(srv, 401)}
    assert {"api_key_revoked", "api_key_expired", "api_key_bad_secret"} <= reasons
    n_denied = len(ROUTES) + sum(
        len(ROUTES) - sum(p in a for _, _, p, _ in ROUTES) for a in ROLE_OK.values()
    )
    assert len([e for e in srv.entries() if e["outcome"] == "denied"]) >= n_denied
    assert any(
        e["detail"]["status"] == 403 and e["actor"].startswith("key:")
        for e in srv.entries()
        if e["outcome"] == "denied"
    )
    _chain_ok(srv)


def _token(s: Secured, user: str = "alice") -> str:
    r = s.login(user)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def test_forged_expired_and_alg_none_tokens(srv: Secured, jpeg: bytes) -> None:
    good = _token(srv, "olga")
    hdr = {"Authorization": f"Bearer {good}"}
    assert srv.client.get("/metrics", headers=hdr).status_code == 200
    claims = jwt.decode(good, options={"verify_signature": False})
    kid = jwt.get_unverified_header(good)["kid"]
    attacks = {
        "forged": jwt.encode(claims, b"x" * 32, algorithm="HS256", headers={"kid": kid}),
        "alg_none": jwt.encode(claims, None, algorithm="none", headers={"kid": kid}),
        "unknown_kid": jwt.encode(claims, b"x" * 32, algorithm="HS256", headers={"kid": "zz"}),
        "expired": srv.layer.tokens.issue("olga", now=claims["iat"] - 10_000)[0],
        "not_yet_valid": srv.layer.tokens.issue("olga", now=claims["iat"] + 10_000)[0],
        "garbage": "not.a.token",
        "tampered": good[:-2] + ("AA" if not good.endswith("AA") else "BB"),
    }
    # a token with the right key but another audience or issuer
    key = srv.layer.store.signing_key(kid)
    attacks["wrong_audience"] = jwt.encode(
        {**claims, "aud": "other"}, key.secret, algorithm="HS256", headers={"kid": kid}
    )
    attacks["wrong_issuer"] = jwt.encode(
        {**claims, "iss": "evil"}, key.secret, algorithm="HS256", headers={"kid": kid}
    )
    for name, tok in attacks.items():
        r = srv.client.get("/metrics", headers={"Authorization": f"Bearer {tok}"})
        assert r.status_code == 401, (name, r.status_code)
        _legit(srv, jpeg)
    reasons = [e["detail"].get("reason") for e in _denied_entries(srv, 401)]
    assert "token expired" in reasons and "token not valid yet" in reasons
    assert "token algorithm not accepted" in reasons
    # rotation: old tokens stay valid until their key is retired
    new = srv.layer.store.rotate_signing_key()
    fresh = _token(srv, "olga")
    assert jwt.get_unverified_header(fresh)["kid"] == new.kid
    assert srv.client.get("/metrics", headers=hdr).status_code == 200
    srv.layer.store.retire_signing_key(kid)
    assert srv.client.get("/metrics", headers=hdr).status_code == 401
    assert (
        srv.client.get("/metrics", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200
    )
    # a removed user's token stops working at once
    srv.layer.store.remove_user("olga")
    assert (
        srv.client.get("/metrics", headers={"Authorization": f"Bearer {fresh}"}).status_code == 401
    )
    _legit(srv, jpeg)
    _chain_ok(srv)


def test_replayed_totp_and_missing_mfa(srv: Secured, jpeg: bytes) -> None:
    r = srv.login("vic")
    assert r.status_code == 200
    code = srv.totp("vic")  # the code just used, same time step
    r = srv.login("vic", code=code)
    assert r.status_code == 401
    assert "invalid" in r.json()["error"]["message"]
    _legit(srv, jpeg)
    # peter has no TOTP enrolled: MFA is required, so no token
    assert srv.login("peter", code="123456").status_code == 401
    assert (
        srv.login("vic", code="000000" if srv.totp("vic") != "000000" else "111111").status_code
        == 401
    )
    reasons = [e["detail"].get("reason") for e in srv.entries() if e["action"] == "auth.token"]
    assert reasons[:3] == [None, "totp_replayed", "mfa_not_enrolled"]
    assert "bad_totp" in reasons
    ok = [e for e in srv.entries() if e["action"] == "auth.token" and e["outcome"] == "ok"]
    assert ok and ok[0]["actor"] == "user:vic"
    # the password and code never reach the log
    text = srv.audit_log.read_text()
    assert PASSWORD not in text and code not in text


def test_brute_force_hits_lockout(srv: Secured, jpeg: bytes) -> None:
    statuses = []
    for i in range(6):
        r = srv.login("alice", password=f"wrong password {i}")
        statuses.append(r.status_code)
        _legit(srv, jpeg)
    assert statuses[:3] == [401, 401, 401] and statuses[3:] == [429, 429, 429]
    r = srv.login("alice")  # even the right password is refused while locked
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert _token(srv, "olga")  # another account is not affected
    srv.mono.advance(31)  # lock-out over (30 s after the 3rd failure)
    assert srv.login("alice", password="still wrong").status_code == 401
    r = srv.login("alice")  # the next failure doubled the lock
    assert r.status_code == 429 and int(r.headers["retry-after"]) == 60
    srv.mono.advance(61)
    assert srv.login("alice").status_code == 200
    locked = [e for e in srv.entries() if e["detail"].get("reason") == "locked_out"]
    assert len(locked) == 5 and all(e["outcome"] == "denied" for e in locked)
    _chain_ok(srv)


def test_rate_limits_per_key_and_per_address(
    tmp_path: Path, tiny_bundle: Path, auth_db_template: Any, jpeg: bytes
) -> None:
    with secured_app(
        tiny_bundle, tmp_path, auth_db_template, predict_burst_per_key=3, auth_burst_per_ip=4
    ) as s:
        codes = [_call(s, "POST", PREDICT, jpeg, s.auth("attacker")).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        r = _call(s, "POST", PREDICT, jpeg, s.auth("attacker"))
        assert int(r.headers["retry-after"]) >= 1
        _legit(s, jpeg)  # the legitimate key has its own bucket
        s.mono.advance(1)  # refill (50/s)
        assert _call(s, "POST", PREDICT, jpeg, s.auth("attacker")).status_code == 200
        # login attempts per address
        codes = [s.login("vic", password="nope").status_code for _ in range(5)]
        assert codes[-1] == 429 and 429 not in codes[:3]
        assert len([e for e in s.entries() if e["detail"].get("status") == 429]) >= 4


def _bomb_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    # The start of an all-zero image: a few hundred bytes that would inflate to gigabytes.
    idat = zlib.compress(b"\0" * (width + 1) * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_refused_before_decoding(
    srv: Secured, jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cvdeploy.serve.inputs as inputs

    bomb = _bomb_png(60_000, 60_000)  # 3.6 gigapixels
    assert len(bomb) < 200_000
    decoded: list[int] = []
    real = inputs.decode_image_bytes

    def spy(data: bytes, *a: Any, **k: Any) -> Any:
        decoded.append(len(data))
        return real(data, *a, **k)

    monkeypatch.setattr(inputs, "decode_image_bytes", spy)
    r = srv.client.post(
        PREDICT, content=bomb, headers={"content-type": "image/png", **srv.auth("legit")}
    )
    assert r.status_code == 413, r.text
    assert decoded == []  # refused from the header, never decoded
    _legit(srv, jpeg)
    assert decoded  # the legitimate image was decoded
    assert (
        next(e for e in srv.entries() if e["detail"].get("status") == 413)["outcome"] == "refused"
    )


@pytest.mark.parametrize(
    "path",
    ["/v1/models/%2E%2E/predict", "/v1/models/..%2F..%2Fetc/predict", "/v1/models/a..b/predict"],
)
def test_model_name_traversal(srv: Secured, jpeg: bytes, path: str) -> None:
    r = srv.client.post(path, content=jpeg, headers={**RAW, **srv.auth("admin")})
    assert r.status_code in (400, 404), r.text
    assert srv.entries()[-1]["detail"]["status"] == r.status_code
    _legit(srv, jpeg)


def test_operator_reload_and_admin_key_management(srv: Secured, jpeg: bytes) -> None:
    assert (
        srv.client.post("/v1/models/tiny/reload", headers=srv.auth("operator")).status_code == 200
    )
    r = srv.client.post(
        "/v1/admin/keys",
        json={"label": "cam-1", "role": "predictor", "models": ["tiny"]},
        headers=srv.auth("admin"),
    )
    assert r.status_code == 200
    new_key, key_id = r.json()["key"], r.json()["info"]["id"]
    assert _call(srv, "POST", PREDICT, jpeg, {"X-API-Key": new_key}).status_code == 200
    listed = srv.client.get("/v1/admin/keys", headers=srv.auth("admin")).json()["keys"]
    assert new_key not in str(listed) and key_id in str(listed)
    assert (
        srv.client.delete(f"/v1/admin/keys/{key_id}", headers=srv.auth("admin")).status_code == 200
    )
    assert _call(srv, "POST", PREDICT, jpeg, {"X-API-Key": new_key}).status_code == 401
    admin_id = srv.keys["admin"].split("_")[1]
    actions = [(e["actor"], e["action"], e["target"]) for e in srv.entries()]
    assert (f"key:{admin_id}", "key.create", key_id) in actions
    assert (f"key:{admin_id}", "key.revoke", key_id) in actions
    assert any(a[1] == "model.reload" for a in actions)
    assert new_key.split("_", 2)[2] not in srv.audit_log.read_text()
    _chain_ok(srv)
