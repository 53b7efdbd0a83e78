"""The security options of the server: pydantic models embedded in ``ServeConfig``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SecurityConfig", "TLSConfig"]


class TLSConfig(BaseModel):
    """HTTPS for the server (TLS 1.2+ only, forward-secret AEAD ciphers).

    Attributes:
        cert: PEM certificate (chain) of the server.
        key: PEM private key of the server.
        client_ca: PEM bundle of CAs whose client certificates are accepted; when set,
            every client must present one (mutual TLS).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    cert: Path
    key: Path
    client_ca: Path | None = None


class SecurityConfig(BaseModel):
    """Authentication, authorization, audit and abuse limits of the server.

    Attributes:
        auth_db: SQLite database of users, API keys and token-signing keys
            (``cvdeploy users/keys ... --db``).
        audit_log: Append-only, HMAC-chained JSON-lines audit log (``None``: no audit).
        audit_key_file: File holding the audit HMAC key (``cvdeploy audit keygen``).
        audit_max_bytes: Size at which the audit log is rotated (the chain continues).
        audit_max_files: Most audit files kept (current + rotated); the oldest are removed
            after an ``audit.prune`` entry names them (``None``: keep every file).
        audit_checkpoint_file: Append a checkpoint of the log's newest entry here every
            ``audit_checkpoint_every_s`` (put it on another volume or host: the anchor
            that shows entries cut off the end of the log).
        audit_checkpoint_every_s: Seconds between checkpoints.
        audit_reads: Also record successful read-only requests (models, metrics, docs).
        audit_anonymous_rate: Audit entries per second per client address for refused
            anonymous requests (401, 404, 405...); beyond it they are counted and written
            as one ``audit.suppressed`` summary per address within ``audit_summary_s``.
        audit_anonymous_burst: Burst of that bucket.
        audit_anonymous_total_rate: The same over all addresses together.
        audit_anonymous_total_burst: Burst of that bucket.
        audit_summary_s: Most seconds a count of held-back entries waits to be written.
        anonymous_rate_per_ip: Requests per second per address that carry no valid
            credentials (refused 401, then 429): their own budget, so they never use up a
            client's predict budget.
        anonymous_burst_per_ip: Burst of that bucket.
        token_ttl_s: Lifetime of access tokens from ``POST /v1/auth/token``.
        jwt_issuer: ``iss`` claim written and required.
        jwt_audience: ``aud`` claim written and required.
        require_mfa: Refuse tokens to users without an enrolled TOTP second factor.
        predict_rate_per_key: Sustained predict requests per second per credential.
        predict_burst_per_key: Burst size of that bucket.
        predict_rate_per_ip: Sustained authenticated predict requests per second per client
            address (all its credentials together).
        predict_burst_per_ip: Burst size of that bucket.
        auth_rate_per_ip: Sustained login attempts per second per client address.
        auth_burst_per_ip: Burst size of that bucket.
        lockout_after: Failed logins of one user before it is locked out.
        lockout_base_s: First lock-out; it doubles with each further failure.
        lockout_max_s: Longest lock-out.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    auth_db: Path
    audit_log: Path | None = None
    audit_key_file: Path | None = None
    audit_max_bytes: int = Field(100 * 1024 * 1024, ge=1024)
    audit_max_files: int | None = Field(10, ge=2)
    audit_checkpoint_file: Path | None = None
    audit_checkpoint_every_s: float = Field(60.0, gt=0)
    audit_reads: bool = False
    audit_anonymous_rate: float = Field(1.0, gt=0)
    audit_anonymous_burst: int = Field(100, ge=1)
    audit_anonymous_total_rate: float = Field(20.0, gt=0)
    audit_anonymous_total_burst: int = Field(500, ge=1)
    audit_summary_s: float = Field(60.0, gt=0)
    anonymous_rate_per_ip: float = Field(20.0, gt=0)
    anonymous_burst_per_ip: int = Field(100, ge=1)
    token_ttl_s: int = Field(900, ge=30, le=86_400)
    jwt_issuer: str = "cvdeploy"
    jwt_audience: str = "cvdeploy-api"
    require_mfa: bool = True
    predict_rate_per_key: float = Field(50.0, gt=0)
    predict_burst_per_key: int = Field(100, ge=1)
    predict_rate_per_ip: float = Field(100.0, gt=0)
    predict_burst_per_ip: int = Field(200, ge=1)
    auth_rate_per_ip: float = Field(1.0, gt=0)
    auth_burst_per_ip: int = Field(10, ge=1)
    lockout_after: int = Field(5, ge=1)
    lockout_base_s: float = Field(30.0, gt=0)
    lockout_max_s: float = Field(3600.0, gt=0)

    def model_post_init(self, __context: Any) -> None:
        """Check option combinations."""
        if (self.audit_log is None) != (self.audit_key_file is None):
            raise ValueError("audit_log and audit_key_file go together (cvdeploy audit keygen)")
