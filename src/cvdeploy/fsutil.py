"""File writes that never leave a half-written file behind."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


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
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
