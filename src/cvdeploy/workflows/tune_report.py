"""Options and results of ``cvdeploy tune`` (see :mod:`cvdeploy.workflows.tune`).

:class:`Recommendation` is what is recorded as the bundle manifest's ``recommended`` entry;
its ``options`` (threads, device, extra) are what
:meth:`~cvdeploy.pipeline.predictor.Predictor.from_bundle` turns into the runner options of
the recommended artifact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cvdeploy.bench.stats import Stats
from cvdeploy.bundle import Bundle, Recommended
from cvdeploy.errors import UsageError
from cvdeploy.workflows.tune_space import Settings

DEFAULT_MAX_DROP = 0.01
Status = Literal["ok", "too-inaccurate", "failed", "skipped"]
Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class TuneOptions:
    """Options of :func:`tune_bundle`.

    Attributes:
        min_map: Absolute accuracy floor (mAP50-95, or top-1 for classifiers).
        max_drop: Largest drop below the FP32 reference (default 0.01 without ``min_map``).
        target: ``latency`` (lowest e2e p50, one request at a time) or ``throughput``
            (most images/s with ``concurrency`` requests in flight).
        formats: Formats to try (default: onnx and openvino where available).
        precisions: Precisions to try.
        calib: Calibration images for INT8 (default: the dataset).
        calib_force: Accept fewer than 100 calibration images.
        gate_cosine: Minimum raw-output cosine of the INT8 integrity gate when ``tune``
            quantizes (``None``: the INT8 tolerance; see ``cvdeploy quantize --gate-cosine``).
        imgsz: Input size (dynamic-size artifacts; also the size new artifacts are made at).
        threads: Intra-op thread counts to try (default: half the cores and all).
        budget_minutes: Stop trying candidates after this long (the rest are ``skipped``).
        warmup: Warm-up requests per measurement (excluded).
        iters: Measured requests per candidate.
        images: Largest number of dataset images used for the latency measurement.
        concurrency: Requests in flight for ``throughput`` (default: the core count).
        split: Dataset split.
        keep: ``all`` new artifacts, or only the ``recommended`` one (and its sources).
        final_top: How many leading candidates are measured again before choosing.
        final_rounds: Interleaved rounds of those measurements (0: choose from the single
            pass); each leader keeps the median of its measurements, so that a drift of
            the machine during the one pass over the grid does not pick the winner.
        progress: Show a progress bar.
    """

    min_map: float | None = None
    max_drop: float | None = None
    target: str = "latency"
    formats: tuple[str, ...] | None = None
    precisions: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8", "int8-bf16")
    calib: Path | None = None
    calib_force: bool = False
    gate_cosine: float | None = None
    imgsz: tuple[int, int] | None = None
    threads: tuple[int, ...] | None = None
    budget_minutes: float | None = None
    warmup: int = 5
    iters: int = 30
    images: int = 32
    concurrency: int | None = None
    split: str = "val"
    keep: str = "all"
    final_top: int = 3
    final_rounds: int = 2
    progress: bool = False

    def __post_init__(self) -> None:
        if self.min_map is not None and self.max_drop is not None:
            raise UsageError(
                "--min-map and --max-drop exclude each other", hint="give one accuracy floor"
            )
        if self.min_map is not None and not 0 <= self.min_map <= 1:
            raise UsageError(f"--min-map must be in [0, 1], got {self.min_map}")
        if self.max_drop is not None and not 0 <= self.max_drop < 1:
            raise UsageError(f"--max-drop must be in [0, 1), got {self.max_drop}")
        if self.target not in ("latency", "throughput"):
            raise UsageError(f"--target must be latency or throughput, got {self.target!r}")
        if self.keep not in ("all", "recommended"):
            raise UsageError(f"--keep must be all or recommended, got {self.keep!r}")
        if self.budget_minutes is not None and self.budget_minutes <= 0:
            raise UsageError(f"--budget-minutes must be > 0, got {self.budget_minutes}")
        for name, v in (("iters", self.iters), ("images", self.images)):
            if v < 1:
                raise UsageError(f"{name} must be >= 1, got {v}")
        if self.gate_cosine is not None and not 0 < self.gate_cosine <= 1:
            raise UsageError(f"--gate-cosine must be in (0, 1], got {self.gate_cosine}")
        if self.final_top < 1 or self.final_rounds < 0:
            raise UsageError("final_top must be >= 1 and final_rounds >= 0")
        if self.warmup < 0:
            raise UsageError(f"warmup must be >= 0, got {self.warmup}")
        if self.concurrency is not None and self.concurrency < 1:
            raise UsageError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.threads is not None and (not self.threads or min(self.threads) < 1):
            raise UsageError("--threads must be a list of integers >= 1")

    @property
    def floor_text(self) -> str:
        """The accuracy floor in words."""
        if self.min_map is not None:
            return f">= {self.min_map:g}"
        return f"<= {self.drop:g} below the FP32 reference"

    @property
    def drop(self) -> float:
        """The allowed drop (when no absolute floor is given)."""
        return DEFAULT_MAX_DROP if self.max_drop is None else self.max_drop


@dataclass(frozen=True, slots=True)
class Accuracy:
    """The accuracy of one artifact (under one precision hint) on the dataset."""

    value: float
    metrics: dict[str, Any] = field(default_factory=dict)
    dataset: str = ""
    images: int = 0
    protocol: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Measurement:
    """End-to-end latency of one candidate (warm-up excluded)."""

    e2e_ms: Stats
    throughput_ips: float
    pre_post_share: float | None = None


MeasureFn = Callable[[Bundle, str, Settings, Sequence[Path], TuneOptions], Measurement]
EvaluateFn = Callable[[Bundle, str, Settings, Path, TuneOptions], Accuracy]


@dataclass(slots=True)
class Candidate:
    """One row of the tune table: an artifact under one set of runtime settings."""

    artifact: str
    format: str
    precision: str
    settings: Settings | None
    created: bool = False
    status: Status = "skipped"
    message: str = ""
    accuracy: float | None = None
    drop: float | None = None
    measurement: Measurement | None = None
    round_p50s: list[float] = field(default_factory=list)
    """The p50 of every measurement of this candidate (the leaders are measured again)."""
    fix: str = ""
    """What to do about a failed candidate, naming only what the user can act on."""

    @property
    def spread(self) -> float | None:
        """``max - min`` of the round p50s, in ms (``None`` with a single measurement)."""
        return max(self.round_p50s) - min(self.round_p50s) if len(self.round_p50s) > 1 else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``candidates`` items of ``cvdeploy tune --json``)."""
        m = self.measurement
        return {
            "artifact": self.artifact,
            "format": self.format,
            "precision": self.precision,
            "settings": self.settings.to_dict() if self.settings else None,
            "created": self.created,
            "status": self.status,
            "message": self.message,
            "accuracy": self.accuracy,
            "drop": self.drop,
            "e2e_ms": m.e2e_ms.to_dict() if m else None,
            "throughput_ips": finite(m.throughput_ips) if m else None,
            "pre_post_share": finite(m.pre_post_share) if m else None,
            "round_p50_ms": list(self.round_p50s),
            "p50_spread_ms": self.spread,
            "fix": self.fix or None,
        }


