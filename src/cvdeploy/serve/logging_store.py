"""Sampled inference logging: inputs, outputs and timings on disk, indexed in SQLite.

A :class:`RequestLog` keeps a configurable fraction of requests: each input image (its
original encoded bytes) under ``LOGDIR/images/`` and a row in ``LOGDIR/index.sqlite`` with
the model, version, outputs and timings. When the stored images exceed the size cap the
oldest entries are removed (rotation). :func:`export_logs` writes a sample out as an image
folder plus ``predictions.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cvdeploy.errors import InputError
from cvdeploy.progress import track

__all__ = ["INDEX", "RequestLog", "export_logs"]

INDEX = "index.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id TEXT PRIMARY KEY,
    time REAL NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    image TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    outputs TEXT NOT NULL,
    timings TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_time ON entries(time);
"""
_EXT = {b"\xff\xd8": ".jpg", b"\x89P": ".png", b"BM": ".bmp", b"RI": ".webp"}


class RequestLog:
    """A sampled, size-capped log of requests.

    Args:
        root: The log directory (created).
        sample_rate: Fraction of requests to keep, 0..1.
        max_bytes: Cap on the stored image bytes; the oldest entries are removed beyond it.
        seed: Seed of the sampling generator (tests).
    """

    def __init__(
        self, root: Path | str, *, sample_rate: float, max_bytes: int, seed: int | None = None
    ) -> None:
        self.root = Path(root)
        self.sample_rate = sample_rate
        self.max_bytes = max_bytes
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        _private_tree(self.root)
        with self._connect() as db:
            db.executescript(_SCHEMA)
        self._bytes = self._stored_bytes()

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.root / INDEX, timeout=10)
        try:
            with db:
                yield db
        finally:
            db.close()

    def _stored_bytes(self) -> int:
        with self._connect() as db:
            row = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM entries").fetchone()
        return int(row[0])

    def sample(self) -> bool:
        """Decide whether the current request is logged."""
        return self.sample_rate > 0 and self._rng.random() < self.sample_rate

    def write(
        self,
        *,
        model: str,
        version: str,
        image: bytes,
        size: tuple[int, int],
        outputs: Any,
        timings: dict[str, float],
    ) -> str:
        """Store one image with its outputs; thread-safe. Returns the entry id.

        Args:
            model: Model name.
            version: Model version.
            image: The encoded image as received.
            size: ``(width, height)`` of the decoded image.
            outputs: JSON-able predictions.
            timings: Milliseconds per stage.
        """
        entry_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}"
        name = entry_id + _EXT.get(image[:2], ".img")
        with self._lock:
            fd = os.open(self.root / "images" / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(image)
            with self._connect() as db:
                db.execute(
                    "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        entry_id,
                        time.time(),
                        model,
                        version,
                        f"images/{name}",
                        len(image),
                        size[0],
                        size[1],
                        json.dumps(outputs),
                        json.dumps(timings),
                    ),
                )
            self._bytes += len(image)
            if self._bytes > self.max_bytes:
                self._rotate()
        return entry_id

    def _rotate(self) -> None:
        """Remove the oldest entries until the stored bytes are under 90 % of the cap."""
        target = int(self.max_bytes * 0.9)
        with self._connect() as db:
            rows = db.execute("SELECT id, image, bytes FROM entries ORDER BY time").fetchall()
            drop = []
            for entry_id, image, nbytes in rows:
                if self._bytes <= target:
                    break
                drop.append(entry_id)
                (self.root / image).unlink(missing_ok=True)
                self._bytes -= int(nbytes)
            db.executemany("DELETE FROM entries WHERE id = ?", [(d,) for d in drop])

    def entries(self, *, limit: int | None = None) -> list[dict[str, Any]]:
        """The newest entries first."""
        return read_entries(self.root, limit=limit)


def _private_tree(root: Path) -> None:
    """The log folder, its ``images/`` and the index, readable by the server's user only.

    Sampled requests are user data: folders 0700 and files 0600 whatever the umask, also
    for a folder made by an older version (its files are tightened once, here). SQLite
    creates its journal files with the index's mode.
    """
    images = root / "images"
    for d in (root, images):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)
    index = root / INDEX
    os.close(os.open(index, os.O_WRONLY | os.O_CREAT, 0o600))
    for p in [index, *(root / f"{INDEX}{x}" for x in ("-journal", "-wal", "-shm"))]:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(p, 0o600)
    with os.scandir(images) as it:
        for e in it:
            if e.is_file(follow_symlinks=False) and e.stat().st_mode & 0o077:
                os.chmod(e.path, 0o600)


def read_entries(root: Path, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Entries of a log directory, newest first.

    Raises:
        InputError: ``root`` holds no request log.
    """
    index = Path(root) / INDEX
    if not index.is_file():
        raise InputError(
            f"{root} is not a request log (no {INDEX})",
            hint="pass the --log-dir the server was started with",
        )
    db = sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=10)
    try:
        sql = "SELECT * FROM entries ORDER BY time DESC"
        params: Sequence[Any] = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (limit,)
        cur = db.execute(sql, params)
        cols = [c[0] for c in cur.description]
        rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    finally:
        db.close()
    for r in rows:
        r["outputs"] = json.loads(r["outputs"])
        r["timings"] = json.loads(r["timings"])
    return rows


def export_logs(
    root: Path | str, out: Path | str, *, limit: int | None = None, progress: bool = False
) -> dict[str, Any]:
    """Write logged requests out as an image folder plus ``predictions.json``.

    Args:
        root: The log directory.
        out: The folder to create (must not exist or be empty).
        limit: Most entries to export (newest first).
        progress: Show a progress bar on stderr.

    Returns:
        A summary: the folder, how many images, the predictions file.

    Raises:
        InputError: No log at ``root``, or ``out`` exists and is not empty.
    """
    root, out = Path(root), Path(out)
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit}")
    rows = read_entries(root, limit=limit)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} exists and is not empty", hint="choose a new --out folder")
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for r in track(rows, total=len(rows), description="exporting", enabled=progress):
        src = root / r["image"]
        if not src.is_file():  # rotated out between the query and the copy
            continue
        dst = out / "images" / src.name
        shutil.copyfile(src, dst)
        records.append(
            {
                "id": r["id"],
                "time": r["time"],
                "model": r["model"],
                "version": r["version"],
                "image": f"images/{src.name}",
                "width": r["width"],
                "height": r["height"],
                "predictions": r["outputs"],
                "timings_ms": r["timings"],
            }
        )
    (out / "predictions.json").write_text(json.dumps(records, indent=2), encoding="utf-8")
    return {"out": str(out), "images": len(records), "predictions": str(out / "predictions.json")}
