"""Shared serving state and the permission guard every route declares.

Every route but the probes depends on :func:`require` with a permission name; the check is
delegated to ``ServeState.authorize`` (default: allow everything), so a security layer
replaces one function instead of touching every route.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request

from cvdeploy.serve.config import ServeConfig
from cvdeploy.serve.inputs import PixelBudget
from cvdeploy.serve.logging_store import RequestLog
from cvdeploy.serve.models import ModelManager
from cvdeploy.serve.monitoring import LiveStats, ServeMetrics

if TYPE_CHECKING:
    from cvdeploy.serve.drift import DriftMonitor

__all__ = [
    "ERROR_BODY",
    "PAGE_HEADERS",
    "PUBLIC_ROUTES",
    "SCOPE",
    "Authorizer",
    "ServeState",
    "add_route",
    "allow_all",
    "error_responses",
    "method_label",
    "model_scope",
    "require",
]

PUBLIC_ROUTES = frozenset({"/healthz", "/readyz"})
"""Routes that declare no permission (probes)."""

Authorizer = Callable[[Request, str], Awaitable[None]]

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
"""HTTP methods that get their own metrics label and audit action; any other is ``OTHER``."""


def method_label(method: object) -> str:
    """A bounded name for an HTTP method: every unknown method is ``OTHER``, so anonymous
    requests cannot grow ``/metrics`` (and the server's memory) or the audit log's lines
    with new values."""
    return method if isinstance(method, str) and method in METHODS else "OTHER"


PAGE_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
"""Headers of every HTML page (no other site may frame it: no click-jacking)."""

ERROR_BODY = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}
"""The JSON schema of every error answer (``{"error": {"code", "message"}}``)."""

_STATUS_TEXT = {
    400: "bad input (image, parameters, JSON or model name)",
    401: "credentials missing or refused (secured servers)",
    403: "the role or model scope does not allow it (secured servers)",
    404: "unknown model or resource",
    405: "method not allowed",
    413: "body, image or request pixels over the limits",
    415: "not an image, or a media type the server does not take",
    422: "invalid parameter",
    429: "rate limit (Retry-After)",
    503: "overloaded, not ready, or the audit log cannot be written (Retry-After)",
    504: "the request deadline passed",
}
_GUARDED = (400, 401, 403, 413, 422, 429, 503)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses, each with the error body schema."""
    return {
        s: {
            "description": _STATUS_TEXT.get(s, "error"),
            "content": {"application/json": {"schema": ERROR_BODY}},
        }
        for s in statuses
    }


async def allow_all(request: Request, permission: str) -> None:
    """The default authorizer: every permission is granted (no authentication yet)."""


def require(permission: str) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency that checks ``permission`` with the app's authorizer.

    The authorizer is ``app.state.cvdeploy.authorize`` (default: allow everything), so a
    security layer replaces one function instead of touching every route.
    """

    async def dependency(request: Request) -> None:
        await state_of(request).authorize(request, permission)

    dependency.permission = permission  # type: ignore[attr-defined]
    return dependency


@dataclass(slots=True)
class ServeState:
    """Everything the routes share, stored on ``app.state.cvdeploy``."""

    config: ServeConfig
    metrics: ServeMetrics
    stats: LiveStats
    manager: ModelManager
    log: RequestLog | None
    authorize: Authorizer = allow_all
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    decode_budget: PixelBudget | None = None
    drift: DriftMonitor | None = None


SCOPE = "cvdeploy_scope"
"""``request.state`` attribute where an authorizer puts the caller's model scope."""


def model_scope(request: Request) -> frozenset[str] | None:
    """The models the caller may see (``None``: all), as set by the authorizer.

    Routes that list several models (``/v1/models``, ``/v1/stats``, ``/metrics``) show only
    these, so a key scoped to one model learns nothing about the others.
    """
    scope = getattr(request.state, SCOPE, None)
    return scope if isinstance(scope, frozenset) else None


def state_of(request: Request) -> ServeState:
    st: ServeState = request.app.state.cvdeploy
    return st


def add_route(
    app: FastAPI,
    path: str,
    endpoint: Callable[..., Any],
    *,
    methods: list[str],
    permission: str | None,
    openapi_extra: dict[str, Any] | None = None,
    **kwargs: Any,
) -> None:
    """Add a route that declares its permission (dependency + OpenAPI ``x-permission``)."""
    extra = dict(openapi_extra or {})
    deps = []
    responses: dict[int | str, dict[str, Any]] = dict(kwargs.pop("responses", None) or {})
    if permission is not None:
        extra["x-permission"] = permission
        deps.append(Depends(require(permission)))
        for status, doc in error_responses(*_GUARDED).items():
            responses.setdefault(status, doc)
    app.add_api_route(
        path,
        endpoint,
        methods=methods,
        dependencies=deps,
        openapi_extra=extra or None,
        responses=responses or None,
        **kwargs,
    )
