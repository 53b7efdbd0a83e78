"""Roles, permissions and principals (who is calling, with which role and model scope)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MODEL_SCOPED", "PERMISSIONS", "ROLES", "Principal", "check_role", "is_allowed"]

_VIEWER = frozenset({"read", "docs", "whoami"})
_PREDICTOR = _VIEWER | {"predict"}
_OPERATOR = _PREDICTOR | {"metrics", "logs", "reload", "promote", "rollback"}
_ADMIN = _OPERATOR | {"users", "admin"}

ROLES: dict[str, frozenset[str]] = {
    "viewer": _VIEWER,
    "predictor": _PREDICTOR,
    "operator": _OPERATOR,
    "admin": _ADMIN,
}
"""Permissions of each role (each role includes the ones above it)."""

PERMISSIONS = _ADMIN | {"login"}
"""Every permission a route may declare (``login`` is granted to anonymous callers)."""

MODEL_SCOPED = frozenset({"predict", "read", "reload"})
"""Permissions checked against a principal's model scope when the route names a model."""


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    Attributes:
        kind: ``user`` (JWT) or ``key`` (API key).
        id: User name or API key id (never the secret).
        role: One of :data:`ROLES`.
        models: Models this principal may touch (``None``: all).
        uid: The account's id (users): tokens are bound to it, not to the name.
    """

    kind: str
    id: str
    role: str
    models: frozenset[str] | None = None
    uid: str | None = None

    @property
    def label(self) -> str:
        """``user:alice`` / ``key:3f2a...``: how the audit log names the caller."""
        return f"{self.kind}:{self.id}"


def check_role(role: str) -> str:
    """Return ``role`` if it exists.

    Raises:
        ValueError: Unknown role (the message lists the valid ones).
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    return role


def is_allowed(principal: Principal, permission: str, model: str | None) -> bool:
    """Whether ``principal`` holds ``permission`` (on ``model`` when the route names one)."""
    if permission not in ROLES.get(principal.role, frozenset()):
        return False
    if model is not None and permission in MODEL_SCOPED and principal.models is not None:
        return model in principal.models
    return True
