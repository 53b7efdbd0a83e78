"""Users, API keys and token-signing keys in one SQLite file (``--auth-db``).

Stored: argon2id password hashes, salted HMAC-SHA256 hashes of API-key secrets, TOTP
seeds (a TOTP verifier needs the seed itself) and JWT signing secrets. The file is
created with mode 0600; keep it beside the registry, readable by the server user only.
Every change is recorded in the audit log when one is given, before the call returns.
"""

from __future__ import annotations

import contextlib
import copy
import hmac
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvdeploy.errors import InputError, UsageError
from cvdeploy.security.auth import (
    SigningKey,
    hash_key_secret,
    hash_password,
    new_api_key,
    new_totp_secret,
    parse_api_key,
    totp_match,
    verify_password,
)
from cvdeploy.security.rbac import Principal, check_role

if TYPE_CHECKING:
    from cvdeploy.security.audit import AuditLog

__all__ = ["KeyInfo", "SecurityStore", "UserInfo", "validate_name"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, models TEXT, pw_hash TEXT NOT NULL,
    totp_secret TEXT, totp_last_step INTEGER NOT NULL DEFAULT -1, created REAL NOT NULL,
    uid TEXT);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, label TEXT NOT NULL, role TEXT NOT NULL, models TEXT,
    salt BLOB NOT NULL, hash BLOB NOT NULL, created REAL NOT NULL, expires REAL,
    revoked REAL);
CREATE TABLE IF NOT EXISTS jwt_keys (
    kid TEXT PRIMARY KEY, secret BLOB NOT NULL, created REAL NOT NULL, retired REAL);
