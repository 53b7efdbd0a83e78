"""A small registry of named, lazily imported implementations (runtimes, exporters...).

Each entry names its implementation as ``"module:attribute"`` and the import names it
needs. Nothing heavy is imported until :meth:`Registry.get` is called, and a missing
optional dependency makes the entry *unavailable* with an install hint instead of failing
at import time.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cvdeploy.errors import BackendUnavailable, UsageError


@dataclass(frozen=True, slots=True)
class Entry:
    """One registered implementation."""

    name: str
    target: str
    requires: tuple[str, ...] = ()
    extra: str | None = None
    description: str = ""
    check: Callable[[], str | None] | None = field(default=None, compare=False)
    """Extra availability check (e.g. a GPU); returns a reason when unavailable."""


@dataclass(frozen=True, slots=True)
class Availability:
    """Whether an entry can be used here, and why not."""

    name: str
    available: bool
    reason: str | None
    description: str


class Registry:
    """Named implementations of one kind (``runtime``, ``exporter``...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(
        self,
        name: str,
        target: str,
        *,
        requires: tuple[str, ...] = (),
        extra: str | None = None,
        description: str = "",
        check: Callable[[], str | None] | None = None,
    ) -> None:
        """Register ``target`` (``"module:attr"``) under ``name``."""
        self._entries[name] = Entry(name, target, requires, extra, description, check)

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def entry(self, name: str) -> Entry:
        """The entry for ``name``; unknown names raise a :class:`UsageError` listing them."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self._entries) or "none"
            raise UsageError(f"unknown {self.kind} {name!r} (known: {known})") from None

    def availability(self, name: str) -> Availability:
        """Check, without importing the implementation, whether ``name`` can run here."""
        e = self.entry(name)
        missing = [m for m in e.requires if importlib.util.find_spec(m) is None]
        if missing:
            how = (
                f"pip install 'cvdeploy[{e.extra}]'"
                if e.extra
                else f"pip install {' '.join(missing)}"
            )
            return Availability(
                name, False, f"unavailable: {how} (missing {', '.join(missing)})", e.description
            )
        if e.check is not None:
            reason = e.check()
            if reason:
                return Availability(name, False, f"unavailable: {reason}", e.description)
        return Availability(name, True, None, e.description)

    def list(self) -> list[Availability]:
        """Availability of every entry."""
        return [self.availability(n) for n in self._entries]

    def get(self, name: str) -> Any:
        """Import and return the implementation registered under ``name``.

        Raises:
            UsageError: ``name`` is not registered.
            BackendUnavailable: A dependency is missing or the hardware is absent.
        """
        av = self.availability(name)
        if not av.available:
            raise BackendUnavailable(f"{self.kind} {name!r} is {av.reason}")
        module, _, attr = self.entry(name).target.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            raise BackendUnavailable(
                f"{self.kind} {name!r} failed to import: {exc}",
                hint=f"reinstall: pip install 'cvdeploy[{self.entry(name).extra or 'all'}]'",
            ) from exc
