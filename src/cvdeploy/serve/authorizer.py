"""The server side of security: the authorizer, the auth routes and the audit middleware.

:func:`install_security` plugs a :class:`SecurityLayer` into an app made by
``cvdeploy.serve.app.create_app``: it replaces the app's authorizer (every route already
declares its permission), adds ``/v1/auth/*`` and ``/v1/admin/*`` routes, and wraps the app
in :class:`AuditMiddleware`, which writes (and fsyncs) one audit entry per request before
the response starts.

Credentials: ``Authorization: Bearer <access token | API key>`` or ``X-API-Key: <API key>``.
Browsers, which cannot add a header to a page load, log in at ``/login`` (password + one-time
code, ``POST /v1/auth/session``) and get an access token in an ``HttpOnly``, ``SameSite=Strict``
cookie (``Secure`` over HTTPS). The cookie is accepted only for ``GET``/``HEAD`` requests that
need a read-only permission (:data:`COOKIE_PERMISSIONS`: the docs, the dashboard and the data
they load), never for predictions or administration, so a forged cross-site request can neither
send it (``SameSite``) nor do anything with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cvdeploy.errors import ApiError, AuditUnavailable, UsageError
from cvdeploy.security import (
    KEY_PREFIX,
    AuditLog,
    AuditThrottle,
    Lockout,
    Principal,
    RateLimiter,
    SecurityConfig,
    SecurityStore,
    TokenError,
    TokenService,
    is_allowed,
    validate_name,
)
from cvdeploy.security import load_audit_key as load_key
from cvdeploy.serve.state import (
    PAGE_HEADERS,
    PUBLIC_ROUTES,
    SCOPE,
    add_route,
    error_responses,
    method_label,
)

__all__ = ["AuditMiddleware", "SecurityLayer", "install_security"]

_ACTOR = "cvdeploy_actor"
_NOTE = "cvdeploy_audit"
_QUIET = frozenset({"read", "metrics", "docs", "whoami", "login-page"})
SESSION_COOKIE = "cvdeploy_session"
"""The browser session cookie (an access token, ``HttpOnly``, ``SameSite=Strict``)."""
COOKIE_PERMISSIONS = frozenset({"read", "metrics", "docs", "whoami"})
"""The only permissions a session cookie can exercise, and only on ``GET``/``HEAD``."""
PAGES = frozenset({"/dashboard", "/docs"})
"""Pages a browser without a session is sent to ``/login`` from (``303``)."""
ANONYMOUS = frozenset({"login", "login-page"})
"""Permissions that need no credentials (``login`` is rate-limited per address)."""
_SAFE_NEXT = re.compile(r"^/(?![/\\])[A-Za-z0-9_./-]{0,200}$")
_ACTIONS = {"predict": "predict", "reload": "model.reload", "login": "auth.token"}


class TokenRequest(BaseModel):
    """Body of ``POST /v1/auth/token``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    password: SecretStr = Field(max_length=1024)
    totp: SecretStr | None = Field(None, max_length=16)


