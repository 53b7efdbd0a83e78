"""Regression tests of the audit log's holes (issue 19: defects 1, 2, 3 and 6's cap).

Each test failed before its fix: a long line stopped every writer from reopening the log,
a second writer broke the chain, and deleting the start of the log or a whole rotated file
went unnoticed.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cvdeploy.cli.main import app
from cvdeploy.errors import AuditUnavailable
from cvdeploy.security import audit as audit_mod
from cvdeploy.security.audit import (
    GENESIS,
    AuditLog,
    load_key,
    read_checkpoints,
    rotated_files,
    verify_log,
    write_key,
)
from cvdeploy.security.audit_format import MAX_STRING
from cvdeploy.security.audit_format import entry_mac as _mac


@pytest.fixture
def key(tmp_path: Path) -> bytes:
    return load_key(write_key(tmp_path / "audit.key"))


def _problems(files: list[Path], key: bytes, **kw: Any) -> list[tuple[str, int | None]]:
    report = verify_log(files, key, **kw)
    return [(p["problem"], p["line"]) for p in report.problems]


def _fill(path: Path, key: bytes, n: int, **kw: Any) -> AuditLog:
    log = AuditLog(path, key, **kw)
    for i in range(n):
        log.record(actor="user:u", action="predict", outcome="ok", target="tiny", n=i)
    return log


# defect 1: one long line stopped every restart ------------------------------------------------
def test_a_huge_method_cannot_stop_a_restart(tmp_path: Path, key: bytes) -> None:
    path = tmp_path / "audit.log"
    log = _fill(path, key, 2)
    entry = log.record(
        actor="anonymous", action="X" * 40_000 + " /v1/x", outcome="refused", method="X" * 40_000
    )
    assert len(entry["action"]) < MAX_STRING + 64 and "more characters" in entry["action"]
    assert max(len(line) for line in path.read_bytes().splitlines()) < 4096
    AuditLog(path, key).record(actor="cli:x", action="key.create", outcome="ok")  # reopens
    assert verify_log([path], key).ok


def test_a_long_last_line_from_an_older_version_is_read(tmp_path: Path, key: bytes) -> None:
    """The tail is read backwards until a whole line is found, however long."""
    path = tmp_path / "audit.log"
    log = _fill(path, key, 1)
    last = json.loads(path.read_text().splitlines()[-1])
    old = {**last, "seq": last["seq"] + 1, "prev": last["mac"], "detail": {"m": "Y" * 200_000}}
    old.pop("mac")
    old["mac"] = _mac(key, old)
    with path.open("a") as f:
        f.write(json.dumps(old, sort_keys=True, separators=(",", ":")) + "\n")
    del log
    again = AuditLog(path, key)
    assert again.record(actor="cli:x", action="a", outcome="ok")["prev"] == old["mac"]
    assert verify_log([path], key).ok


# defect 2: two writers broke the chain --------------------------------------------------------
def test_server_and_cli_writing_one_log_keep_the_chain(tmp_path: Path, key: bytes) -> None:
    path = tmp_path / "audit.log"
    server = _fill(path, key, 1)
    cli = AuditLog(path, key)  # e.g. `cvdeploy keys create ... --audit-log`
    cli.record(actor="cli:root", action="key.create", outcome="ok")
    server.record(actor="user:u", action="predict", outcome="ok")
    cli.record(actor="cli:root", action="key.revoke", outcome="ok")
    server.record(actor="user:u", action="predict", outcome="ok")
    assert _problems([path], key) == []
    assert [json.loads(x)["seq"] for x in path.read_text().splitlines()] == list(range(1, 7))


def _writer(path: str, key: bytes, n: int, who: str) -> None:
    log = AuditLog(path, key, max_bytes=4096)
    for i in range(n):
        log.record(actor=who, action="predict", outcome="ok", n=i)


def test_processes_appending_at_once_keep_the_chain(tmp_path: Path, key: bytes) -> None:
    path = tmp_path / "audit.log"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), key, 40, f"p{i}")) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    files = rotated_files(path)
    report = verify_log(files, key)
    assert report.ok, report.problems
    assert report.entries == 120 + len(files)  # + one header per file


# defect 3: deletions from the start, whole files, the tail -----------------------------------
def test_deleting_the_first_lines_is_found(tmp_path: Path, key: bytes) -> None:
    path = tmp_path / "audit.log"
    _fill(path, key, 5)
    lines = path.read_text().splitlines(keepends=True)
    for cut in (1, 3):  # `sed -i 1d`, and more
        path.write_text("".join(lines[cut:]))
        assert ("head_missing", 1) in _problems([path], key)
    path.write_text("".join(lines))
    assert _problems([path], key) == []


def test_deleting_a_rotated_file_is_found_unless_pruned(tmp_path: Path, key: bytes) -> None:
    path = tmp_path / "audit.log"
    _fill(path, key, 40, max_bytes=2048)
    files = rotated_files(path)
    assert len(files) >= 4
    assert _problems(files, key) == []
    files[0].unlink()  # the oldest
    assert _problems(rotated_files(path), key)[0][0] == "files_missing"
    files[2].unlink()  # and one in the middle
    kinds = {k for k, _ in _problems(rotated_files(path), key)}
    assert "files_missing" in kinds and "chain_broken" in kinds


def test_retention_cap_prunes_with_a_record(tmp_path: Path, key: bytes) -> None:
    path = tmp_path / "audit.log"
    _fill(path, key, 80, max_bytes=2048, max_files=3)
    files = rotated_files(path)
    assert len(files) == 3
    report = verify_log(files, key)
    assert report.ok, report.problems
    assert any("audit.prune" in n for n in report.notes)
    files[0].unlink()  # one more than the prune record names
    assert _problems(rotated_files(path), key)[0][0] == "files_missing"


def test_cli_prune_and_checkpoints_catch_a_cut_tail(tmp_path: Path, key: bytes) -> None:
    key_file = tmp_path / "audit.key"
    path = tmp_path / "audit.log"
    _fill(path, key, 30, max_bytes=2048)
    runner = CliRunner()
    kf = ["--key-file", str(key_file)]
    r = runner.invoke(app, ["audit", "prune", str(path), "--keep", "1", *kf, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["removed"]
    assert len(rotated_files(path)) == 2
    _fill(path, key, 3)  # after the prune record
    ck = tmp_path / "elsewhere" / "checkpoints.jsonl"
    lock = path.with_name("audit.log.lock")
    lock.unlink()
    r = runner.invoke(app, ["audit", "checkpoint", str(path), *kf, "--out", str(ck)])
    assert r.exit_code == 0, r.output
    assert not lock.exists()  # a checkpoint only reads the log (another host can take it)
    assert read_checkpoints(ck, key)[0]["seq"] == verify_log(rotated_files(path), key).last_seq
    r = runner.invoke(app, ["audit", "verify", str(path), *kf, "--checkpoint", str(ck)])
    assert r.exit_code == 0, r.output
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-2]))  # the tail cut off: invisible to the chain alone
    assert verify_log(rotated_files(path), key).ok
    r = runner.invoke(app, ["audit", "verify", str(path), *kf, "--checkpoint", str(ck)])
    assert r.exit_code == 1 and "truncated" in r.stdout


def test_server_checkpoints_while_writing(tmp_path: Path, key: bytes) -> None:
    ck = tmp_path / "anchor" / "ck.jsonl"
    log = _fill(tmp_path / "a.log", key, 3, checkpoint_path=ck, checkpoint_every_s=0)
    cks = read_checkpoints(ck, key)
    assert [c["seq"] for c in cks] == [2, 3, 4]  # after each entry (the header is seq 1)
    assert cks[-1]["mac"] == log.checkpoint()["mac"]
    rec = json.loads(ck.read_text().splitlines()[0])
    rec["seq"] = 99
    ck.write_text(json.dumps(rec) + "\n")
    with pytest.raises(Exception, match="does not verify"):
        read_checkpoints(ck, key)


# crashes and full disks ---------------------------------------------------------------------
def test_a_torn_tail_is_named_then_acknowledged(tmp_path: Path, key: bytes) -> None:
    path = tmp_path / "audit.log"
    _fill(path, key, 3)
    with path.open("ab") as f:
        f.write(b'{"seq":5,"ts":"2026-')  # the writer died mid-line
    n = len(path.read_text().splitlines())
    assert _problems([path], key) == [("torn_tail", n)]
    log = AuditLog(path, key)  # the restarted server
    log.record(actor="user:u", action="predict", outcome="ok")
    report = verify_log([path], key)
    assert report.ok, report.problems
    assert any("cut short" in note for note in report.notes)
    entries = [json.loads(x) for x in path.read_text().splitlines() if x.startswith('{"a')]
    assert entries[-2]["action"] == "audit.recover" and entries[-1]["seq"] == 6


def test_a_full_disk_leaves_the_log_as_it_was(
    tmp_path: Path, key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.log"
    log = _fill(path, key, 2)
    before = path.read_bytes()
    real = os.write

    def half_then_enospc(fd: int, data: Any) -> int:
        if len(data) > 1:
            return real(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audit_mod.os, "write", half_then_enospc)
    with pytest.raises(AuditUnavailable, match="No space left"):
        log.record(actor="user:u", action="predict", outcome="ok")
    monkeypatch.setattr(audit_mod.os, "write", real)
    assert path.read_bytes() == before  # the half line was rolled back
    log.record(actor="user:u", action="predict", outcome="ok")
    assert verify_log([path], key).ok


def test_genesis_is_the_header_of_file_one(tmp_path: Path, key: bytes) -> None:
    path = tmp_path / "audit.log"
    _fill(path, key, 1)
    first = json.loads(path.read_text().splitlines()[0])
    assert first["prev"] == GENESIS and first["detail"] == {"file": 1, "previous_file": None}
