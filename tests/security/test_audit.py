"""The HMAC-chained audit log: every kind of tampering is found and located."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cvdeploy.cli.main import app
from cvdeploy.errors import InputError, UsageError
from cvdeploy.security.audit import (
    GENESIS,
    HEADER_ACTION,
    AuditLog,
    load_key,
    rotated_files,
    verify_log,
    write_key,
)


@pytest.fixture
def log(tmp_path: Path) -> tuple[Path, Path]:
    key_file = write_key(tmp_path / "audit.key")
    path = tmp_path / "audit.log"
    audit = AuditLog(path, load_key(key_file))
    for i in range(6):
        audit.record(actor=f"user:u{i}", action="predict", outcome="ok", target="tiny", n=i)
    return path, key_file


def _lines(p: Path) -> list[str]:
    return p.read_text().splitlines()


def _write(p: Path, lines: list[str]) -> None:
    p.write_text("".join(line + "\n" for line in lines))


def _verify(path: Path, key_file: Path) -> tuple[bool, list[tuple[int, str]]]:
    report = verify_log([path], load_key(key_file))
    return report.ok, [(p["line"], p["problem"]) for p in report.problems]


def test_intact_log_verifies_and_chains(log: tuple[Path, Path]) -> None:
    path, key_file = log
    entries = [json.loads(x) for x in _lines(path)]
    assert entries[0]["prev"] == GENESIS and [e["seq"] for e in entries] == list(range(1, 8))
    assert entries[0]["action"] == HEADER_ACTION and entries[0]["detail"]["file"] == 1
    assert all(b["prev"] == a["mac"] for a, b in itertools.pairwise(entries))
    assert _verify(path, key_file) == (True, [])
    assert (path.stat().st_mode & 0o777) == 0o600


def test_edit_is_found_at_its_line(log: tuple[Path, Path]) -> None:
    path, key_file = log
    lines = _lines(path)
    lines[2] = lines[2].replace('"outcome":"ok"', '"outcome":"denied"')
    _write(path, lines)
    assert _verify(path, key_file) == (False, [(3, "mac_mismatch")])


def test_deletion_is_found_at_the_next_line(log: tuple[Path, Path]) -> None:
    path, key_file = log
    lines = _lines(path)
    del lines[3]
    _write(path, lines)
    ok, problems = _verify(path, key_file)
    assert not ok and problems[0] == (4, "chain_broken")


def test_forged_and_duplicated_insertions_are_found(log: tuple[Path, Path]) -> None:
    path, key_file = log
    lines = _lines(path)
    forged = json.loads(lines[1])
    forged["actor"] = "user:mallory"
    _write(path, [*lines[:2], json.dumps(forged), *lines[2:]])
    ok, problems = _verify(path, key_file)
    assert not ok and (3, "mac_mismatch") in problems and (3, "chain_broken") in problems
    _write(path, [*lines[:4], lines[1], *lines[4:]])  # a valid entry copied elsewhere
    ok, problems = _verify(path, key_file)
    assert not ok and problems[0] == (5, "chain_broken")


def test_reordering_is_found(log: tuple[Path, Path]) -> None:
    path, key_file = log
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    _write(path, lines)
    ok, problems = _verify(path, key_file)
    assert not ok and problems[0] == (2, "chain_broken")


def test_wrong_key_fails_every_entry(log: tuple[Path, Path], tmp_path: Path) -> None:
    path, _ = log
    other = write_key(tmp_path / "other.key")
    ok, problems = _verify(path, other)
    assert not ok and len(problems) == 7  # the header and the six entries
    with pytest.raises(InputError, match="does not verify"):
        AuditLog(path, load_key(other))  # a server never appends with the wrong key


def test_rotation_keeps_the_chain_and_reopen_continues(tmp_path: Path) -> None:
    key_file = write_key(tmp_path / "k")
    path = tmp_path / "a.log"
    audit = AuditLog(path, load_key(key_file), max_bytes=1024)
    for i in range(20):
        audit.record(actor="cli:x", action="key.create", outcome="ok", target=f"k{i}")
    audit = AuditLog(path, load_key(key_file), max_bytes=1024)  # a restarted server
    audit.record(actor="cli:x", action="key.revoke", outcome="ok", target="k0")
    files = rotated_files(path)
    assert len(files) >= 3 and files[-1] == path
    report = verify_log(files, load_key(key_file))
    assert report.ok and report.entries == 21 + len(files), report.problems  # + a header each
    first_new = json.loads(_lines(files[1])[0])
    assert first_new["action"] == HEADER_ACTION and first_new["detail"]["file"] == 2
    assert first_new["prev"] == json.loads(_lines(files[0])[-1])["mac"]
    # the newest file alone: the files before it are missing (nothing recorded pruning them)
    alone = verify_log([path], load_key(key_file))
    assert not alone.ok and alone.problems[0]["problem"] == "files_missing"
    # deleting a whole rotated file in the middle breaks the chain
    report = verify_log([files[0], *files[2:]], load_key(key_file))
    assert not report.ok and report.problems[0]["file"] == str(files[2])


def test_cli_keygen_and_verify(log: tuple[Path, Path], tmp_path: Path) -> None:
    path, key_file = log
    runner = CliRunner()
    r = runner.invoke(app, ["audit", "verify", str(path), "--key-file", str(key_file), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["entries"] == 7
    lines = _lines(path)
    lines[4] = lines[4].replace('"n":3', '"n":5')
    _write(path, lines)
    r = runner.invoke(app, ["audit", "verify", str(path), "--key-file", str(key_file)])
    assert r.exit_code == 1
    assert f"{path}:5: mac_mismatch" in r.stdout
    assert "line 5" in r.stderr
    r = runner.invoke(app, ["audit", "keygen", str(key_file)])
    assert r.exit_code == 2 and "exists" in r.stderr
    r = runner.invoke(
        app, ["audit", "verify", str(tmp_path / "none.log"), "--key-file", str(key_file)]
    )
    assert r.exit_code == 2
    with pytest.raises(UsageError):
        write_key(key_file)
