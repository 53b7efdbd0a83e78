"""A tamper-evident audit log: append-only JSON lines chained by HMAC-SHA256.

Each entry holds ``seq``, ``ts`` (UTC), ``actor``, ``action``, ``target``, ``outcome``,
details, ``prev`` (the MAC of the entry before it) and ``mac`` = HMAC(key, the entry
without ``mac`` as canonical JSON). Editing, inserting, deleting or reordering entries
breaks a MAC or the chain, and :func:`verify_log` names the line. The first entry of a
fresh log links to :data:`GENESIS`; rotation renames the file to ``LOG.N`` and the first
entry of the new file links to the last MAC of the old one, so the chain spans files.
Every entry is flushed and ``fsync``-ed before :meth:`AuditLog.record` returns.

What the chain cannot show on its own: entries cut off the *end* of the newest file
(ship the log to a write-once store, or compare ``seq`` with a copy kept elsewhere).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvdeploy.errors import InputError, UsageError

__all__ = [
    "GENESIS",
    "AuditLog",
    "VerifyReport",
    "load_key",
    "rotated_files",
    "verify_log",
    "write_key",
]

GENESIS = "0" * 64


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


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _mac(key: bytes, entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "mac"}
    return hmac.new(key, _canonical(body), hashlib.sha256).hexdigest()


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


class AuditLog:
    """Appends chained entries to ``path`` (thread-safe; one writer process per file).

    Args:
        path: The log file (created if missing; its last entry is read to continue the chain).
        key: The HMAC key (:func:`load_key`).
        max_bytes: Rotate when the file reaches this size.
    """

    def __init__(self, path: Path | str, key: bytes, *, max_bytes: int = 100 * 1024 * 1024) -> None:
        self.path = Path(path)
        self.key = key
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._prev, self._seq = GENESIS, 0
        files = rotated_files(self.path)
        if files:
            last = _last_entry(files[-1])
            if last is not None:
                if not hmac.compare_digest(_mac(key, last), str(last.get("mac", ""))):
                    raise InputError(
                        f"the last entry of audit log {files[-1]} does not verify with this key",
                        hint="check --audit-key-file, then run `cvdeploy audit verify`",
                    )
                self._prev, self._seq = str(last["mac"]), int(last["seq"])
        self.path.parent.mkdir(parents=True, exist_ok=True)

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

        Args:
            actor: Who (``user:alice``, ``key:<id>``, ``anonymous``, ``cli:<login>``).
            action: What (``auth.token``, ``predict``, ``key.create``, ``registry.promote``...).
            outcome: ``ok``, ``denied``, ``failed`` or ``error``.
            target: What it was done to (model, user, key id).
            **detail: Further metadata (JSON-serialisable; never secrets or images).
        """
        with self._lock:
            if self.path.exists() and self.path.stat().st_size >= self.max_bytes:
                self._rotate()
            entry: dict[str, Any] = {
                "seq": self._seq + 1,
                "ts": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
                "actor": actor,
                "action": action,
                "target": target,
                "outcome": outcome,
                "detail": detail,
                "prev": self._prev,
            }
            entry = json.loads(_canonical(entry))  # what is verified is what is written
            entry["mac"] = _mac(self.key, entry)
            line = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self._prev, self._seq = entry["mac"], entry["seq"]
            return entry

    def _rotate(self) -> None:
        n = 1 + max(
            (int(q.name.rsplit(".", 1)[1]) for q in rotated_files(self.path)[:-1]), default=0
        )
        os.replace(self.path, self.path.with_name(f"{self.path.name}.{n}"))


def _last_entry(path: Path) -> dict[str, Any] | None:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        block = min(size, 65536)
        f.seek(size - block)
        lines = f.read().splitlines()
    for raw in reversed(lines):
        if raw.strip():
            try:
                entry = json.loads(raw)
            except ValueError:
                raise InputError(
                    f"the last line of audit log {path} is not JSON",
                    hint="run `cvdeploy audit verify`",
                ) from None
            return entry if isinstance(entry, dict) else None
    return None


@dataclass(slots=True)
class VerifyReport:
    """What :func:`verify_log` found."""

    files: list[str]
    entries: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly."""
        return {
            "ok": self.ok,
            "files": self.files,
            "entries": self.entries,
            "problems": self.problems,
            "notes": self.notes,
        }


def verify_log(files: list[Path], key: bytes) -> VerifyReport:
    """Check the MAC of every entry and the chain across ``files`` (oldest first).

    Each problem names the file and 1-based line: ``mac_mismatch`` (entry edited or
    forged), ``chain_broken`` (an entry before it was deleted, or it was inserted or
    moved), ``bad_seq``, ``not_json``. The first file may start mid-chain (older files
    removed); its first link is then taken as given and mentioned in ``notes``.
    """
    report = VerifyReport([str(f) for f in files])
    prev: str | None = None
    seq: int | None = None
    for path in files:
        try:
            lines = path.read_bytes().splitlines()
        except OSError as exc:
            raise InputError(f"cannot read audit log {path}: {exc}") from None
        for i, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue

            def problem(kind: str, message: str, *, _p: Path = path, _i: int = i) -> None:
                report.problems.append(
                    {"file": str(_p), "line": _i, "problem": kind, "message": message}
                )

            try:
                entry = json.loads(raw)
                if not isinstance(entry, dict):
                    raise ValueError
            except ValueError:
                problem("not_json", "not a JSON object: the line was edited or damaged")
                continue
            report.entries += 1
            stored = str(entry.get("mac", ""))
            if not hmac.compare_digest(_mac(key, entry), stored):
                problem("mac_mismatch", "MAC does not match: the entry was edited or forged")
            link = entry.get("prev")
            if prev is None:
                if link != GENESIS:
                    report.notes.append(f"{path} starts mid-chain (older rotated files absent)")
            elif link != prev:
                problem(
                    "chain_broken",
                    "does not follow the previous entry: an entry was deleted before this "
                    "line, or this entry was inserted or moved",
                )
            cur = entry.get("seq")
            if seq is not None and isinstance(cur, int) and cur != seq + 1:
                problem("bad_seq", f"sequence number {cur} after {seq}")
            prev, seq = stored, cur if isinstance(cur, int) else seq
    return report


def cli_actor() -> str:
    """``cli:<login name>``: how the audit log names a person using the command line."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"
