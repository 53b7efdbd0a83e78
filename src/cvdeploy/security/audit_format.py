"""The audit log's line format, shared by its writer (:mod:`cvdeploy.security.audit`) and
its reader (:mod:`cvdeploy.security.audit_verify`): canonical JSON, the entry MAC, the
reserved actions, and the bounds that keep every line small."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

__all__ = [
    "GENESIS",
    "HEADER_ACTION",
    "MAX_STRING",
    "PRUNE_ACTION",
    "RECOVER_ACTION",
    "bounded",
    "canonical",
    "entry_mac",
]

GENESIS = "0" * 64
HEADER_ACTION = "audit.open"
"""The first entry of every file: ``detail.file`` is the file's number (1, 2, ...)."""
PRUNE_ACTION = "audit.prune"
"""Written before old files are removed: ``detail.removed_through_file``."""
RECOVER_ACTION = "audit.recover"
"""Acknowledges a line torn by a crash or a full disk (``detail.torn_offset``)."""
MAX_STRING = 512
"""Longest string kept in an entry (longer ones are cut and marked): lines stay small."""
_MAX_ITEMS = 32
_MAX_DEPTH = 4


def canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def entry_mac(key: bytes, entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "mac"}
    return hmac.new(key, canonical(body), hashlib.sha256).hexdigest()


def bounded(value: Any, depth: int = 0) -> Any:
    """``value`` with long strings cut and large or deep containers trimmed (JSON-safe)."""
    if isinstance(value, str):
        if len(value) <= MAX_STRING:
            return value
        return value[:MAX_STRING] + f"...[{len(value) - MAX_STRING} more characters]"
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return value if abs(value) < 10**18 else bounded(str(value), depth)
    if depth >= _MAX_DEPTH:
        return bounded(repr(value), depth)
    if isinstance(value, dict):
        items = list(value.items())
        out = {str(k)[:64]: bounded(v, depth + 1) for k, v in items[:_MAX_ITEMS]}
        if len(items) > _MAX_ITEMS:
            out["_omitted"] = len(items) - _MAX_ITEMS
        return out
    if isinstance(value, list | tuple | set | frozenset):
        seq = list(value)
        out_list = [bounded(v, depth + 1) for v in seq[:_MAX_ITEMS]]
        if len(seq) > _MAX_ITEMS:
            out_list.append(f"...[{len(seq) - _MAX_ITEMS} more items]")
        return out_list
    return bounded(str(value), depth)
