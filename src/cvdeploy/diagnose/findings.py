"""Findings: what ``cvdeploy doctor`` reports, each with its evidence and the fix.

A :class:`Finding` is one answer to "why did accuracy drop?" (or one reason to worry): a
kind (which check found it), a severity, a one-line title, evidence lines a person can
verify, the fix to try, and the figures behind it (``data``, JSON-ready). The
:class:`DoctorReport` ranks them: severity first, then the estimated accuracy impact.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["critical", "warning", "info"]
Kind = Literal["environment", "integrity", "accuracy", "layers", "preprocessing", "drift"]

SEVERITY_ORDER: dict[str, int] = {"critical": 0, "warning": 1, "info": 2}
KINDS: tuple[str, ...] = (
    "environment",
    "integrity",
    "accuracy",
    "layers",
    "preprocessing",
    "drift",
)


@dataclass(slots=True)
class Finding:
    """One ranked finding.

    Attributes:
        kind: The check that found it (``environment``, ``integrity``, ``accuracy``,
            ``layers``, ``preprocessing``, ``drift``).
        severity: ``critical`` (accuracy is, or will be, wrong), ``warning`` (a cause to
            check), ``info`` (context; nothing to fix).
        title: One line that names the problem.
        evidence: Lines a person can verify (measured figures, recorded values).
        fix: What to do about it (a command where there is one).
        artifact: The artifact it concerns, when one.
        impact: Estimated accuracy lost (mAP50-95 or top-1, absolute), when measured.
        data: The figures behind it (JSON-ready).
    """

    kind: str
    severity: Severity
    title: str
    evidence: list[str] = field(default_factory=list)
    fix: str = ""
    artifact: str | None = None
    impact: float | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return _json_ready(asdict(self))


@dataclass(slots=True)
class Section:
    """What one check did: ``ran``, ``skipped`` (with the reason) or ``failed``."""

    name: str
    status: Literal["ran", "skipped", "failed"]
    reason: str = ""
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class DoctorReport:
    """The findings of one ``cvdeploy doctor`` run and what each check measured.

    Attributes:
        bundle: The bundle directory.
        name: The bundle's name.
        findings: Ranked (see :meth:`ranked`).
        sections: Per check: status, reason, time, and its measurements (tables, curves)
            used by the HTML report.
        inputs: What was given (data, production folder or log, artifact).
        seconds: Wall time of the whole run.
        extras: In-memory results the HTML report draws from (class names, per-image
            predictions); not part of :meth:`to_dict`.
    """

    bundle: str
    name: str
    findings: list[Finding] = field(default_factory=list)
    sections: dict[str, Section] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict, repr=False)

    def ranked(self) -> list[Finding]:
        """Critical first, then warnings, then information; within one severity the
        largest measured accuracy impact first."""
        return sorted(
            self.findings,
            key=lambda f: (
                SEVERITY_ORDER.get(f.severity, 9),
                -(f.impact if f.impact is not None and math.isfinite(f.impact) else -1.0),
                KINDS.index(f.kind) if f.kind in KINDS else 99,
            ),
        )

    @property
    def problems(self) -> list[Finding]:
        """The critical findings and warnings."""
        return [f for f in self.ranked() if f.severity != "info"]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: findings ranked, then the sections' measurements."""
        return _json_ready(
            {
                "bundle": self.bundle,
                "name": self.name,
                "healthy": not self.problems,
                "findings": [asdict(f) for f in self.ranked()],
                "sections": {k: asdict(v) for k, v in self.sections.items()},
                "inputs": self.inputs,
                "seconds": round(self.seconds, 2),
            }
        )


def _json_ready(obj: Any) -> Any:
    """Floats that JSON can carry (NaN/inf as None), numpy scalars and arrays as Python."""
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _json_ready(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj
