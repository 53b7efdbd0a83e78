"""`cvdeploy users|keys|security ...`, registry audit, and `cvdeploy serve` with every
security flag in a real process (HTTPS + API keys + audit log)."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import httpx
import pyotp
import pytest
from PIL import Image
from typer.testing import CliRunner

from cvdeploy.cli.main import app
from cvdeploy.security.audit import load_key, verify_log, write_key
from tests.serve.secured import PASSWORD, RAW


def _run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, list(args), input=stdin)
    return r.exit_code, r.stdout, r.stderr


def test_users_keys_and_jwt_commands(tmp_path: Path) -> None:
    db = str(tmp_path / "auth.db")
    key_file = write_key(tmp_path / "audit.key")
    audit = ["--audit-log", str(tmp_path / "audit.log"), "--audit-key-file", str(key_file)]
    code, out, err = _run(
        "users",
        "add",
        "alice",
        "--role",
        "admin",
        "--db",
        db,
        "--password-stdin",
        "--json",
        *audit,
        stdin=PASSWORD + "\n",
    )
    assert code == 0, err
    assert json.loads(out) == {"name": "alice", "role": "admin", "models": None, "mfa": False}
    code, _, err = _run(
        "users",
        "add",
        "bob",
        "--role",
        "root",
        "--db",
        db,
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert code == 2 and "unknown role" in err
    code, _, err = _run(
        "users", "add", "bob", "--role", "viewer", "--db", db, "--password-stdin", stdin="short\n"
    )
    assert code == 2 and "too short" in err
    code, _, err = _run(
        "users",
        "add",
        "../x",
        "--role",
        "viewer",
        "--db",
        db,
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert code == 2 and "not valid" in err
    qr = tmp_path / "qr.png"
    code, out, _ = _run("users", "enrol-totp", "alice", "--db", db, "--qr", str(qr), "--json")
    uri = json.loads(out)["provisioning_uri"]
    assert code == 0 and uri.startswith("otpauth://totp/cvdeploy:alice?secret=")
    assert Image.open(qr).size[0] > 50 and (qr.stat().st_mode & 0o777) == 0o600
    assert pyotp.parse_uri(uri).now().isdigit()
    code, out, _ = _run(
        "users", "set-role", "alice", "operator", "--model", "tiny", "--db", db, "--json", *audit
    )
    assert json.loads(out) == {"name": "alice", "role": "operator", "models": ["tiny"]}
    code, out, _ = _run("users", "list", "--db", db, "--json")
    assert json.loads(out)["users"][0]["mfa"] is True
    code, out, err = _run(
        "keys",
        "create",
        "cam",
        "--role",
        "predictor",
        "--model",
        "tiny",
        "--expires-days",
        "1",
        "--db",
        db,
        "--json",
        *audit,
    )
    created = json.loads(out)
    assert code == 0 and created["key"].startswith(f"cvd_{created['id']}_")
    code, out, _ = _run("keys", "list", "--db", db, "--json")
    assert created["key"] not in out and json.loads(out)["keys"][0]["status"] == "active"
    code, out, _ = _run("keys", "revoke", created["id"], "--db", db, "--json", *audit)
    assert code == 0 and json.loads(out)["status"] == "revoked"
    assert _run("keys", "revoke", created["id"], "--db", db)[0] == 2
    code, out, _ = _run("security", "jwt-rotate", "--db", db, "--json")
    kid = json.loads(out)["kid"]
    assert _run("security", "jwt-retire", kid, "--db", db)[0] == 0
    assert json.loads(_run("security", "jwt-keys", "--db", db, "--json")[1])["keys"][0]["retired"]
    assert _run("users", "remove", "alice", "--db", db, *audit)[0] == 0
    assert _run("users", "list", "--db", str(tmp_path / "missing.db"))[0] == 2
    # the audit log has every change, by the CLI user, and no secrets
    text = (tmp_path / "audit.log").read_text()
    actions = [json.loads(x)["action"] for x in text.splitlines()]
    assert actions == [
        "audit.open",
        "user.add",
        "user.set_role",
        "key.create",
        "key.revoke",
        "user.remove",
    ]
    assert PASSWORD not in text and created["key"] not in text and uri not in text
    assert verify_log([tmp_path / "audit.log"], load_key(key_file)).ok
    # the database holds no plaintext key and is private
    assert created["key"].split("_", 2)[2].encode() not in (tmp_path / "auth.db").read_bytes()
    assert ((tmp_path / "auth.db").stat().st_mode & 0o777) == 0o600


def test_registry_promote_and_rollback_are_audited(tmp_path: Path) -> None:
    from cvdeploy.serve.registry import ModelRegistry
    from tests.serve.conftest import make_bundle

    reg = ModelRegistry(tmp_path / "reg", create=True)
    reg.add(make_bundle(tmp_path / "a", seed=0))
    reg.add(make_bundle(tmp_path / "b", seed=1))
    key_file = write_key(tmp_path / "k")
    audit = ["--audit-log", str(tmp_path / "audit.log"), "--audit-key-file", str(key_file)]
    assert _run("registry", "promote", str(reg.root), "tiny", "2", *audit)[0] == 0
    assert _run("registry", "rollback", str(reg.root), "tiny", *audit)[0] == 0
    assert _run("registry", "promote", str(reg.root), "tiny", "9", *audit)[0] == 2
    lines = (tmp_path / "audit.log").read_text().splitlines()
    entries = [json.loads(x) for x in lines if json.loads(x)["action"] != "audit.open"]
    # the intent is written before the registry changes, the outcome after
    assert [(e["action"], e["detail"].get("version"), e["outcome"]) for e in entries] == [
        ("registry.promote", "2", "started"),
        ("registry.promote", "2", "ok"),
        ("registry.rollback", None, "started"),
        ("registry.rollback", "1", "ok"),
        ("registry.promote", "9", "started"),
        ("registry.promote", "9", "failed"),
    ]
    assert entries[-1]["detail"]["error"]
    assert entries[0]["actor"].startswith("cli:")
    ops = [e["detail"]["op"] for e in entries]
    assert ops[0] == ops[1] != ops[2] == ops[3]
    history = reg.model("tiny")["history"]
    assert [h.get("op") for h in history[-2:]] == [ops[0], ops[2]]  # the registry names it
    code, _, err = _run("registry", "promote", str(reg.root), "tiny", "2", "--audit-log", "x")
    assert code == 2 and "go together" in err


def test_cli_server_with_tls_auth_and_audit(
    tmp_path: Path,
    tiny_bundle: Path,
    jpeg: bytes,
    auth_db_template: tuple[Path, dict[str, str], dict[str, str]],
) -> None:
    import shutil

    from cvdeploy.security.tls import write_self_signed
    from tests.serve.test_uvicorn import cli_server

    db, keys, _ = auth_db_template
    shutil.copy(db, tmp_path / "auth.db")
    cert, key = write_self_signed(tmp_path)
    key_file = write_key(tmp_path / "audit.key")
    log = tmp_path / "server.log"
    args = [
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--auth-db",
        str(tmp_path / "auth.db"),
        "--audit-log",
        str(tmp_path / "audit.log"),
        "--audit-key-file",
        str(key_file),
    ]
    ctx = ssl.create_default_context(cafile=str(cert))
    with cli_server(tiny_bundle, tmp_path, args=args, tls=ctx) as c:
        port = c.base_url.port
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert c.post("/v1/models/tiny/predict", content=jpeg, headers=RAW).status_code == 401
        auth = {"Authorization": f"Bearer {keys['legit']}", **RAW}
        r = c.post("/v1/models/tiny/predict", content=jpeg, headers=auth)
        assert r.status_code == 200, r.text
        viewer = {"Authorization": f"Bearer {keys['viewer']}"}
        assert c.get("/metrics", headers=viewer).status_code == 403
        r = c.get("/dashboard", headers={"accept": "text/html"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login?next=/dashboard"
        assert c.get("/login").status_code == 200
    assert "browsers log in at /login" in " ".join(log.read_text().split())  # rich wraps
    entries = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    skip = ("jwt.rotate", "audit.open")
    assert [(e["action"], e["outcome"]) for e in entries if e["action"] not in skip] == [
        ("predict", "denied"),
        ("predict", "ok"),
        ("GET /metrics", "denied"),
    ]
    code, _, _ = _run("audit", "verify", str(tmp_path / "audit.log"), "--key-file", str(key_file))
    assert code == 0
