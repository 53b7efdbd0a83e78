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
from cvdeploy.serve.logging_store import RequestLog
from cvdeploy.serve.models import ModelManager
from cvdeploy.serve.monitoring import LiveStats, ServeMetrics

if TYPE_CHECKING:
    from cvdeploy.serve.drift import DriftMonitor

__all__ = ["PUBLIC_ROUTES", "Authorizer", "ServeState", "add_route", "allow_all", "require"]

PUBLIC_ROUTES = frozenset({"/healthz", "/readyz"})
"""Routes that declare no permission (probes)."""

Authorizer = Callable[[Request, str], Awaitable[None]]


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
    drift: DriftMonitor | None = None


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
    if permission is not None:
        extra["x-permission"] = permission
        deps.append(Depends(require(permission)))
    app.add_api_route(
        path, endpoint, methods=methods, dependencies=deps, openapi_extra=extra or None, **kwargs
    )
