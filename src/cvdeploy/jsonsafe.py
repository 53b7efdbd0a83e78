"""``json.loads`` for files and bodies cvdeploy did not write itself: depth checked first.

Python's JSON decoder recurses once per nesting level. Its recursion limit normally turns a
document nested 100,000 levels deep into a ``RecursionError``, but some libraries raise the
limit for the whole process (onnx2tf, imported by the TFLite export, sets it to 2**31 - 1 at
import), and then such a document overflows the C stack: a segmentation fault, not an error.
:func:`loads` scans the nesting first (two regular expressions, linear, in C) and refuses
anything deeper than ``max_depth`` with a ``ValueError``, which callers already catch as
"not valid JSON".
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["MAX_DEPTH", "depth_ok", "loads"]

MAX_DEPTH = 64
"""Deepest nesting accepted by default (bundle manifests nest about 8 levels)."""

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(rb"[\[\]{}]")


def depth_ok(data: bytes | str, max_depth: int = MAX_DEPTH) -> bool:
    """Whether the brackets of ``data`` nest at most ``max_depth`` deep (strings skipped)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    depth = 0
    for m in _BRACKETS.finditer(_STRING.sub(b"", raw)):
        if m.group() in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                return False
        else:
            depth -= 1
    return True


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` after the depth check.

    Raises:
        ValueError: Not JSON (``json.JSONDecodeError``), not UTF-8, a number too long to
            convert, or nested deeper than ``max_depth``.
    """
    if not depth_ok(data, max_depth):
        raise ValueError(f"nested deeper than {max_depth} levels")
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("nested too deeply") from None