Recommendation = Recommended
"""What ``tune`` records as the bundle's ``recommended`` configuration (the manifest's model)."""


@dataclass(slots=True)
class TuneReport:
    """Everything one ``cvdeploy tune`` run found."""

    bundle: str
    metric: str
    target: str
    floor: float
    reference: dict[str, Any]
    candidates: list[Candidate]
    recommended: Recommendation | None
    created: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def recorded(self) -> bool:
        """Whether a recommended configuration was recorded in the bundle."""
        return self.recommended is not None

    @property
    def failed(self) -> list[Candidate]:
        """Candidates that could not be made, evaluated or timed (or ran out of time)."""
        return [c for c in self.candidates if c.status in ("failed", "skipped")]

    def failure_summary(self) -> list[tuple[str, str, list[str]]]:
        """``(reason, fix, artifacts)`` for each distinct reason, each said once."""
        groups: dict[str, tuple[str, list[str]]] = {}
        for c in self.failed:
            _, ids = groups.setdefault(c.message, (c.fix, []))
            if c.artifact not in ids:
                ids.append(c.artifact)
        return [(reason, fix, ids) for reason, (fix, ids) in groups.items()]

    def within_noise(self) -> list[str]:
        """Candidates whose p50 lies within the recommended one's measured spread."""
        rec = self.recommended
        best = next(
            (
                c
                for c in self.candidates
                if rec is not None
                and c.artifact == rec.artifact
                and c.settings is not None
                and c.settings.to_dict() == rec.options.model_dump()
            ),
            None,
        )
        if best is None or best.measurement is None or best.spread is None:
            return []
        hi = max(best.round_p50s)
        return [
            f"{c.artifact} ({c.settings.label()})"
            for c in self.candidates
            if c is not best
            and c.status == "ok"
            and c.measurement is not None
            and c.settings is not None
            and c.measurement.e2e_ms.p50 <= hi + (c.spread or 0.0)
        ]

    def to_dict(self) -> dict[str, Any]:
        """The ``cvdeploy tune --json`` object."""
        return {
            "bundle": self.bundle,
            "metric": self.metric,
            "target": self.target,
            "floor": self.floor,
            "reference": self.reference,
            "candidates": [c.to_dict() for c in self.candidates],
            "recommended": self.recommended.model_dump(mode="json") if self.recommended else None,
            "created": list(self.created),
            "kept": list(self.kept),
            "notes": list(self.notes),
            "failures": [
                {"reason": r, "fix": f or None, "artifacts": ids}
                for r, f, ids in self.failure_summary()
            ],
            "within_noise": self.within_noise(),
            "seconds": self.seconds,
        }


def finite(v: float | None) -> float | None:
    """``v``, or ``None`` when it is missing or not finite (JSON has no NaN)."""
    return v if v is not None and math.isfinite(v) else None
