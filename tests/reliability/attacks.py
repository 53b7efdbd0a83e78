"""The attack catalogue: what the adversarial run tried against a secured server, replayable.

:func:`run_attacks` sends every attack to a secured app (a :class:`tests.serve.secured.Secured`)
and counts, per kind, how many were tried and how many were refused with the expected
status. Used by ``tests/reliability/test_attack_catalogue.py`` and by the reliability figures
(``benchmarks/reliability.py attacks``).
"""

from __future__ import annotations

import io
import random
import string
from dataclasses import dataclass, field
from typing import Any

import jwt

PREDICT = "/v1/models/tiny/predict"
RAW = {"content-type": "image/jpeg"}
ROUTES = [
    ("POST", PREDICT),
    ("GET", "/v1/models"),
    ("GET", "/metrics"),
    ("POST", "/v1/models/tiny/reload"),
    ("GET", "/v1/admin/users"),
    ("POST", "/v1/admin/keys"),
]
NEEDS = {
    PREDICT: "predict",
    "/v1/models": "read",
    "/metrics": "metrics",
    "/v1/models/tiny/reload": "reload",
    "/v1/admin/users": "users",
    "/v1/admin/keys": "users",
}


@dataclass
class Tally:
    """Attacks of one kind: tried, refused as expected, and what got through."""

    tried: int = 0
    refused: int = 0
    through: list[str] = field(default_factory=list)

    def add(self, ok: bool, what: str) -> None:
        self.tried += 1
        if ok:
            self.refused += 1
        elif len(self.through) < 10:
            self.through.append(what)


def _send(s: Any, method: str, path: str, jpeg: bytes, headers: dict[str, str]) -> Any:
    if path == PREDICT:
        return s.client.request(method, path, content=jpeg, headers={**RAW, **headers})
    if path == "/v1/admin/keys" and method == "POST":
        return s.client.post(path, json={"label": "x", "role": "admin"}, headers=headers)
    return s.client.request(method, path, headers=headers)


