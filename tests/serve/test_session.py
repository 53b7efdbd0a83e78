"""Browser sessions: /login, the HttpOnly session cookie, and what it can never do."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from cvdeploy.serve.authorizer import SESSION_COOKIE, login_html, safe_next
from tests.serve.secured import PASSWORD, RAW, Secured, secured_app

PREDICT = "/v1/models/tiny/predict"
HTML = {"accept": "text/html,application/xhtml+xml"}
COOKIE_PAGES = (
    "/docs",
    "/docs/assets/swagger-ui.css",
    "/openapi.json",
    "/dashboard",
    "/v1/stats",
    "/v1/models",
    "/v1/models/tiny",
    "/v1/auth/whoami",
)


@pytest.fixture
def srv(tmp_path: Path, tiny_bundle: Path, auth_db_template: Any) -> Any:
    with secured_app(tiny_bundle, tmp_path, auth_db_template, lockout_after=3) as s:
        yield s


def _session(s: Secured, user: str, *, password: str = PASSWORD) -> Any:
    return s.login(user, password=password, endpoint="/v1/auth/session")


def _get_with(s: Secured, value: str, path: str, **kw: Any) -> Any:
    """GET ``path`` with ``value`` as the only session cookie."""
    s.client.cookies.clear()
    s.client.cookies.set(SESSION_COOKIE, value)
    return s.client.get(path, **kw)


def _set_cookie(r: Any) -> str:
    return str(r.headers.get("set-cookie", ""))


def test_session_cookie_is_httponly_strict_and_not_in_the_body(srv: Secured) -> None:
    r = _session(srv, "olga")
    assert r.status_code == 200, r.text
    cookie = _set_cookie(r).lower()
    assert cookie.startswith(SESSION_COOKIE + "=")
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert "max-age=900" in cookie
    assert "secure" not in cookie.replace("samesite", "")  # plain http (TestClient)
    body = r.json()
    assert body["session"] == "cookie" and "access_token" not in body
    assert srv.client.cookies.get(SESSION_COOKIE)


def test_cookie_opens_the_pages_and_their_data(srv: Secured) -> None:
    assert _session(srv, "olga").status_code == 200  # operator: docs + metrics + read
    for path in COOKIE_PAGES:
        r = srv.client.get(path, headers=HTML)
        assert r.status_code == 200, (path, r.status_code, r.text[:200])
    assert srv.client.get("/v1/auth/whoami").json()["id"] == "user:olga"


def test_cookie_keeps_the_role(srv: Secured) -> None:
    assert _session(srv, "vic").status_code == 200  # viewer: read + docs, no metrics
    assert srv.client.get("/docs").status_code == 200
    r = srv.client.get("/dashboard")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


def test_cookie_never_predicts_administers_or_reloads(srv: Secured, jpeg: bytes) -> None:
    """The cookie is a read-only browser credential: no POST, no admin, even for an admin."""
    assert _session(srv, "alice").status_code == 200  # admin
    assert srv.client.post(PREDICT, content=jpeg, headers=RAW).status_code == 401
    assert srv.client.post("/v1/models/tiny/reload").status_code == 401
    assert srv.client.get("/v1/admin/users").status_code == 401
    assert srv.client.get("/v1/admin/keys").status_code == 401
    r = srv.client.post("/v1/admin/keys", json={"label": "x", "role": "admin"})
    assert r.status_code == 401
    # the same token as a header does all of that: the restriction is the cookie's
    token = srv.client.cookies[SESSION_COOKIE]
    r = srv.client.get("/v1/admin/users", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200


def test_forged_expired_and_key_cookies_are_refused(srv: Secured) -> None:
    assert _session(srv, "olga").status_code == 200
    good = srv.client.cookies[SESSION_COOKIE]
    claims = jwt.decode(good, options={"verify_signature": False})
    header = jwt.get_unverified_header(good)
    forged = {
        "wrong key": jwt.encode(claims, "x" * 32, algorithm="HS256", headers=header),
        "alg none": jwt.encode(claims, None, algorithm="none", headers={"kid": header["kid"]}),
        "tampered": good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB"),
        "an API key": srv.keys["admin"],
    }
    for what, value in forged.items():
        r = _get_with(srv, value, "/v1/stats")
        assert r.status_code == 401, (what, r.status_code)
    # expired: the server's signing key, a lifetime in the past
    key_id = header["kid"]
    sk = srv.layer.store.signing_key(key_id)
    assert sk is not None
    secret = sk.secret
    old = {**claims, "iat": int(time.time()) - 3600, "exp": int(time.time()) - 60}
    expired = jwt.encode(old, secret, algorithm="HS256", headers=header)
    r = _get_with(srv, expired, "/v1/stats")
    assert r.status_code == 401 and "log in again" in r.json()["error"]["message"]
    r = _get_with(srv, expired, "/dashboard", headers=HTML, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/dashboard"


def test_pages_send_browsers_to_login_and_api_clients_get_401(srv: Secured) -> None:
    for page in ("/dashboard", "/docs"):
        r = srv.client.get(page, headers=HTML, follow_redirects=False)
        assert r.status_code == 303, page
        assert r.headers["location"] == f"/login?next={page}"
        r = srv.client.get(page, follow_redirects=False)  # no Accept: text/html
        assert r.status_code == 401
    r = srv.client.get("/v1/stats", headers=HTML, follow_redirects=False)
    assert r.status_code == 401  # data routes never redirect


def test_login_page_is_self_contained_and_goes_only_to_local_paths(srv: Secured) -> None:
    r = srv.client.get("/login?next=/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'const NEXT = "/docs";' in r.text
    assert "http://" not in r.text and "https://" not in r.text and "src=" not in r.text
    for evil in (
        "//evil.example/x",
        "https://evil.example",
        "/\\evil.example",
        "javascript:alert(1)",
        '/x";alert(1);"',
        "/x</script><script>alert(1)",
        "/docs?next=//evil",
    ):
        assert safe_next(evil) == "/dashboard", evil
        page = login_html(evil)
        assert 'const NEXT = "/dashboard";' in page and "evil" not in page and "alert(" not in page
    assert safe_next("/docs") == "/docs" and safe_next("/dashboard") == "/dashboard"


def test_bad_password_sets_no_cookie_and_locks_out(srv: Secured) -> None:
    for _ in range(3):
        r = _session(srv, "olga", password="wrong")
        assert r.status_code == 401 and SESSION_COOKIE not in _set_cookie(r)
    r = _session(srv, "olga")  # the right password, but locked out now
    assert r.status_code == 429 and not srv.client.cookies.get(SESSION_COOKIE)


def test_logout_clears_the_cookie(srv: Secured) -> None:
    assert _session(srv, "olga").status_code == 200
    r = srv.client.post("/v1/auth/logout")
    assert r.status_code == 200
    assert SESSION_COOKIE + '=""' in _set_cookie(r) or "max-age=0" in _set_cookie(r).lower()
    assert srv.client.get("/v1/stats").status_code == 401


def test_cookie_is_secure_over_https(srv: Secured) -> None:
    srv.wall.advance(30)
    r = srv.client.post(
        "https://testserver/v1/auth/session",
        json={"username": "olga", "password": PASSWORD, "totp": srv.totp("olga")},
    )
    assert r.status_code == 200
    assert "; secure" in _set_cookie(r).lower()


def test_openapi_declares_the_bearer_scheme_for_guarded_operations(srv: Secured) -> None:
    """Swagger UI's Authorize button: every guarded operation requires the bearer scheme."""
    schema = srv.client.get("/openapi.json", headers=srv.auth("viewer")).json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    ops = {(m.upper(), p): op for p, d in schema["paths"].items() for m, op in d.items()}
    assert ops[("POST", "/v1/models/{name}/predict")]["security"] == [{"bearer": []}]
    assert ops[("GET", "/v1/admin/users")]["security"] == [{"bearer": []}]
    assert "security" not in ops[("POST", "/v1/auth/token")]
    assert "security" not in ops[("POST", "/v1/auth/session")]


def test_openapi_without_security_has_no_scheme(tiny_bundle: Path) -> None:
    from fastapi.testclient import TestClient

    from cvdeploy.serve.app import create_app
    from cvdeploy.serve.config import ServeConfig

    with TestClient(create_app(ServeConfig(source=tiny_bundle, warmup_runs=0))) as client:
        schema = client.get("/openapi.json").json()
    assert "securitySchemes" not in schema.get("components", {})
