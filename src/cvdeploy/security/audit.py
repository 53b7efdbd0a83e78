"""A tamper-evident audit log: append-only JSON lines chained by HMAC-SHA256.

Each entry holds ``seq``, ``ts`` (UTC), ``actor``, ``action``, ``target``, ``outcome``,
details, ``prev`` (the MAC of the entry before it) and ``mac`` = HMAC(key, the entry
without ``mac`` as canonical JSON). Editing, inserting, deleting or reordering entries
breaks a MAC or the chain, and :func:`verify_log` names the line.

**Anchors.** Every file starts with a header entry (``audit.open``) naming its file number;
the first file's header links to :data:`GENESIS`. Rotation renames the file to ``LOG.N``
(N its number) and the next file's header links to the last MAC of the old one, so the
chain spans files. Deleting entries from the start of a file removes its header, and
deleting a whole rotated file leaves a gap in the numbers: both are reported. Old files
are removed only after an ``audit.prune`` entry naming them (the retention cap,
``max_files``, or ``cvdeploy audit prune``), so a removal by anyone without the key is
found too.

**Writers.** Several processes may append to one log (the server and ``cvdeploy keys ...
--audit-log``): each append takes an exclusive ``flock`` on ``LOG.lock`` and re-reads the
tail under it when another writer moved it. Every entry is flushed and ``fsync``-ed
before :meth:`AuditLog.record` returns; a failed write (disk full) is rolled back and
raises :class:`~cvdeploy.errors.AuditUnavailable`, and a line torn by a crash is
acknowledged by an ``audit.recover`` entry when the log is next written.

What the chain cannot show on its own: entries cut off the *end* of the newest file.
Checkpoints (:func:`write_checkpoint`, or ``checkpoint_path`` here) are the external
anchor: keep them elsewhere (another host, write-once storage) and pass them to
:func:`verify_log`, which then reports a log that ends before a checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cvdeploy.errors import AuditUnavailable, InputError, UsageError
from cvdeploy.failpoints import armed, failpoint
from cvdeploy.jsonsafe import loads as json_loads
from cvdeploy.security.audit_format import (
    GENESIS,
    HEADER_ACTION,
    PRUNE_ACTION,
    RECOVER_ACTION,
    bounded,
    canonical,
    entry_mac,
)
from cvdeploy.security.audit_verify import VerifyReport, read_checkpoints, verify_log

_BLOCK = 65536

__all__ = [
    "GENESIS",
    "HEADER_ACTION",
    "PRUNE_ACTION",
    "RECOVER_ACTION",
    "AuditLog",
    "VerifyReport",
    "load_key",
    "prune",
    "read_checkpoints",
    "rotated_files",
    "verify_log",
    "write_checkpoint",
    "write_key",
]


def write_key(path: Path | str) -> Path:
    """Write a new random 256-bit audit key (hex) to ``path`` with mode 0600.

    Raises:
        UsageError: The file exists (replacing the key would orphan the existing log).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        raise UsageError(
            f"{p} exists", hint="keep the existing key, or choose a new path"
        ) from None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return p


def load_key(path: Path | str) -> bytes:
    """Read an audit key file (hex, at least 128 bits).

    Raises:
        InputError: Missing or malformed.
    """
    p = Path(path)
    try:
        raw = p.read_text(encoding="ascii").strip()
        key = bytes.fromhex(raw)
    except FileNotFoundError:
        raise InputError(
            f"audit key file {p} does not exist", hint="cvdeploy audit keygen FILE"
        ) from None
    except (ValueError, UnicodeDecodeError):
        raise InputError(
            f"audit key file {p} is not a hex key", hint="cvdeploy audit keygen FILE"
        ) from None
    if len(key) < 16:
        raise InputError(f"audit key in {p} is shorter than 128 bits")
    return key


def rotated_files(path: Path | str) -> list[Path]:
    """``LOG.1``, ``LOG.2``, ... (oldest first) then ``LOG`` itself if present."""
    p = Path(path)
    numbered = []
    for q in p.parent.glob(p.name + ".*"):
        suffix = q.name[len(p.name) + 1 :]
        if suffix.isdigit():
            numbered.append((int(suffix), q))
    files = [q for _, q in sorted(numbered)]
    return files + ([p] if p.exists() else [])


def _file_number(path: Path, log: Path) -> int | None:
    suffix = path.name[len(log.name) + 1 :]
    return int(suffix) if path != log and suffix.isdigit() else None


