"""The result of a compression command: a table with a row per model, and what was met."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvdeploy.compress.measure import ModelRow

__all__ = ["FASTER", "CompressReport", "speed_note"]

FASTER = 1.02
"""A speed-up below this is reported as "not faster" (within the measurement's noise)."""


def speed_note(speedup: float | None, runtime: str) -> str:
    """The honest note for a row whose exported artifact is not faster than its source."""
    if speedup is not None and speedup < FASTER:
        return f"not faster than the source on {runtime} ({speedup:.2f}x)"
    return ""


@dataclass
class CompressReport:
    """What ``cvdeploy prune`` / ``distill`` / ``qat`` did.

    Attributes:
        command: ``prune``, ``distill`` or ``qat``.
        bundle: The bundle written.
        source: What was compressed (or the teacher).
        runtime: The runtime latency was measured on.
        rows: The table: the source first, then each model produced.
        target: The target asked for and whether it was met.
        training: Per training phase: steps, seconds, first and last loss.
        notes: Warnings and explanations.
        cpu: The CPU the latencies were measured on.
        seconds: Wall-clock seconds of the whole command.
    """

    command: str
    bundle: Path
    source: str
    runtime: str
    rows: list[ModelRow] = field(default_factory=list)
    target: dict[str, Any] = field(default_factory=dict)
    training: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cpu: str = ""
    seconds: float = 0.0

    def row(self, name: str) -> ModelRow | None:
        """The row named ``name``, or ``None``."""
        return next((r for r in self.rows if r.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (also recorded in the bundle's history)."""
        return {
            "command": self.command,
            "bundle": str(self.bundle),
            "source": self.source,
            "runtime": self.runtime,
            "rows": [r.to_dict() for r in self.rows],
            "target": self.target,
            "training": self.training,
            "notes": self.notes,
            "cpu": self.cpu,
            "seconds": round(self.seconds, 1),
        }
