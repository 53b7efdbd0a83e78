"""write_atomic: all or nothing, with the requested permission bits."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cvdeploy import fsutil
from cvdeploy.fsutil import write_atomic


def test_writes_replaces_and_sets_the_mode(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "secret.key"
    assert write_atomic(p, b"one", mode=0o600) == p
    assert p.read_bytes() == b"one"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600 & ~_umask()
    write_atomic(p, b"two", mode=0o600)
    assert p.read_bytes() == b"two"
    assert [x.name for x in p.parent.iterdir()] == ["secret.key"]  # no temporary left


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "state.json"
    write_atomic(p, b"old")

    def fail(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(fsutil.os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(p, b"new")
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["state.json"]


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old
