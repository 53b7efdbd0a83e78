"""Every command with ``--json`` prints one JSON object on stdout when it fails.

``{"error": {"message", "hint", "exit_code", "type"}}``, nothing else on stdout, and the exit
code of the error; the human message still goes to stderr. The table below names a failing
invocation for every command (a missing bundle, a bad file, a wrong name...), and the test
fails when a command with ``--json`` is missing from it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from cvdeploy.cli.main import app, main

NOPE = "/nonexistent/cvdeploy-test"
FAILING: dict[str, list[str] | None] = {
    "runtimes": None,  # lists what is installed: takes no input that could be wrong
    "import": [f"{NOPE}/m.onnx", "--out", f"{NOPE}/b"],
    "info": [NOPE],
    "export": [NOPE, "--format", "onnx", "--out", f"{NOPE}/b"],
    "predict": [NOPE, f"{NOPE}/a.jpg"],
    "eval": [NOPE, "--data", f"{NOPE}/d.yaml"],
    "quantize": [NOPE, "--data", f"{NOPE}/imgs"],
    "deploy": [f"{NOPE}/m.onnx", "--data", f"{NOPE}/d.yaml", "--out", f"{NOPE}/o"],
    "prune": ["zoo:no-such-model", "--data", f"{NOPE}/imgs", "--out", f"{NOPE}/o"],
    "distill": [
        *("--teacher", NOPE, "--student", "zoo:detector-p"),
        *("--data", f"{NOPE}/imgs", "--out", f"{NOPE}/o"),
    ],
    "qat": ["zoo:no-such-model", "--data", f"{NOPE}/imgs", "--out", f"{NOPE}/o"],
    "package": [NOPE, "--target", "docker", "--out", f"{NOPE}/pkg"],
    "batch": [NOPE, "--data", f"{NOPE}/imgs", "--out", f"{NOPE}/p.jsonl"],
    "card": [NOPE],
    "bench": [NOPE],
    "tune": [NOPE, "--data", f"{NOPE}/d.yaml"],
    "env": ["--compare", NOPE],
    "demo": ["--out", "{nonempty}"],
    "serve": [NOPE],
    "keygen": [],
    "encrypt": [NOPE, "--key-file", f"{NOPE}/k"],
    "decrypt": [NOPE, "--key-file", f"{NOPE}/k", "--out", f"{NOPE}/o"],
    "sign": [NOPE, "--key", f"{NOPE}/k.pem"],
    "verify": [NOPE, "--public-key", f"{NOPE}/k.pub"],
    "obfuscate": [NOPE],
    "zoo list": ["--bogus-flag-to-fail"],
    "zoo train": ["--model", "no-such-model", "--data", f"{NOPE}/d.yaml"],
    "registry add": [f"{NOPE}/r", NOPE],
    "registry list": [NOPE],
    "registry promote": [NOPE, "m", "v1"],
    "registry rollback": [NOPE, "m"],
    "logs export": [NOPE],
    "logs drift": [NOPE, NOPE],
    "doctor": [NOPE, "--data", f"{NOPE}/d.yaml"],
    "security dev-cert": ["--out", "{file}"],
    "security jwt-keys": ["--db", "{file}"],
    "security jwt-rotate": ["--db", "{file}"],
    "security jwt-retire": ["k1", "--db", "{file}"],
    "users add": ["bad name!", "--db", "{db}"],
    "users list": ["--db", "{file}"],
    "users remove": ["nobody", "--db", "{db}"],
    "users set-role": ["nobody", "admin", "--db", "{db}"],
    "users enrol-totp": ["nobody", "--db", "{db}"],
    "keys create": ["x", "--db", "{file}"],
    "keys list": ["--db", "{file}"],
    "keys revoke": ["nokey", "--db", "{db}"],
    "audit keygen": ["{file}"],
    "audit verify": [f"{NOPE}/audit.log"],
    "audit checkpoint": [f"{NOPE}/audit.log", "--key-file", "{file}", "--out", f"{NOPE}/c"],
    "audit prune": [f"{NOPE}/audit.log", "--keep", "1", "--key-file", "{file}"],
}
"""A failing invocation per command; ``{file}`` is an existing non-database file, ``{db}`` a
fresh database, ``{nonempty}`` a folder that is not the command's."""


def _json_commands() -> list[str]:
    root = typer.main.get_command(app)
    out: list[str] = []

    def walk(cmd: object, prefix: str) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, f"{prefix}{name} ")
            return
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}  # type: ignore[attr-defined]
        if "--json" in opts:
            out.append(prefix.strip())

    walk(root, "")
    return out


def test_every_json_command_has_a_failing_case() -> None:
    missing = sorted(set(_json_commands()) - set(FAILING))
    assert not missing, f"add a failing invocation for: {missing}"


@pytest.mark.parametrize("command", sorted(FAILING))
def test_failure_prints_one_json_error(command: str, tmp_path: Path) -> None:
    given = FAILING[command]
    if given is None:
        pytest.skip(f"{command} takes no input that could be wrong")
    plain = tmp_path / "plain.txt"
    plain.write_text("not what the command expects")
    nonempty = tmp_path / "mine"
    nonempty.mkdir()
    (nonempty / "keep.txt").write_text("keep")
    db = tmp_path / "auth.db"
    args = [
        a.replace("{file}", str(plain))
        .replace("{db}", str(db))
        .replace("{nonempty}", str(nonempty))
        for a in given
    ]
    res = CliRunner().invoke(app, [*command.split(), *args, "--json"])
    if res.exit_code == 2 and res.stdout.strip() == "" and "Usage:" in res.stderr:
        # a usage error (click's, before the command runs): main() adds the JSON object
        with pytest.raises(SystemExit) as exc:
            main([*command.split(), *args, "--json"])
        assert exc.value.code == 2
        return
    assert res.exit_code in (1, 2), (res.exit_code, res.stdout, res.stderr)
    obj = json.loads(res.stdout)  # the whole stdout is one JSON object
    err = obj["error"]
    assert set(err) == {"message", "hint", "exit_code", "type"}
    assert err["exit_code"] == res.exit_code and err["message"]
    assert "error:" in res.stderr  # the human message still goes to stderr


def test_usage_errors_print_the_json_object_too(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["info", "--json"])  # the bundle argument is missing
    assert exc.value.code == 2
    err = json.loads(capsys.readouterr().out)["error"]
    assert err["exit_code"] == 2 and "bundle" in err["message"] and err["type"]
