"""Reading an audit log back: :func:`verify_log` checks every MAC, the chain, the file
headers, prune records and torn lines, and compares the log with checkpoints kept elsewhere
(:func:`read_checkpoints`). Nothing here writes."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvdeploy.errors import InputError
from cvdeploy.jsonsafe import loads as json_loads
from cvdeploy.security.audit_format import (
    GENESIS,
    HEADER_ACTION,
    PRUNE_ACTION,
    RECOVER_ACTION,
    canonical,
    entry_mac,
)

__all__ = ["VerifyReport", "read_checkpoints", "verify_log"]


def read_checkpoints(path: Path | str, key: bytes) -> list[dict[str, Any]]:
    """The checkpoints in a file (one JSON record per line).

    Raises:
        InputError: Missing file, or a record that is not a checkpoint made with ``key``.
    """
    p = Path(path)
    try:
        lines = p.read_bytes().splitlines()
    except OSError as exc:
        raise InputError(f"cannot read checkpoint file {p}: {exc}") from None
    out = []
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            rec = json_loads(raw)
        except (ValueError, RecursionError):
            rec = None
        if not isinstance(rec, dict) or rec.get("kind") != "cvdeploy-audit-checkpoint":
            raise InputError(f"{p}:{i} is not an audit checkpoint")
        body = {k: v for k, v in rec.items() if k != "checkpoint_mac"}
        want = hmac.new(key, canonical(body), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, str(rec.get("checkpoint_mac", ""))):
            raise InputError(
                f"{p}:{i}: the checkpoint does not verify with this key (edited or forged)"
            )
        out.append(rec)
    return out


@dataclass(slots=True)
class VerifyReport:
    """What :func:`verify_log` found."""

    files: list[str]
    entries: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    last_seq: int | None = None

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
            "last_seq": self.last_seq,
            "problems": self.problems,
            "notes": self.notes,
        }


@dataclass(slots=True)
class _Line:
    path: Path
    line: int
    offset: int
    raw: bytes
    complete: bool
    entry: dict[str, Any] | None


def _lines(path: Path) -> list[_Line]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read audit log {path}: {exc}") from None
    out, offset = [], 0
    for i, raw in enumerate(data.split(b"\n"), start=1):
        complete = offset + len(raw) < len(data)
        if raw.strip():
            try:
                entry = json_loads(raw)
            except (ValueError, RecursionError):
                entry = None
            out.append(
                _Line(path, i, offset, raw, complete, entry if isinstance(entry, dict) else None)
            )
        offset += len(raw) + 1
    return out


def verify_log(
    files: Sequence[Path], key: bytes, *, checkpoints: Sequence[dict[str, Any]] = ()
) -> VerifyReport:
    """Check every entry's MAC, the chain, the file headers and the checkpoints.

    ``files`` are oldest first (:func:`rotated_files`). Each problem names the file and
    1-based line: ``mac_mismatch`` (entry edited or forged), ``chain_broken`` (an entry
    before it was deleted, or it was inserted or moved), ``bad_seq``, ``not_json``,
    ``torn_tail`` (the last line was cut short: a crash or a full disk, not yet
    acknowledged by a restarted writer), ``head_missing`` (entries deleted from the start
    of a file), ``files_missing`` (a rotated file removed without an ``audit.prune``
    entry), ``truncated`` / ``checkpoint_mismatch`` (the log ends before a checkpoint, or
    differs from it). Logs written before file headers existed verify as before when
    they start at the first entry (noted).
    """
    report = VerifyReport([str(f) for f in files])
    prev: str | None = None
    seq: int | None = None
    by_seq: dict[int, str] = {}
    first_number: int | None = None
    pruned_through = 0
    headered = False
    last_number: int | None = None

    def problem(at: _Line, kind: str, message: str) -> None:
        report.problems.append(
            {"file": str(at.path), "line": at.line, "problem": kind, "message": message}
        )

    for fi, path in enumerate(files):
        lines = _lines(path)
        last_file = fi == len(files) - 1
        started = False
        for li, ln in enumerate(lines):
            entry = ln.entry
            if entry is None:
                nxt = lines[li + 1].entry if li + 1 < len(lines) else None
                if _acknowledges(nxt, ln):
                    report.notes.append(
                        f"{path}:{ln.line}: a line cut short by a crash or a full disk "
                        f"(acknowledged at line {ln.line + 1})"
                    )
                elif last_file and li == len(lines) - 1 and not ln.complete:
                    problem(
                        ln,
                        "torn_tail",
                        "the last line is incomplete: the writer was killed or the disk "
                        "filled while appending it (a restarted writer acknowledges it)",
                    )
                else:
                    problem(ln, "not_json", "not a JSON object: the line was edited or damaged")
                continue
            report.entries += 1
            stored = str(entry.get("mac", ""))
            if not hmac.compare_digest(entry_mac(key, entry), stored):
                problem(ln, "mac_mismatch", "MAC does not match: the entry was edited or forged")
            is_header = entry.get("action") == HEADER_ACTION and entry.get("actor") == "audit"
            raw_detail = entry.get("detail")
            detail: dict[str, Any] = raw_detail if isinstance(raw_detail, dict) else {}
            number = detail.get("file") if is_header else None
            if not started:  # the start of a file: its header, or (older logs) genesis
                started = True
                if is_header and isinstance(number, int):
                    if fi == 0:
                        first_number = number
                    elif last_number is not None and number != last_number + 1:
                        problem(
                            ln,
                            "files_missing",
                            f"file number {number} follows file {last_number}: "
                            f"files {last_number + 1}..{number - 1} were removed",
                        )
                    headered = True
                    last_number = number
                elif fi == 0 and entry.get("prev") == GENESIS and entry.get("seq") == 1:
                    report.notes.append(
                        f"{path} was written before file headers: the removal of a whole "
                        "rotated file is found by the chain only"
                    )
                    last_number = 1
                elif fi == 0 or headered:
                    problem(
                        ln,
                        "head_missing",
                        "the file does not start with its header entry: entries were "
                        "deleted from its start (or the older files holding the start of "
                        "the chain were removed)",
                    )
                elif last_number is not None:  # a rotated file written before headers
                    last_number += 1
            elif is_header:
                problem(ln, "chain_broken", "a file header in the middle of a file")
            if entry.get("action") == PRUNE_ACTION and entry.get("actor") == "audit":
                through = detail.get("removed_through_file")
                if isinstance(through, int):
                    pruned_through = max(pruned_through, through)
            link = entry.get("prev")
            if prev is not None and link != prev:
                problem(
                    ln,
                    "chain_broken",
                    "does not follow the previous entry: an entry was deleted before this "
                    "line, or this entry was inserted or moved",
                )
            cur = entry.get("seq")
            if seq is not None and isinstance(cur, int) and cur != seq + 1:
                problem(ln, "bad_seq", f"sequence number {cur} after {seq}")
            if isinstance(cur, int):
                by_seq[cur] = stored
            prev, seq = stored, cur if isinstance(cur, int) else seq
    if first_number is not None and first_number > 1:
        if pruned_through >= first_number - 1:
            report.notes.append(
                f"files 1..{first_number - 1} were removed after an audit.prune entry"
            )
        else:
            first = report.files[0]
            report.problems.append(
                {
                    "file": first,
                    "line": 1,
                    "problem": "files_missing",
                    "message": f"the log starts at file {first_number}, but only files "
                    f"up to {pruned_through} were pruned: files "
                    f"{pruned_through + 1}..{first_number - 1} were removed",
                }
            )
    report.last_seq = seq
    _check_checkpoints(report, checkpoints, by_seq, seq)
    return report


def _acknowledges(entry: dict[str, Any] | None, torn: _Line) -> bool:
    if entry is None or entry.get("action") != RECOVER_ACTION or entry.get("actor") != "audit":
        return False
    detail = entry.get("detail") or {}
    return bool(
        detail.get("torn_offset") == torn.offset
        and detail.get("torn_sha256") == hashlib.sha256(torn.raw).hexdigest()
    )


def _check_checkpoints(
    report: VerifyReport,
    checkpoints: Sequence[dict[str, Any]],
    by_seq: dict[int, str],
    last: int | None,
) -> None:
    where = report.files[-1] if report.files else ""
    for ck in checkpoints:
        s, mac = ck.get("seq"), ck.get("mac")
        if not isinstance(s, int):
            continue
        if last is None or s > last:
            report.problems.append(
                {
                    "file": where,
                    "line": None,
                    "problem": "truncated",
                    "message": f"the log ends at entry {last}, but a checkpoint of "
                    f"{ck.get('ts')} recorded entry {s}: entries were cut off its end",
                }
            )
        elif s in by_seq and not hmac.compare_digest(by_seq[s], str(mac)):
            report.problems.append(
                {
                    "file": where,
                    "line": None,
                    "problem": "checkpoint_mismatch",
                    "message": f"entry {s} differs from the checkpoint of {ck.get('ts')}: "
                    "the log was rewritten",
                }
            )
    if checkpoints:
        report.notes.append(f"checked against {len(checkpoints)} checkpoint(s)")
