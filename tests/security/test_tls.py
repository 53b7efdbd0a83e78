"""HTTPS against a real uvicorn server on 127.0.0.1: TLS 1.2+, plain HTTP refused, mTLS."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from cvdeploy.cli.main import app as cli
from cvdeploy.errors import InputError, UsageError
from cvdeploy.security.config import TLSConfig
from cvdeploy.security.tls import server_context, uvicorn_ssl_options, write_self_signed
from cvdeploy.serve.app import create_app
from cvdeploy.serve.config import ServeConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def tls_server(source: Path, tls: TLSConfig) -> Iterator[int]:
    port = _free_port()
    cfg = ServeConfig(source=source, warmup_runs=0, tls=tls)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(cfg),
            host="127.0.0.1",
            port=port,
            log_level="critical",
            **uvicorn_ssl_options(tls),
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        end = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < end and thread.is_alive(), "TLS server did not start"
            time.sleep(0.05)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = write_self_signed(d)
    ccert, ckey = write_self_signed(d, hosts=("client-1",), name="client")
    return {"cert": cert, "key": key, "client_cert": ccert, "client_key": ckey}


def test_dev_cert_cli(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["security", "dev-cert", "--out", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert Path(out["cert"]).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert (Path(out["key"]).stat().st_mode & 0o777) == 0o600
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(Path(out["cert"]).read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    again = CliRunner().invoke(cli, ["security", "dev-cert", "--out", str(tmp_path)])
    assert again.exit_code == 2  # never overwrites a key


def test_context_is_hardened(certs: dict[str, Path]) -> None:
    ctx = server_context(TLSConfig(cert=certs["cert"], key=certs["key"]))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    names = {c["name"] for c in ctx.get_ciphers()}
    assert all(("GCM" in n or "CHACHA20" in n) for n in names), names
    assert all(n.startswith(("TLS_", "ECDHE-")) for n in names), names  # forward secrecy
    with pytest.raises(InputError):
        server_context(TLSConfig(cert=certs["cert"], key=certs["client_key"]))
    with pytest.raises(InputError):
        server_context(TLSConfig(cert=certs["cert"], key=certs["cert"].with_name("none.pem")))
    with pytest.raises(UsageError):
        write_self_signed(certs["cert"].parent)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_https_served_plain_http_and_old_tls_refused(
    tiny_bundle: Path, certs: dict[str, Path]
) -> None:
    with tls_server(tiny_bundle, TLSConfig(cert=certs["cert"], key=certs["key"])) as port:
        with httpx.Client(verify=ssl.create_default_context(cafile=str(certs["cert"]))) as c:
            r = c.get(f"https://127.0.0.1:{port}/healthz")
            assert r.status_code == 200 and r.json()["status"] == "alive"
            r = c.get(f"https://localhost:{port}/healthz")
            assert r.status_code == 200
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        old = ssl.create_default_context(cafile=str(certs["cert"]))
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        with (
            pytest.raises((ssl.SSLError, OSError)),
            socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
            old.wrap_socket(sock, server_hostname="localhost"),
        ):
            pass
        # still serving the legitimate client afterwards
        ctx = ssl.create_default_context(cafile=str(certs["cert"]))
        assert httpx.get(f"https://127.0.0.1:{port}/healthz", verify=ctx).status_code == 200


def test_mutual_tls_requires_a_client_certificate(
    tiny_bundle: Path, certs: dict[str, Path], tmp_path: Path
) -> None:
    tls = TLSConfig(cert=certs["cert"], key=certs["key"], client_ca=certs["client_cert"])
    with tls_server(tiny_bundle, tls) as port:
        url = f"https://127.0.0.1:{port}/healthz"
        anon = ssl.create_default_context(cafile=str(certs["cert"]))
        with pytest.raises(httpx.TransportError):
            httpx.get(url, verify=anon, timeout=10)
        stranger_cert, stranger_key = write_self_signed(tmp_path, hosts=("mallory",), name="m")
        wrong = ssl.create_default_context(cafile=str(certs["cert"]))
        wrong.load_cert_chain(str(stranger_cert), str(stranger_key))
        with pytest.raises(httpx.TransportError):
            httpx.get(url, verify=wrong, timeout=10)
        good = ssl.create_default_context(cafile=str(certs["cert"]))
        good.load_cert_chain(str(certs["client_cert"]), str(certs["client_key"]))
        r: Any = httpx.get(url, verify=good, timeout=10)
        assert r.status_code == 200