class KeyRequest(BaseModel):
    """Body of ``POST /v1/admin/keys``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    role: Literal["viewer", "predictor", "operator", "admin"]
    models: list[str] | None = Field(None, max_length=64)
    expires_in_s: float | None = Field(None, gt=0, le=10 * 365 * 86_400)


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def _too_many(message: str, wait: float) -> ApiError:
    return ApiError(429, "rate_limited", message, headers={"Retry-After": str(math.ceil(wait))})


class SecurityLayer:
    """Authentication, authorization, limits and audit for one app.

    Args:
        config: The security options.
        clock: Wall-clock seconds for TOTP codes and API-key expiry (tokens use the
            real time: their ``exp``/``nbf`` are checked by PyJWT against it).
        monotonic: Monotonic seconds (rate limits, lock-outs).
    """

    def __init__(
        self,
        config: SecurityConfig,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock
        self.monotonic = monotonic
        self.audit: AuditLog | None = None
        if config.audit_log is not None and config.audit_key_file is not None:
            self.audit = AuditLog(
                config.audit_log,
                load_key(config.audit_key_file),
                max_bytes=config.audit_max_bytes,
                max_files=config.audit_max_files,
                checkpoint_path=config.audit_checkpoint_file,
                checkpoint_every_s=config.audit_checkpoint_every_s,
            )
        self.store = SecurityStore(config.auth_db, audit=self.audit, actor="server")
        self.tokens = TokenService(
            keys=self.store.signing_key,
            active=self.store.active_signing_key,
            issuer=config.jwt_issuer,
            audience=config.jwt_audience,
            ttl_s=config.token_ttl_s,
        )
        c = config
        self.per_key = RateLimiter(rate=c.predict_rate_per_key, burst=c.predict_burst_per_key)
        self.per_ip = RateLimiter(rate=c.predict_rate_per_ip, burst=c.predict_burst_per_ip)
        self.auth_ip = RateLimiter(rate=c.auth_rate_per_ip, burst=c.auth_burst_per_ip)
        self.anon_ip = RateLimiter(rate=c.anonymous_rate_per_ip, burst=c.anonymous_burst_per_ip)
        self.throttle = AuditThrottle(
            rate=c.audit_anonymous_rate,
            burst=c.audit_anonymous_burst,
            total_rate=c.audit_anonymous_total_rate,
            total_burst=c.audit_anonymous_total_burst,
            flush_s=c.audit_summary_s,
        )
        self.lockout = Lockout(
            after=c.lockout_after, base_s=c.lockout_base_s, max_s=c.lockout_max_s
        )

    # authorization ----------------------------------------------------------------------
    async def authorize(self, request: Request, permission: str) -> None:
        """The app's authorizer: validate the model name, authenticate, check role, limit.

        Requests without valid credentials draw on their own per-address budget
        (``anonymous_rate_per_ip``: 401, then 429); authenticated predictions on the
        per-credential and the authenticated per-address budgets. Anonymous traffic from
        an address therefore never uses up a client's budget at that address.

        Raises:
            ApiError: 400 bad model name, 401 no or bad credentials, 403 role or model
                scope, 429 rate limit.
        """
        name = request.path_params.get("name")
        if name is not None:
            try:
                validate_name(str(name), "model name")
            except UsageError as exc:
                raise ApiError(400, "invalid_model_name", exc.message) from None
        client = request.client.host if request.client else "unknown"
        if permission in ANONYMOUS:
            if permission == "login":
                self._limit(self.auth_ip, client, "too many login attempts from this address")
            return
        try:
            principal = await self.authenticate(request, permission)
        except ApiError as exc:
            if exc.http_status == 401:
                self._limit(self.anon_ip, client, "too many requests without valid credentials")
            raise
        request.state.cvdeploy_actor = principal.label
        setattr(request.state, SCOPE, principal.models)
        if not is_allowed(principal, permission, None if name is None else str(name)):
            raise ApiError(
                403,
                "forbidden",
                f"role {principal.role!r} does not grant {permission!r}"
                + (f" on model {name!r}" if name is not None else ""),
            )
        if permission == "predict":
            self._limit(self.per_key, principal.label, "too many requests for this credential")
            self._limit(self.per_ip, client, "too many requests from this address")

    def _limit(self, limiter: RateLimiter, key: str, message: str) -> None:
        wait = limiter.take(key, self.monotonic())
        if wait > 0:
            raise _too_many(message, wait)

    async def authenticate(self, request: Request, permission: str | None = None) -> Principal:
        """The caller, from an API key or an access token (header, or session cookie).

        Args:
            request: The request.
            permission: What the request needs: the session cookie counts only for
                :data:`COOKIE_PERMISSIONS` on ``GET``/``HEAD``.

        Raises:
            ApiError: 401 (the reason goes to the audit log, not to the client), or 303 to
                ``/login`` for a browser loading a page without a valid session.
        """
        cred = request.headers.get("x-api-key")
        if cred is None:
            scheme, _, value = request.headers.get("authorization", "").partition(" ")
            cred = value.strip() if scheme.lower() == "bearer" and value.strip() else None
        from_cookie = False
        if (
            cred is None
            and permission in COOKIE_PERMISSIONS
            and request.method in ("GET", "HEAD")
            and request.cookies.get(SESSION_COOKIE)
        ):
            cred, from_cookie = request.cookies[SESSION_COOKIE], True
        if cred is None:
            self._to_login(request)
            raise _unauthorized("credentials required: Authorization: Bearer <token or API key>")
        if from_cookie:  # only access tokens issued by /v1/auth/session live in the cookie
            try:
                claims = self.tokens.verify_claims(cred)
            except TokenError as exc:
                self._note(request, reason=f"session cookie: {exc}")
                self._to_login(request)
                raise _unauthorized(f"session refused: {exc}; log in again at /login") from None
            return await self._user(request, claims)
        if cred.startswith(KEY_PREFIX + "_"):
            principal, reason = await asyncio.to_thread(
                self.store.check_key, cred, now=self.clock()
            )
            if principal is None:
                self._note(request, reason=f"api_key_{reason}")
                raise _unauthorized("invalid, expired or revoked API key")
            return principal
        try:
            claims = self.tokens.verify_claims(cred)
        except TokenError as exc:
            self._note(request, reason=str(exc))
            raise _unauthorized(f"access token refused: {exc}") from None
        return await self._user(request, claims)

    async def _user(self, request: Request, claims: dict[str, Any]) -> Principal:
        """The account a token was issued to: bound to its id, not only its name."""
        uid = claims.get("uid")
        if not isinstance(uid, str):
            self._note(request, reason="token without account id")
            raise _unauthorized("access token refused: log in again")
        user = await asyncio.to_thread(self.store.principal_for_user, str(claims["sub"]), uid)
        if user is None:
            self._note(request, reason="token user removed")
            raise _unauthorized("access token refused: unknown user")
        return user

    @staticmethod
    def _to_login(request: Request) -> None:
        """Send a browser loading a page (``Accept: text/html``) to the login page."""
        path = request.url.path
        accept = request.headers.get("accept", "")
        if request.method == "GET" and path in PAGES and "text/html" in accept:
            raise ApiError(
                303,
                "login_required",
                "log in first: this page needs a session (or an API key header)",
                headers={"Location": f"/login?next={path}"},
            )

    @staticmethod
    def _note(request: Request, **detail: Any) -> None:
        note = getattr(request.state, _NOTE, None) or {}
        note.update(detail)
        setattr(request.state, _NOTE, note)

    # login --------------------------------------------------------------------------------
    async def login(self, request: Request, body: TokenRequest) -> dict[str, Any]:
        """Password + TOTP -> access token, with lock-out after repeated failures."""
        user = body.username
        request.state.cvdeploy_actor = f"user:{user}"
        locked = self.lockout.locked_for(user, self.monotonic())
        if locked > 0:
            self._note(request, reason="locked_out")
            raise _too_many("too many failed logins: account locked, retry later", locked)
        principal, reason = await asyncio.to_thread(
            self.store.check_login,
            user,
            body.password.get_secret_value(),
            None if body.totp is None else body.totp.get_secret_value(),
            now=self.clock(),
            require_mfa=self.config.require_mfa,
        )
        if principal is None:
            wait = self.lockout.failure(user, self.monotonic())
            self._note(request, reason=reason, locked_for_s=wait)
            raise _unauthorized("invalid user name, password or one-time code")
        self.lockout.success(user)
        token, ttl = self.tokens.issue(principal.id, uid=principal.uid)
        return {"access_token": token, "token_type": "bearer", "expires_in": ttl}

    # audit ----------------------------------------------------------------------------------
    def record_request(self, scope: Scope, status: int, headers: dict[str, str]) -> None:
        """Write the audit entry of one HTTP request (called before its response starts)."""
        if self.audit is None:
            return
        route = scope.get("route")
        path = getattr(route, "path", None) or "unmatched"
        extra = getattr(route, "openapi_extra", None) or {}
        if path in PUBLIC_ROUTES or extra.get("x-probe"):  # probes (a platform's too)
            return
        permission = extra.get("x-permission")
        if status < 400 and permission in _QUIET and not self.config.audit_reads:
            return
        state = scope.get("state") or {}
        params = scope.get("path_params") or {}
        method = method_label(scope.get("cvdeploy_method", scope.get("method")))
        client = scope.get("client")
        address = str(client[0]) if client else "unknown"
        actor = str(state.get(_ACTOR, "anonymous"))[:80]
        now = self.monotonic()
        for summary in self.throttle.due(now):
            self._summary(summary)
        if actor == "anonymous" and status >= 400 and not self.throttle.admit(address, now):
            self.throttle.hold(address, status, now)  # counted, written as a summary later
            return
        outcome = (
            "ok"
            if status < 400
            else "denied"
            if status in (401, 403, 429)
            else ("refused" if status < 500 else "error")
        )
        detail: dict[str, Any] = {
            "method": method,
            "route": path,
            "status": status,
            "client": client[0] if client else None,
            "permission": permission,
        }
        if method == "OTHER":
            detail["raw_method"] = str(scope.get("method", "?"))[:32]
        if "x-model-version" in headers:
            detail["version"] = headers["x-model-version"]
        if method == "POST" and permission == "predict":
            detail["request_bytes"] = _content_length(scope)
        detail.update(state.get(_NOTE) or {})
        self.audit.record(
            actor=actor,
            action=_ACTIONS.get(str(permission), f"{method} {path}"),
            outcome=outcome,
            target=str(params.get("name") or params.get("key_id") or "") or None,
            **detail,
        )

    def _summary(self, summary: dict[str, Any]) -> None:
        if self.audit is not None:
            self.audit.record(
                actor="anonymous",
                action="audit.suppressed",
                outcome="denied",
                reason="refused anonymous requests over the audit rate, counted",
                **summary,
            )

    def flush(self) -> None:
        """Write the summaries of every held-back entry (at shutdown)."""
        for summary in self.throttle.due(self.monotonic(), everything=True):
            self._summary(summary)


def _content_length(scope: Scope) -> int | None:
    for k, v in scope.get("headers") or []:
        if k == b"content-length" and v.isdigit():
            return int(v)
    return None


class AuditMiddleware:
    """Records every request (but probes and quiet reads) before its response starts."""

    def __init__(self, app: ASGIApp, *, layer: SecurityLayer) -> None:
        self.app = app
        self.layer = layer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and self.layer.audit is not None:
            await self.app(scope, receive, self._flush_at_shutdown(send))
            return
        if scope["type"] != "http" or self.layer.audit is None:
            await self.app(scope, receive, send)
            return
        recorded = False
        refused = False  # the audit log could not be written: answered 503 instead

        async def send_after_audit(message: Message) -> None:
            nonlocal recorded, refused
            if refused:
                return
            if message["type"] == "http.response.start" and not recorded:
                recorded = True
                headers = {
                    k.decode("latin-1"): v.decode("latin-1") for k, v in message.get("headers", [])
                }
                try:
                    await asyncio.to_thread(
                        self.layer.record_request, scope, int(message["status"]), headers
                    )
                except AuditUnavailable as exc:
                    refused = True  # never acknowledge an action unrecorded
                    await _send_error(send, exc)
                    return
            await send(message)

        try:
            await self.app(scope, receive, send_after_audit)
        except Exception:
            if not recorded:
                recorded = True
                with contextlib.suppress(AuditUnavailable):
                    await asyncio.to_thread(self.layer.record_request, scope, 500, {})
            raise

    def _flush_at_shutdown(self, send: Send) -> Send:
        async def flushing(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.layer.flush)
            await send(message)

        return flushing


async def _send_error(send: Send, exc: AuditUnavailable) -> None:
    import json

    body = json.dumps({"error": {"code": exc.code, "message": exc.message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": exc.http_status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"5"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def install_security(app: FastAPI, config: SecurityConfig) -> SecurityLayer:
    """Secure an app from ``create_app``: authorizer, auth/admin routes, audit middleware."""
    layer = SecurityLayer(config)
    app.state.cvdeploy.authorize = layer.authorize
    app.state.cvdeploy_security = layer
    _add_routes(app, layer)
    _secure_openapi(app)
    app.add_middleware(AuditMiddleware, layer=layer)
    return layer


def _secure_openapi(app: FastAPI) -> None:
    """Declare the bearer scheme in the OpenAPI schema, required by every guarded operation.

    Swagger UI (``/docs``) then shows its *Authorize* button: paste an API key or an access
    token there and *Try it out* sends it as ``Authorization: Bearer``.
    """
    base = app.openapi

    def openapi() -> dict[str, Any]:
        schema = base()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (cvd_<id>_<secret>) or an access token from "
            "POST /v1/auth/token",
        }
        for ops in schema.get("paths", {}).values():
            for op in ops.values():
                perm = op.get("x-permission") if isinstance(op, dict) else None
                if perm and perm not in ANONYMOUS:
                    op["security"] = [{"bearer": []}]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_routes(app: FastAPI, layer: SecurityLayer) -> None:
    async def token(request: Request, body: TokenRequest) -> dict[str, Any]:
        return await layer.login(request, body)

    async def whoami(request: Request) -> dict[str, Any]:
        principal = await layer.authenticate(request, "whoami")
        return {
            "id": principal.label,
            "role": principal.role,
            "models": None if principal.models is None else sorted(principal.models),
        }

    def admin_store(request: Request) -> SecurityStore:
        return layer.store.as_actor(str(getattr(request.state, _ACTOR, "server")))

    async def list_users(request: Request) -> dict[str, Any]:
        users = await asyncio.to_thread(layer.store.users)
        return {"users": [_user(u) for u in users]}

    async def list_keys(request: Request) -> dict[str, Any]:
        keys = await asyncio.to_thread(layer.store.keys)
        now = layer.clock()
        return {"keys": [k.to_dict(now) for k in keys]}

    async def create_key(request: Request, body: KeyRequest) -> dict[str, Any]:
        try:
            full, info = await asyncio.to_thread(
                admin_store(request).create_key,
                body.label,
                role=body.role,
                models=body.models,
                expires_in_s=body.expires_in_s,
            )
        except UsageError as exc:
            raise ApiError(400, "bad_request", exc.message) from None
        return {"key": full, "info": info.to_dict(layer.clock()), "note": "shown once"}

    async def revoke_key(request: Request, key_id: str) -> dict[str, Any]:
        try:
            info = await asyncio.to_thread(admin_store(request).revoke_key, key_id)
        except UsageError as exc:
            raise ApiError(404, "unknown_key", exc.message) from None
        return {"info": info.to_dict(layer.clock())}

    async def session(request: Request, body: TokenRequest) -> Response:
        out = await layer.login(request, body)
        resp = JSONResponse({"session": "cookie", "expires_in": out["expires_in"]})
        resp.set_cookie(
            SESSION_COOKIE,
            out["access_token"],
            max_age=int(out["expires_in"]),
            **_cookie_attributes(request),
        )
        return resp

    async def logout(request: Request) -> Response:
        resp = JSONResponse({"session": None})
        resp.delete_cookie(SESSION_COOKIE, **_cookie_attributes(request))
        return resp

    async def login_page(request: Request, next: str = "/dashboard") -> HTMLResponse:
        return HTMLResponse(login_html(next), headers=PAGE_HEADERS)

    add_route(app, "/v1/auth/token", token, methods=["POST"], permission="login")
    add_route(app, "/v1/auth/session", session, methods=["POST"], permission="login")
    add_route(app, "/v1/auth/logout", logout, methods=["POST"], permission="login")
    add_route(
        app,
        "/login",
        login_page,
        methods=["GET"],
        permission="login-page",
        include_in_schema=False,
    )
    add_route(app, "/v1/auth/whoami", whoami, methods=["GET"], permission="whoami")
    add_route(app, "/v1/admin/users", list_users, methods=["GET"], permission="users")
    add_route(
        app,
        "/v1/admin/keys",
        list_keys,
        methods=["GET"],
        permission="users",
        operation_id="list_keys",
    )
    add_route(
        app,
        "/v1/admin/keys",
        create_key,
        methods=["POST"],
        permission="users",
        operation_id="create_key",
        # an OpenAPI link: a created key's id revokes it (schemathesis follows it, stateful)
        responses={
            200: {
                "description": "the new key (shown once) and its public information",
                "links": {
                    "RevokeKey": {
                        "operationId": "revoke_key",
                        "parameters": {"key_id": "$response.body#/info/id"},
                    }
                },
            }
        },
    )
    add_route(
        app,
        "/v1/admin/keys/{key_id}",
        revoke_key,
        methods=["DELETE"],
        permission="users",
        operation_id="revoke_key",
        responses=error_responses(404),
    )


def _cookie_attributes(request: Request) -> dict[str, Any]:
    """The session cookie's attributes, the same when it is set and when it is cleared."""
    return {
        "path": "/",
        "secure": request.url.scheme == "https",
        "httponly": True,
        "samesite": "strict",
    }


def safe_next(target: str) -> str:
    """Where the login page goes afterwards: a local path, else ``/dashboard``.

    Only ``/`` followed by letters, digits and ``_ . / -`` is kept (no scheme, no ``//host``,
    no backslash, no query), so the page can never send the browser to another site.
    """
    return target if _SAFE_NEXT.fullmatch(target) else "/dashboard"


def login_html(target: str) -> str:
    """The login page: one self-contained form (no external resource)."""
    from cvdeploy.serve.login_page import LOGIN_HTML

    return LOGIN_HTML.replace("__NEXT__", safe_next(target))


def _user(u: Any) -> dict[str, Any]:
    return {"name": u.name, "role": u.role, "models": u.models, "mfa": u.mfa, "created": u.created}