"""


def validate_name(name: str, what: str = "name") -> str:
    """A user, model or label name: 1-64 of ``A-Za-z0-9._-``, not starting with ``.``/``-``.

    Raises:
        UsageError: Anything else (path separators and ``..`` included).
    """
    ok = 0 < len(name) <= 64 and name[0].isalnum() and name.isascii()
    ok = ok and all(c.isalnum() or c in "._-" for c in name) and ".." not in name
    if not ok:
        raise UsageError(
            f"{what} {name!r} is not valid",
            hint="use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


@dataclass(frozen=True, slots=True)
class UserInfo:
    """A user as listed (no secrets)."""

    name: str
    role: str
    models: list[str] | None
    mfa: bool
    created: float


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """An API key as listed (no secret, no hash)."""

    id: str
    label: str
    role: str
    models: list[str] | None
    created: float
    expires: float | None
    revoked: float | None

    def status(self, now: float) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "active"

    def to_dict(self, now: float) -> dict[str, Any]:
        """JSON-friendly, with the status."""
        return {**asdict(self), "status": self.status(now)}


def _models(raw: str | None) -> list[str] | None:
    return None if raw is None else list(json.loads(raw))


def _scope(models: list[str] | None) -> str | None:
    if not models:
        return None
    return json.dumps(sorted({validate_name(m, "model name") for m in models}))


class SecurityStore:
    """The SQLite store (one short connection per call, safe across threads).

    Args:
        path: Database file.
        create: Create it (mode 0600) when missing; otherwise a missing file is an error.
        audit: Audit log receiving every change.
        actor: Who makes the changes (for the audit log).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        create: bool = False,
        audit: AuditLog | None = None,
        actor: str = "cli",
    ) -> None:
        self.path = Path(path)
        self.audit = audit
        self.actor = actor
        if not self.path.is_file():
            if not create:
                raise InputError(
                    f"auth database {self.path} does not exist",
                    hint="create it with `cvdeploy users add NAME --role admin --db PATH`",
                )
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        with self._db() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            # databases made before account ids: give every user one (tokens carry it)
            columns = {row[1] for row in db.execute("PRAGMA table_info(users)")}
            if "uid" not in columns:
                db.execute("ALTER TABLE users ADD COLUMN uid TEXT")
            for (name,) in db.execute("SELECT name FROM users WHERE uid IS NULL").fetchall():
                db.execute("UPDATE users SET uid=? WHERE name=?", (secrets.token_hex(8), name))

    def as_actor(self, actor: str) -> SecurityStore:
        """The same store, recording changes in the audit log as made by ``actor``."""
        other = copy.copy(self)
        other.actor = actor
        return other

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        except sqlite3.Error as exc:
            raise InputError(f"auth database {self.path} cannot be opened: {exc}") from None
        try:
            db.execute("BEGIN")
            yield db
            db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise InputError(
                f"{self.path} is not a cvdeploy users/keys database ({exc})",
                hint="pass the server's --auth-db file, or a new path to create one",
            ) from None
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def _record(self, action: str, target: str, **detail: Any) -> None:
        if self.audit is not None:
            self.audit.record(
                actor=self.actor, action=action, target=target, outcome="ok", **detail
            )

    # users ----------------------------------------------------------------------------
    def add_user(
        self, name: str, password: str, *, role: str, models: list[str] | None = None
    ) -> UserInfo:
        """Add a user (no second factor yet: ``enrol_totp``).

        Raises:
            UsageError: Bad name or role, the user exists, or the password is too short.
        """
        validate_name(name, "user name")
        _role(role)
        if len(password) < 12:
            raise UsageError("the password is too short", hint="use at least 12 characters")
        with self._db() as db:
            if db.execute("SELECT 1 FROM users WHERE name=?", (name,)).fetchone():
                raise UsageError(f"user {name!r} exists", hint="cvdeploy users set-role / remove")
            db.execute(
                "INSERT INTO users (name, role, models, pw_hash, created, uid) "
                "VALUES (?,?,?,?,?,?)",
                (
                    name,
                    role,
                    _scope(models),
                    hash_password(password),
                    time.time(),
                    secrets.token_hex(8),  # a new account: a new id, even under an old name
                ),
            )
        self._record("user.add", name, role=role, models=models)
        return self.user(name)

    def user(self, name: str) -> UserInfo:
        """One user.

        Raises:
            UsageError: Unknown user.
        """
        with self._db() as db:
            row = db.execute(
                "SELECT name, role, models, totp_secret, created FROM users WHERE name=?", (name,)
            ).fetchone()
        if row is None:
            raise UsageError(f"no user {name!r}", hint="cvdeploy users list")
        return UserInfo(row[0], row[1], _models(row[2]), row[3] is not None, row[4])

    def users(self) -> list[UserInfo]:
        """All users, by name."""
        with self._db() as db:
            rows = db.execute(
                "SELECT name, role, models, totp_secret, created FROM users ORDER BY name"
            ).fetchall()
        return [UserInfo(r[0], r[1], _models(r[2]), r[3] is not None, r[4]) for r in rows]

    def remove_user(self, name: str) -> None:
        """Remove a user (its tokens stop working at once: each request re-reads the user)."""
        with self._db() as db:
            if db.execute("DELETE FROM users WHERE name=?", (name,)).rowcount == 0:
                raise UsageError(f"no user {name!r}", hint="cvdeploy users list")
        self._record("user.remove", name)

    def set_role(self, name: str, role: str, *, models: list[str] | None = None) -> UserInfo:
        """Change a user's role and model scope."""
        _role(role)
        with self._db() as db:
            n = db.execute(
                "UPDATE users SET role=?, models=? WHERE name=?", (role, _scope(models), name)
            ).rowcount
        if n == 0:
            raise UsageError(f"no user {name!r}", hint="cvdeploy users list")
        self._record("user.set_role", name, role=role, models=models)
        return self.user(name)

    def enrol_totp(self, name: str, *, issuer: str = "cvdeploy") -> str:
        """Give a user a new TOTP seed; returns the provisioning URI (show once)."""
        import pyotp

        seed = new_totp_secret()
        with self._db() as db:
            n = db.execute(
                "UPDATE users SET totp_secret=?, totp_last_step=-1 WHERE name=?", (seed, name)
            ).rowcount
        if n == 0:
            raise UsageError(f"no user {name!r}", hint="cvdeploy users list")
        self._record("user.enrol_totp", name)
        return str(pyotp.TOTP(seed).provisioning_uri(name=name, issuer_name=issuer))

    def check_login(
        self, name: str, password: str, code: str | None, *, now: float, require_mfa: bool
    ) -> tuple[Principal | None, str]:
        """Check password and TOTP code; a code's time step is accepted only once.

        Returns:
            ``(principal, "ok")`` or ``(None, reason)`` with reason ``bad_password``,
            ``bad_totp``, ``totp_replayed`` or ``mfa_not_enrolled`` (for the audit log;
            the client is told only that the credentials are invalid).
        """
        with self._db() as db:
            row = db.execute(
                "SELECT role, models, pw_hash, totp_secret, totp_last_step, uid FROM users "
                "WHERE name=?",
                (name,),
            ).fetchone()
        if not verify_password(row[2] if row else None, password) or row is None:
            return None, "bad_password"
        role, models, _, seed, _, uid = row
        if seed is None:
            if require_mfa:
                return None, "mfa_not_enrolled"
        else:
            step = totp_match(seed, code or "", now)
            if step is None:
                return None, "bad_totp"
            with self._db() as db:  # compare-and-set: one use per time step
                n = db.execute(
                    "UPDATE users SET totp_last_step=? WHERE name=? AND totp_last_step<?",
                    (step, name, step),
                ).rowcount
            if n == 0:
                return None, "totp_replayed"
        scope = _models(models)
        principal = Principal("user", name, role, None if scope is None else frozenset(scope), uid)
        return principal, "ok"

    def principal_for_user(self, name: str, uid: str | None = None) -> Principal | None:
        """The current role and scope of a user (``None`` if removed).

        Args:
            name: The user name (a token's ``sub``).
            uid: The account id the token was issued to: a user removed and added again
                under the same name is another account, and the old tokens are refused.
        """
        with self._db() as db:
            row = db.execute("SELECT role, models, uid FROM users WHERE name=?", (name,)).fetchone()
        if row is None or (uid is not None and not hmac.compare_digest(str(row[2]), uid)):
            return None
        scope = _models(row[1])
        return Principal("user", name, row[0], None if scope is None else frozenset(scope), row[2])

    # API keys ---------------------------------------------------------------------------
    def create_key(
        self,
        label: str,
        *,
        role: str,
        models: list[str] | None = None,
        expires_in_s: float | None = None,
    ) -> tuple[str, KeyInfo]:
        """Create an API key; returns ``(full_key, info)``. The full key is not stored."""
        validate_name(label, "key label")
        _role(role)
        if expires_in_s is not None and expires_in_s <= 0:
            raise UsageError("the expiry must be in the future")
        key_id, secret, full = new_api_key()
        salt = secrets.token_bytes(16)
        now = time.time()
        expires = None if expires_in_s is None else now + expires_in_s
        with self._db() as db:
            db.execute(
                "INSERT INTO api_keys (id, label, role, models, salt, hash, created, expires) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (
                    key_id,
                    label,
                    role,
                    _scope(models),
                    salt,
                    hash_key_secret(secret, salt),
                    now,
                    expires,
                ),
            )
        self._record("key.create", key_id, label=label, role=role, models=models, expires=expires)
        return full, self.key(key_id)

    def key(self, key_id: str) -> KeyInfo:
        """One key's public information."""
        keys = [k for k in self.keys() if k.id == key_id]
        if not keys:
            raise UsageError(f"no API key {key_id!r}", hint="cvdeploy keys list")
        return keys[0]

    def keys(self) -> list[KeyInfo]:
        """All keys, oldest first."""
        with self._db() as db:
            rows = db.execute(
                "SELECT id, label, role, models, created, expires, revoked FROM api_keys "
                "ORDER BY created"
            ).fetchall()
        return [KeyInfo(r[0], r[1], r[2], _models(r[3]), r[4], r[5], r[6]) for r in rows]

    def revoke_key(self, key_id: str) -> KeyInfo:
        """Revoke a key (effective on the next request)."""
        with self._db() as db:
            n = db.execute(
                "UPDATE api_keys SET revoked=? WHERE id=? AND revoked IS NULL",
                (time.time(), key_id),
            ).rowcount
        if n == 0:
            raise UsageError(f"no active API key {key_id!r}", hint="cvdeploy keys list")
        self._record("key.revoke", key_id)
        return self.key(key_id)

    def check_key(self, key: str, *, now: float) -> tuple[Principal | None, str]:
        """Authenticate an API key.

        Returns:
            ``(principal, "ok")`` or ``(None, reason)``: ``malformed``, ``unknown``,
            ``bad_secret``, ``revoked`` or ``expired``.
        """
        parsed = parse_api_key(key)
        if parsed is None:
            return None, "malformed"
        key_id, secret = parsed
        with self._db() as db:
            row = db.execute(
                "SELECT role, models, salt, hash, expires, revoked FROM api_keys WHERE id=?",
                (key_id,),
            ).fetchone()
        if row is None:
            return None, "unknown"
        role, models, salt, stored, expires, revoked = row
        if not hmac.compare_digest(hash_key_secret(secret, salt), stored):
            return None, "bad_secret"
        if revoked is not None:
            return None, "revoked"
        if expires is not None and now >= expires:
            return None, "expired"
        scope = _models(models)
        return Principal("key", key_id, role, None if scope is None else frozenset(scope)), "ok"

    # token-signing keys ------------------------------------------------------------------
    def signing_key(self, kid: str) -> SigningKey | None:
        """A JWT signing key by id."""
        with self._db() as db:
            row = db.execute(
                "SELECT kid, secret, retired FROM jwt_keys WHERE kid=?", (kid,)
            ).fetchone()
        return None if row is None else SigningKey(row[0], bytes(row[1]), row[2] is not None)

    def active_signing_key(self) -> SigningKey:
        """The newest unretired signing key (one is created when there is none)."""
        with self._db() as db:
            row = db.execute(
                "SELECT kid, secret FROM jwt_keys WHERE retired IS NULL "
                "ORDER BY created DESC LIMIT 1"
            ).fetchone()
        if row is not None:
            return SigningKey(row[0], bytes(row[1]))
        return self.rotate_signing_key()

    def rotate_signing_key(self) -> SigningKey:
        """Create a new signing key; tokens signed with older ones stay valid until retired."""
        key = SigningKey(secrets.token_hex(4), secrets.token_bytes(32))
        with self._db() as db:
            db.execute(
                "INSERT INTO jwt_keys (kid, secret, created) VALUES (?,?,?)",
                (key.kid, key.secret, time.time()),
            )
        self._record("jwt.rotate", key.kid)
        return key

    def retire_signing_key(self, kid: str) -> None:
        """Retire a signing key: tokens it signed are refused from now on."""
        with self._db() as db:
            n = db.execute(
                "UPDATE jwt_keys SET retired=? WHERE kid=? AND retired IS NULL",
                (time.time(), kid),
            ).rowcount
        if n == 0:
            raise UsageError(f"no active signing key {kid!r}", hint="cvdeploy security jwt-keys")
        self._record("jwt.retire", kid)

    def signing_keys(self) -> list[dict[str, Any]]:
        """Signing key ids with creation and retirement times (no secrets)."""
        with self._db() as db:
            rows = db.execute("SELECT kid, created, retired FROM jwt_keys ORDER BY created")
            return [{"kid": r[0], "created": r[1], "retired": r[2]} for r in rows.fetchall()]


def _role(role: str) -> str:
    try:
        return check_role(role)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