def _png(w: int, h: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (w + 1) * 16, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def run_attacks(s: Any, jpeg: bytes, *, seed: int = 19) -> dict[str, Tally]:
    """Every attack of the catalogue against ``s``; returns the tally per kind."""
    rng = random.Random(seed)
    out: dict[str, Tally] = {}

    def tally(kind: str) -> Tally:
        return out.setdefault(kind, Tally())

    # bad credentials on every route ----------------------------------------------------------
    good = s.login("olga").json()["access_token"]
    claims = jwt.decode(good, options={"verify_signature": False})
    kid = jwt.get_unverified_header(good)["kid"]
    secret = s.layer.store.signing_key(kid).secret
    tokens = {
        "forged": jwt.encode(claims, b"x" * 32, algorithm="HS256", headers={"kid": kid}),
        "alg_none": jwt.encode(claims, None, algorithm="none", headers={"kid": kid}),
        "unknown_kid": jwt.encode(claims, b"x" * 32, algorithm="HS256", headers={"kid": "zz"}),
        "expired": s.layer.tokens.issue("olga", now=claims["iat"] - 10_000)[0],
        "not_yet_valid": s.layer.tokens.issue("olga", now=claims["iat"] + 10_000)[0],
        "wrong_audience": jwt.encode(
            {**claims, "aud": "x"}, secret, algorithm="HS256", headers={"kid": kid}
        ),
        "wrong_issuer": jwt.encode(
            {**claims, "iss": "x"}, secret, algorithm="HS256", headers={"kid": kid}
        ),
        "no_account_id": jwt.encode(
            {k: v for k, v in claims.items() if k != "uid"},
            secret,
            algorithm="HS256",
            headers={"kid": kid},
        ),
        "tampered": good[:-2] + ("AA" if not good.endswith("AA") else "BB"),
        "garbage": "not.a.token",
    }
    key = s.keys["legit"]
    keys = {
        "revoked_key": s.keys["revoked"],
        "forged_key_secret": key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB"),
        "malformed_key": "cvd_zz_" + "A" * 10,
        "unknown_key": "cvd_000000000000_" + "A" * 43,
    }
    for name, cred in {**tokens, **keys}.items():
        for method, path in ROUTES:
            r = _send(s, method, path, jpeg, {"Authorization": f"Bearer {cred}"})
            tally("bad credentials").add(r.status_code in (401, 429), f"{name} {path}")
    s.wall.advance(120)  # past the 60 s expiry of the expiring key
    for method, path in ROUTES:
        r = _send(s, method, path, jpeg, s.auth("expiring"))
        tally("bad credentials").add(r.status_code in (401, 429), f"expired key {path}")
    for method, path in ROUTES:  # and no credentials at all
        r = _send(s, method, path, jpeg, {})
        tally("no credentials").add(r.status_code in (401, 429), path)
    # retired signing key
    s.layer.store.rotate_signing_key()
    s.layer.store.retire_signing_key(kid)
    r = s.client.get("/metrics", headers={"Authorization": f"Bearer {good}"})
    tally("bad credentials").add(r.status_code == 401, "retired kid")

    # roles and scopes ----------------------------------------------------------------------
    from cvdeploy.security.rbac import ROLES

    for role in ("viewer", "predictor", "operator"):
        for method, path in ROUTES:
            if NEEDS[path] in ROLES[role]:
                continue
            r = _send(s, method, path, jpeg, s.auth(role))
            tally("lower role on a higher route").add(r.status_code == 403, f"{role} {path}")
    for method, path in (("POST", PREDICT), ("GET", "/v1/models/tiny")):
        r = _send(s, method, path, jpeg, s.auth("other_model"))
        tally("another model's scope").add(r.status_code == 403, path)

    # logins: replay, brute force ---------------------------------------------------------
    assert s.login("vic").status_code == 200
    r = s.login("vic", code=s.totp("vic"))
    tally("TOTP replay").add(r.status_code == 401, "same code twice")
    for i in range(8):
        r = s.login("alice", password=f"wrong password {i}")
        tally("password guessing").add(r.status_code in (401, 429), f"guess {i}")

    # hostile input ---------------------------------------------------------------------------
    legit = {**RAW, **s.auth("legit")}
    json_hdr = {**s.auth("legit"), "content-type": "application/json"}
    hostile = [
        (
            "decompression bomb",
            {
                "content": _png(60_000, 60_000),
                "headers": {**s.auth("legit"), "content-type": "image/png"},
            },
            {413},
        ),
        (
            "nested JSON",
            {"content": b"[" * 100_000 + b"]" * 100_000, "headers": json_hdr},
            {400, 413},
        ),
        (
            "huge JSON number",
            {"content": b'{"images": [' + b"9" * 5000 + b"]}", "headers": json_hdr},
            {400},
        ),
        ("not an image", {"content": b"plain text", "headers": legit}, {415}),
        ("truncated image", {"content": jpeg[: len(jpeg) // 2], "headers": legit}, {400}),
    ]
    for kind, kw, expected in hostile:
        r = s.client.post(PREDICT, **kw)
        tally("hostile input").add(r.status_code in expected, kind)
    for path in (
        "/v1/models/%2E%2E/predict",
        "/v1/models/..%2F..%2Fetc/predict",
        "/v1/models/a..b/predict",
    ):
        r = s.client.post(path, content=jpeg, headers={**RAW, **s.auth("admin")})
        tally("path traversal").add(r.status_code in (400, 404), path)
    for _ in range(20):
        method = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(10, 40_000)))
        r = s.client.request(method, "/v1/models")
        tally("invalid methods").add(r.status_code == 405, method[:10])
    r = s.client.post(
        "/v1/auth/token",
        content=b"{" + b" " * 300_000 + b"}",
        headers={"content-type": "application/json"},
    )
    tally("hostile input").add(r.status_code == 413, "large login body")

    # a request of many large images (memory amplification) --------------------------------
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((6300, 6300), np.uint8)).save(buf, format="PNG")
    files = [("files", (f"{i}.png", buf.getvalue(), "image/png")) for i in range(32)]
    r = s.client.post(PREDICT, files=files, headers=s.auth("legit"))
    tally("memory amplification").add(r.status_code == 413, "32 x 6300x6300 PNG")
    return out