# reading the ends of a file ------------------------------------------------------------------
def _first_line(path: Path) -> bytes:
    """The first line of a file (read in blocks: no limit on its length)."""
    parts = []
    with path.open("rb") as f:
        while True:
            block = f.read(_BLOCK)
            if not block:
                break
            cut = block.find(b"\n")
            if cut >= 0:
                parts.append(block[:cut])
                break
            parts.append(block)
    return b"".join(parts)


def _tail(path: Path) -> tuple[bytes | None, int, bytes]:
    """The last complete line, the offset where what follows it starts, and that rest.

    The rest is empty when the file ends with a newline, else it is a line torn by a
    crash or a full disk. Reads backwards in blocks until a whole line is found, however
    long it is.
    """
    with path.open("rb") as f:
        pos = f.seek(0, os.SEEK_END)
        buf = b""
        while True:
            nl = buf.rfind(b"\n")
            before = buf.rfind(b"\n", 0, nl) if nl > 0 else -1
            if (nl >= 0 and before >= 0) or pos == 0:
                break
            step = min(_BLOCK, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf
    if nl < 0:  # no newline at all: the whole file is one torn line
        return None, 0, buf
    line = buf[before + 1 : nl]
    return (line if line.strip() else None), pos + nl + 1, buf[nl + 1 :]


def _parse(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        entry = json_loads(raw)
    except (ValueError, RecursionError):
        entry = None
    if not isinstance(entry, dict):
        raise InputError(
            f"the last line of audit log {path} is not JSON",
            hint="run `cvdeploy audit verify` to see what changed",
        )
    return entry


class AuditLog:
    """Appends chained entries to ``path``; safe across threads and processes.

    Args:
        path: The log file (created on the first entry; an existing chain is continued).
        key: The HMAC key (:func:`load_key`).
        max_bytes: Rotate when the file reaches this size.
        max_files: Keep at most this many files (the current one included); older ones
            are removed after an ``audit.prune`` entry names them. ``None``: keep all.
        checkpoint_path: Append a checkpoint (:func:`write_checkpoint`'s record) to this
            file every ``checkpoint_every_s`` seconds while entries are written: put it on
            another volume or host, the external anchor against a truncated tail.
        checkpoint_every_s: Seconds between checkpoints.
        clock: Wall-clock seconds (tests).

    Raises:
        InputError: The last entry does not verify with ``key`` or is not JSON.
    """

    def __init__(
        self,
        path: Path | str,
        key: bytes,
        *,
        max_bytes: int = 100 * 1024 * 1024,
        max_files: int | None = None,
        checkpoint_path: Path | str | None = None,
        checkpoint_every_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_files is not None and max_files < 2:
            raise UsageError("the audit log keeps at least 2 files (max_files >= 2)")
        self.path = Path(path)
        self.key = key
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self.checkpoint_every_s = checkpoint_every_s
        self.clock = clock
        self._lock = threading.Lock()
        self._prev, self._seq, self._number = GENESIS, 0, 1
        self._seen: tuple[int, int] | None = None  # (inode, size) after our last write
        self._torn: tuple[int, bytes] | None = None
        self._last_checkpoint = 0.0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            self._sync()

    # locking and the tail ------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _sync(self) -> None:
        """Continue from the log's tail as it is now (another writer may have appended)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            st = None
        if st is not None and self._seen == (st.st_ino, st.st_size):
            return
        self._torn = None
        if st is None:  # no current file: continue after the newest rotated one, if any
            files = rotated_files(self.path)
            self._prev, self._seq, self._number = GENESIS, 0, 1
            if files:
                last = self._verified_tail(files[-1])
                if last is not None:
                    self._prev, self._seq = str(last["mac"]), int(last["seq"])
                number = _file_number(files[-1], self.path)
                self._number = (number or len(files)) + 1
            self._seen = None
            return
        last = self._verified_tail(self.path)
        if last is None:
            self._prev, self._seq = GENESIS, 0
            older = rotated_files(self.path)[:-1]
            if older:
                prev = self._verified_tail(older[-1])
                if prev is not None:
                    self._prev, self._seq = str(prev["mac"]), int(prev["seq"])
        else:
            self._prev, self._seq = str(last["mac"]), int(last["seq"])
        self._number = self._current_number()
        self._seen = (st.st_ino, st.st_size) if self._torn is None else None

    def _verified_tail(self, path: Path) -> dict[str, Any] | None:
        line, torn_at, rest = _tail(path)
        if path == self.path and rest:
            self._torn = (torn_at, rest)
        if line is None:
            return None
        entry = _parse(line, path)
        if not hmac.compare_digest(entry_mac(self.key, entry), str(entry.get("mac", ""))):
            raise InputError(
                f"the last entry of audit log {path} does not verify with this key",
                hint="check --audit-key-file, then run `cvdeploy audit verify`",
            )
        return entry

    def _current_number(self) -> int:
        number = _header_number(self.path)
        if number is not None:
            return number
        numbers = [_file_number(q, self.path) for q in rotated_files(self.path)[:-1]]
        return 1 + max((n for n in numbers if n is not None), default=0)

    # writing ----------------------------------------------------------------------------
    def record(
        self,
        *,
        actor: str,
        action: str,
        outcome: str,
        target: str | None = None,
        **detail: Any,
    ) -> dict[str, Any]:
        """Append one entry and fsync it; returns the entry.

        Strings longer than :data:`MAX_STRING` and containers beyond 32 items are cut
        (and marked as cut), so no caller can write a line large enough to hurt readers.

        Args:
            actor: Who (``user:alice``, ``key:<id>``, ``anonymous``, ``cli:<login>``).
            action: What (``auth.token``, ``predict``, ``key.create``, ``registry.promote``...).
            outcome: ``ok``, ``denied``, ``refused``, ``started``, ``failed`` or ``error``.
            target: What it was done to (model, user, key id).
            **detail: Further metadata (JSON-serialisable; never secrets or images).

        Raises:
            AuditUnavailable: The entry could not be written (disk full, I/O error): the
                file is left as it was before the call.
        """
        with self._lock, self._locked():
            self._sync()
            if self._torn is not None:
                self._recover()
            if self.path.exists() and self.path.stat().st_size >= self.max_bytes:
                self._rotate()
            if not self.path.exists():
                self._header()
            entry = self._append(actor, action, outcome, target, detail)
            self._maybe_checkpoint()
            return entry

    def _append(
        self, actor: str, action: str, outcome: str, target: str | None, detail: dict[str, Any]
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "seq": self._seq + 1,
            "ts": dt.datetime.fromtimestamp(self.clock(), dt.UTC).isoformat(
                timespec="microseconds"
            ),
            "actor": bounded(actor),
            "action": bounded(action),
            "target": bounded(target),
            "outcome": bounded(outcome),
            "detail": bounded(detail),
            "prev": self._prev,
        }
        entry = json.loads(canonical(entry))  # what is verified is what is written
        entry["mac"] = entry_mac(self.key, entry)
        data = (json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AuditUnavailable(f"cannot open audit log {self.path}: {exc}") from None
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                if armed("audit.append.partial"):  # fault tests: a torn write, then death
                    os.write(fd, data[: len(data) // 2])
                    failpoint("audit.append.partial")
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)  # no torn line left behind
                    os.fsync(fd)
                raise AuditUnavailable(
                    f"cannot write to audit log {self.path}: {exc.strerror or exc}",
                    hint="free space on the log's volume (or check its permissions)",
                ) from None
            st = os.fstat(fd)
        finally:
            os.close(fd)
        self._prev, self._seq = entry["mac"], entry["seq"]
        self._seen = (st.st_ino, st.st_size)
        return entry

    def _header(self) -> None:
        self._append(
            "audit",
            HEADER_ACTION,
            "ok",
            None,
            {"file": self._number, "previous_file": self._number - 1 or None},
        )

    def _recover(self) -> None:
        """Close a torn last line with a newline and acknowledge it in the chain."""
        assert self._torn is not None
        offset, rest = self._torn
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"\n")
            os.fsync(fd)
        except OSError as exc:
            raise AuditUnavailable(f"cannot write to audit log {self.path}: {exc}") from None
        finally:
            os.close(fd)
        self._torn = None
        self._append(
            "audit",
            RECOVER_ACTION,
            "ok",
            None,
            {
                "torn_offset": offset,
                "torn_bytes": len(rest),
                "torn_sha256": hashlib.sha256(rest).hexdigest(),
                "reason": "a line was cut short (writer killed or disk full)",
            },
        )

    def _rotate(self) -> None:
        n = self._number
        while self.path.with_name(f"{self.path.name}.{n}").exists():
            n += 1  # never replace a rotated file (names written by older versions)
        os.replace(self.path, self.path.with_name(f"{self.path.name}.{n}"))
        self._number += 1
        self._seen = None
        self._header()
        if self.max_files is not None:
            old = rotated_files(self.path)[:-1]
            excess = old[: max(0, len(old) + 1 - self.max_files)]
            if excess:
                self._prune(excess)

    def _prune(self, files: list[Path]) -> None:
        """Name the files in an ``audit.prune`` entry, then remove them (oldest first)."""
        try:
            last = self._verified_tail(files[-1])
        except InputError:
            last = None
        number = _file_number(files[-1], self.path)
        self._append(
            "audit",
            PRUNE_ACTION,
            "ok",
            None,
            {
                "removed_through_file": number,
                "removed_through_seq": None if last is None else last.get("seq"),
                "files": [f.name for f in files],
            },
        )
        for f in files:
            f.unlink(missing_ok=True)

    def prune(self, *, keep: int) -> list[str]:
        """Remove all but the ``keep`` newest rotated files (recorded first).

        Returns:
            The names of the removed files.
        """
        if keep < 0:
            raise UsageError("--keep must be >= 0")
        with self._lock, self._locked():
            self._sync()
            if self._torn is not None:
                self._recover()
            if not self.path.exists():
                self._header()
            old = rotated_files(self.path)[:-1]
            excess = old[: max(0, len(old) - keep)]
            if excess:
                self._prune(excess)
            return [f.name for f in excess]

    # checkpoints ---------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """The checkpoint record of the newest entry (see :func:`write_checkpoint`)."""
        with self._lock, self._locked():
            self._sync()
            return _checkpoint(self.key, self._seq, self._prev, self._number, self.clock())

    def _maybe_checkpoint(self) -> None:
        if self.checkpoint_path is None:
            return
        now = time.monotonic()
        if now - self._last_checkpoint < self.checkpoint_every_s and self._last_checkpoint:
            return
        self._last_checkpoint = now
        record = _checkpoint(self.key, self._seq, self._prev, self._number, self.clock())
        _append_line(self.checkpoint_path, record)


def _checkpoint(key: bytes, seq: int, mac: str, number: int, now: float) -> dict[str, Any]:
    record: dict[str, Any] = {
        "kind": "cvdeploy-audit-checkpoint",
        "seq": seq,
        "mac": mac,
        "file": number,
        "ts": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="seconds"),
    }
    record["checkpoint_mac"] = hmac.new(key, canonical(record), hashlib.sha256).hexdigest()
    return record


def _append_line(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(log: Path | str, key: bytes, out: Path | str) -> dict[str, Any]:
    """Append a checkpoint of ``log``'s newest entry (seq and MAC, itself MAC'd) to ``out``.

    Run it on a schedule from another host, or keep ``out`` on write-once storage: a log
    that later ends before a checkpoint's ``seq``, or holds another entry there, was cut
    or rewritten (``cvdeploy audit verify --checkpoint``).

    Raises:
        InputError: The log does not exist or its last entry does not verify.
    """
    files = rotated_files(log)
    if not files:
        raise InputError(f"audit log {log} does not exist")
    # read only (no lock, nothing written next to the log): a reader on another host can
    # take checkpoints; a torn last line is skipped, as a writer would
    for path in reversed(files):
        line, _, _ = _tail(path)
        if line is None:
            continue
        entry = _parse(line, path)
        if not hmac.compare_digest(entry_mac(key, entry), str(entry.get("mac", ""))):
            raise InputError(
                f"the last entry of audit log {path} does not verify with this key",
                hint="check --key-file, then run `cvdeploy audit verify`",
            )
        number = _header_number(path) or _file_number(path, Path(log)) or len(files)
        record = _checkpoint(key, int(entry["seq"]), str(entry["mac"]), number, time.time())
        _append_line(Path(out), record)
        return record
    raise InputError(f"audit log {log} holds no entry yet")


def _header_number(path: Path) -> int | None:
    """The file number its header entry names (``None`` without a header)."""
    try:
        first = json_loads(_first_line(path))
    except (ValueError, RecursionError, OSError):
        return None
    if isinstance(first, dict) and first.get("action") == HEADER_ACTION:
        number = (first.get("detail") or {}).get("file")
        if isinstance(number, int) and number >= 1:
            return number
    return None


def prune(log: Path | str, key: bytes, *, keep: int) -> list[str]:
    """Remove all but the ``keep`` newest rotated files of ``log``, recorded first."""
    return AuditLog(log, key).prune(keep=keep)


def cli_actor() -> str:
    """``cli:<login name>``: how the audit log names a person using the command line."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"
