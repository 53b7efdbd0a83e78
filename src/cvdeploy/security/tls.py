"""TLS for the server: a hardened ``ssl.SSLContext`` and self-signed development certificates."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cvdeploy.errors import InputError, UsageError
from cvdeploy.security.config import TLSConfig

__all__ = ["CIPHERS", "server_context", "uvicorn_ssl_options", "write_self_signed"]

CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""TLS 1.2 suites allowed: forward secrecy (ECDHE) with AEAD only (TLS 1.3's are all fine)."""


def server_context(tls: TLSConfig) -> ssl.SSLContext:
    """A server context: TLS 1.2 minimum, ECDHE + AEAD ciphers, no compression or
    renegotiation; client certificates required when ``tls.client_ca`` is set (mTLS).

    Raises:
        InputError: A file is missing or the certificate and key do not match.
    """
    for p in (tls.cert, tls.key, tls.client_ca):
        if p is not None and not Path(p).is_file():
            raise InputError(
                f"TLS file {p} does not exist",
                hint="cvdeploy security dev-cert --out DIR makes a test pair",
            )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    try:
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
    except (ssl.SSLError, OSError) as exc:
        raise InputError(
            f"cannot load TLS certificate {tls.cert} / key {tls.key}: {exc}",
            hint="the key must match the certificate (PEM, unencrypted)",
        ) from None
    if tls.client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(tls.client_ca))
        except (ssl.SSLError, OSError) as exc:
            raise InputError(f"cannot load client CA {tls.client_ca}: {exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def uvicorn_ssl_options(tls: TLSConfig) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` / ``uvicorn.run`` serving with ``tls``."""
    ctx = server_context(tls)  # built now: a bad file fails before the server starts

    def factory(config: Any, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return ctx

    return {
        "ssl_certfile": str(tls.cert),
        "ssl_keyfile": str(tls.key),
        "ssl_context_factory": factory,
    }


def write_self_signed(
    out: Path | str,
    *,
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1"),
    days: int = 30,
    name: str = "cert",
) -> tuple[Path, Path]:
    """Write a self-signed certificate and key (ECDSA P-256) for ``hosts``, for development.

    Returns:
        ``(OUT/NAME.pem, OUT/NAME-key.pem)``; the key file has mode 0600.

    Raises:
        UsageError: The files exist already.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder", hint="--out names a folder")
    cert_path, key_path = out / f"{name}.pem", out / f"{name}-key.pem"
    if cert_path.exists() or key_path.exists():
        raise UsageError(f"{cert_path} or {key_path} exists", hint="choose another --out")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path
