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
        audit_reads: Also record successful read-only requests (models, metrics, docs).
        token_ttl_s: Lifetime of access tokens from ``POST /v1/auth/token``.
        jwt_issuer: ``iss`` claim written and required.
        jwt_audience: ``aud`` claim written and required.
        require_mfa: Refuse tokens to users without an enrolled TOTP second factor.
        predict_rate_per_key: Sustained predict requests per second per credential.
        predict_burst_per_key: Burst size of that bucket.
        predict_rate_per_ip: Sustained predict requests per second per client address.
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
    audit_reads: bool = False
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
