"""Credentials: API keys, passwords (argon2id), TOTP second factor, JWT access tokens.

API keys look like ``cvd_<id>_<secret>``: the id (12 hex digits) is public and names the
key in listings and the audit log; the secret is 32 random bytes from :mod:`secrets`.
Only ``HMAC-SHA256(salt, secret)`` with a per-key random salt is stored. A fast salted
hash is enough here because the secret has 256 bits of entropy: there is nothing to
guess, so a slow password hash would only cost time on every request. Passwords, which
people choose, use argon2id. Every comparison of secrets is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cvdeploy.errors import TokenError

__all__ = [
    "KEY_PREFIX",
    "TokenError",
    "TokenService",
    "hash_key_secret",
    "hash_password",
    "new_api_key",
    "new_totp_secret",
    "parse_api_key",
    "totp_match",
    "verify_password",
]

KEY_PREFIX = "cvd"
_KEY_RE = re.compile(r"^cvd_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
TOTP_STEP_S = 30


# API keys -------------------------------------------------------------------------------
def new_api_key() -> tuple[str, str, str]:
    """A fresh API key: ``(key_id, secret, full_key)``; show ``full_key`` once, store a hash."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return key_id, secret, f"{KEY_PREFIX}_{key_id}_{secret}"


def parse_api_key(key: str) -> tuple[str, str] | None:
    """Split ``cvd_<id>_<secret>`` into ``(id, secret)``; ``None`` if malformed."""
    m = _KEY_RE.match(key)
    return (m.group(1), m.group(2)) if m else None


def hash_key_secret(secret: str, salt: bytes) -> bytes:
    """``HMAC-SHA256(salt, secret)`` (see the module docstring for why this suffices)."""
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()


# passwords ------------------------------------------------------------------------------
def _hasher() -> Any:
    from argon2 import PasswordHasher

    return PasswordHasher()  # argon2id, RFC 9106 low-memory profile


def hash_password(password: str) -> str:
    """An argon2id hash (salted, encoded with its parameters)."""
    return str(_hasher().hash(password))


def verify_password(stored: str | None, password: str) -> bool:
    """Check ``password`` against an argon2 hash; with ``stored=None`` burn the same time."""
    from argon2.exceptions import InvalidHashError, VerificationError

    h = _hasher()
    target = stored or _DUMMY_HASH
    try:
        ok = bool(h.verify(target, password))
    except (VerificationError, InvalidHashError):
        ok = False
    return ok and stored is not None


# The hash of a random, discarded password: unknown users are checked against it so that
# the time taken does not reveal whether a user exists.
_DUMMY_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$yuV9nJGrXaHd3EPzmMnBig$"
    "1hZvNve1ta6C75OTYjpEkhWdyDHkifvR3NrXOgFTiZo"
)


# TOTP -------------------------------------------------------------------------------------
def new_totp_secret() -> str:
    """A random base32 TOTP secret (160 bits)."""
    import pyotp

    return str(pyotp.random_base32(32))


def totp_match(secret: str, code: str, now: float, *, window: int = 1) -> int | None:
    """The time step (within +-``window`` of ``now``) whose code equals ``code``, else None.

    The caller refuses steps at or before the last one used (replay protection).
    """
    import pyotp

    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret, interval=TOTP_STEP_S)
    step = int(now // TOTP_STEP_S)
    found = None
    for s in range(step - window, step + window + 1):
        if hmac.compare_digest(totp.at(s * TOTP_STEP_S).encode(), code.encode()):
            found = s  # keep looping: constant work whatever matches
    return found


# JWT ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SigningKey:
    """A token-signing key: id (``kid`` header), secret, and whether it is retired."""

    kid: str
    secret: bytes
    retired: bool = False


class TokenService:
    """Issues and verifies HS256 access tokens with rotating keys.

    Tokens carry ``kid`` in their header; a token verifies while its key exists and is not
    retired, so after a rotation old tokens stay valid until the old key is retired.

    Args:
        keys: Looks a signing key up by ``kid`` (``None`` if unknown).
        active: Returns the key new tokens are signed with.
        issuer: ``iss`` written and required.
        audience: ``aud`` written and required.
        ttl_s: Token lifetime.
        clock: Seconds since the epoch.
    """

    ALGORITHM = "HS256"

    def __init__(
        self,
        *,
        keys: Callable[[str], SigningKey | None],
        active: Callable[[], SigningKey],
        issuer: str,
        audience: str,
        ttl_s: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.active = active
        self.issuer = issuer
        self.audience = audience
        self.ttl_s = ttl_s
        self.clock = clock

    def issue(
        self, subject: str, *, uid: str | None = None, now: float | None = None
    ) -> tuple[str, int]:
        """A signed token for ``subject``; returns ``(token, expires_in_s)``.

        Args:
            subject: The user name (``sub``).
            uid: The account id (``uid`` claim): the token is refused once the account is
                removed, even if a new one takes the same name.
            now: Issue time (tests).
        """
        import jwt

        t = int(self.clock() if now is None else now)
        key = self.active()
        claims: dict[str, Any] = {
            "sub": subject,
            "iss": self.issuer,
            "aud": self.audience,
            "iat": t,
            "nbf": t,
            "exp": t + self.ttl_s,
            "jti": secrets.token_hex(8),
        }
        if uid is not None:
            claims["uid"] = uid
        token = jwt.encode(claims, key.secret, algorithm=self.ALGORITHM, headers={"kid": key.kid})
        return token, self.ttl_s

    def verify(self, token: str) -> str:
        """Verify signature, algorithm, key, time window, issuer and audience.

        Returns:
            The subject.

        Raises:
            TokenError: Anything wrong (alg ``none`` included).
        """
        return str(self.verify_claims(token)["sub"])

    def verify_claims(self, token: str) -> dict[str, Any]:
        """Like :meth:`verify`, returning every claim (``sub``, ``uid``, ``exp``...)."""
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed token") from None
        if header.get("alg") != self.ALGORITHM:
            raise TokenError("token algorithm not accepted")
        kid = header.get("kid")
        key = self.keys(kid) if isinstance(kid, str) else None
        if key is None or key.retired:
            raise TokenError("token signing key unknown or retired")
        try:
            claims = jwt.decode(
                token,
                key.secret,
                algorithms=[self.ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "nbf", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("token not valid yet") from None
        except jwt.PyJWTError:
            raise TokenError("token invalid") from None
        return dict(claims)
