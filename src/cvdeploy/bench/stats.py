"""Statistics of latency samples and the process's memory high-water mark.

Percentiles use numpy's default (linear interpolation between the closest ranks), the
standard deviation is the sample standard deviation (``ddof=1``; 0 for a single sample).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvdeploy.errors import UsageError

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True, slots=True)
class Stats:
    """Summary of a set of timings, in milliseconds.

    Attributes:
        p50: Median.
        p90: 90th percentile.
        p99: 99th percentile (with fewer than 100 samples this is close to the maximum).
        mean: Arithmetic mean.
        std: Sample standard deviation (``ddof=1``).
        n: Number of samples.
    """

    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        """A JSON-ready dict with the keys ``p50, p90, p99, mean, std, n``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stats:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: d[k] for k in ("p50", "p90", "p99", "mean", "std", "n")})


def summarize(samples: Sequence[float] | np.ndarray) -> Stats:
    """Summarise timings (milliseconds).

    Args:
        samples: One value per measured request; warm-up runs must already be excluded.

    Returns:
        The statistics.

    Raises:
        UsageError: ``samples`` is empty or holds a non-finite value.
    """
    a = np.asarray(samples, dtype=np.float64).ravel()
    if a.size == 0:
        raise UsageError(
            "no timing samples to summarise", hint="run at least one measured iteration"
        )
    if not np.all(np.isfinite(a)):
        raise UsageError("timing samples contain NaN or infinite values")
    p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return Stats(p50=p50, p90=p90, p99=p99, mean=float(a.mean()), std=std, n=int(a.size))


@dataclass(frozen=True, slots=True)
class MemoryProbe:
    """How the peak resident memory of one run is measured.

    Attributes:
        per_run: The high-water mark was reset before the run (Linux ``clear_refs``), so the
            peak belongs to this run alone; otherwise it is the process's peak so far.
        method: ``proc-hwm-reset``, ``proc-hwm`` or ``getrusage``.
    """

    per_run: bool
    method: str


def reset_peak_rss() -> MemoryProbe:
    """Reset this process's peak-RSS counter where the OS allows it (Linux >= 4.0).

    Writing ``5`` to ``/proc/self/clear_refs`` resets ``VmHWM`` of this process only; it
    changes no setting. Elsewhere the peak is the process's lifetime peak, and the returned
    probe says so.

    Returns:
        What the next :func:`peak_rss_mb` call will mean.
    """
    if _CLEAR_REFS.exists() and _STATUS.exists():
        with contextlib.suppress(OSError):
            _CLEAR_REFS.write_text("5", encoding="ascii")
            return MemoryProbe(per_run=True, method="proc-hwm-reset")
    if _STATUS.exists():
        return MemoryProbe(per_run=False, method="proc-hwm")
    return MemoryProbe(per_run=False, method="getrusage")


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (since the last reset, on Linux)."""
    with contextlib.suppress(OSError):
        for line in _STATUS.read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    import resource  # Unix only; reached where /proc is absent

    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return ru / (1024.0 * 1024.0) if sys.platform == "darwin" else ru / 1024.0


def current_rss_mb() -> float | None:
    """Current resident set size of this process in MiB (``None`` where unknown)."""
    with contextlib.suppress(OSError):
        for line in _STATUS.read_text(encoding="ascii").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return None
