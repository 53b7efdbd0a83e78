"""File writes that never leave a half-written file behind."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from cvdeploy.failpoints import failpoint


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` all at once: a temporary file beside it, fsync, rename.

    A reader sees the old file or the new one, never a partial one; on any failure the
    temporary file is removed and the old file is left as it was.

    Args:
        path: The file (its folder is created).
        data: The whole content.
        mode: Permission bits of the new file (``0o600`` for secrets; the umask applies, as
            for ``open``), given when it is created, before any byte is written.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        failpoint("fsutil.write_atomic.written")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def pid_prefix(prefix: str) -> str:
    """``prefix`` + this process's id + ``-``: temporary names that :func:`sweep_stale` can
    tell apart from those of a live process."""
    return f"{prefix}{os.getpid()}-"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_stale(parent: Path, prefix: str) -> list[Path]:
    """Remove ``parent/prefix<pid>-*`` files and folders whose process is gone.

    A process killed while working (``kill -9``, a crash) cannot clean its temporary files
    up; the next run does, here. Entries of live processes (this one included) are kept.

    Returns:
        What was removed.
    """
    import shutil

    removed: list[Path] = []
    try:
        entries = list(Path(parent).glob(prefix + "*"))
    except OSError:
        return removed
    for p in entries:
        pid = p.name[len(prefix) :].split("-", 1)[0]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    return removed
