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


def test_sweep_stale_removes_only_what_dead_processes_left(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from cvdeploy.fsutil import pid_prefix, sweep_stale

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    (tmp_path / f"cvdeploy-onnx2tf-{pid}-abc").mkdir()
    (tmp_path / f"cvdeploy-onnx2tf-{pid}-abc" / "x").write_text("x")
    mine = tmp_path / pid_prefix("cvdeploy-onnx2tf-")
    mine.mkdir()
    (tmp_path / "cvdeploy-onnx2tf-nopid").mkdir()
    removed = sweep_stale(tmp_path, "cvdeploy-onnx2tf-")
    assert [p.name for p in removed] == [f"cvdeploy-onnx2tf-{pid}-abc"]
    assert mine.exists() and (tmp_path / "cvdeploy-onnx2tf-nopid").exists()
    assert str(os.getpid()) in mine.name


def test_a_killed_bundle_swap_is_repaired_by_the_next_edit(tmp_path: Path) -> None:
    """Between the two renames of the fallback swap the bundle is aside: put it back."""
    import shutil

    from cvdeploy.bundle import _recover

    target = tmp_path / "b"
    (target).mkdir()
    (target / "bundle.json").write_text("{}")
    aside = tmp_path / ".b.old-999999999-1"
    shutil.move(target, aside)
    (tmp_path / ".b.staging-999999999-x").mkdir()
    _recover(target)
    assert (target / "bundle.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
