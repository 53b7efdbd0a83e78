"""Security: TLS, authentication (API keys, passwords + TOTP, JWT), RBAC, audit log, limits,
encrypted and signed models.

Primitives only: nothing here imports FastAPI, Starlette or :mod:`cvdeploy.serve`. The HTTP
side (the authorizer, the auth routes, the audit middleware, the login page) is
:mod:`cvdeploy.serve.authorizer`, which the server installs from these primitives.

The public API below is what other stages use. The optional dependencies (cryptography,
pyjwt, pyotp, argon2) come with ``pip install 'cvdeploy[security]'`` and are imported inside
the functions that need them, so importing this package needs none of them.
"""

from cvdeploy.security.audit import AuditLog, verify_log
from cvdeploy.security.audit import load_key as load_audit_key
from cvdeploy.security.auth import KEY_PREFIX, TokenError, TokenService
from cvdeploy.security.config import SecurityConfig, TLSConfig
from cvdeploy.security.crypto import (
    LOADABLE_FORMATS,
    ModelKey,
    decrypt_bundle,
    encrypt_bundle,
    key_from_options,
    model_loader,
)
from cvdeploy.security.ratelimit import AuditThrottle, Lockout, RateLimiter
from cvdeploy.security.rbac import Principal, is_allowed
from cvdeploy.security.signing import (
    require_signed,
    sign_bundle,
    signature_status,
    verify_bundle,
)
from cvdeploy.security.store import SecurityStore, validate_name
from cvdeploy.security.tls import server_context, uvicorn_ssl_options

__all__ = [
    "KEY_PREFIX",
    "LOADABLE_FORMATS",
    "AuditLog",
    "AuditThrottle",
    "Lockout",
    "ModelKey",
    "Principal",
    "RateLimiter",
    "SecurityConfig",
    "SecurityStore",
    "TLSConfig",
    "TokenError",
    "TokenService",
    "decrypt_bundle",
    "encrypt_bundle",
    "is_allowed",
    "key_from_options",
    "load_audit_key",
    "model_loader",
    "require_signed",
    "server_context",
    "sign_bundle",
    "signature_status",
    "uvicorn_ssl_options",
    "validate_name",
    "verify_bundle",
    "verify_log",
]
