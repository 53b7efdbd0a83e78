"""The bench stage: honest latency, throughput, memory and per-operator profiles.

Public API: :func:`bench_artifact` (one artifact, one set of conditions),
:func:`run_sweep` (artifacts x batch x size x threads x concurrency, recorded in the
bundle), :func:`profile_artifact`, and for reports :func:`results_table`,
:func:`pareto_png` and :func:`html_fragment`; :func:`tune_bundle` (``cvdeploy tune``: the
fastest artifact + runtime settings within an accuracy floor, recorded as the bundle's
recommended configuration).
"""

from __future__ import annotations

from cvdeploy.bench.harness import BenchConfig, BenchResult, bench_artifact
from cvdeploy.bench.profile import OpProfile, profile_artifact
from cvdeploy.bench.stats import Stats, summarize
from cvdeploy.bench.sweep import SweepReport, recommend, record_results, run_sweep
from cvdeploy.bench.tune import tune_bundle
from cvdeploy.bench.tune_report import TuneOptions, TuneReport

__all__ = [
    "BenchConfig",
    "BenchResult",
    "OpProfile",
    "Stats",
    "SweepReport",
    "TuneOptions",
    "TuneReport",
    "bench_artifact",
    "profile_artifact",
    "recommend",
    "record_results",
    "run_sweep",
    "summarize",
    "tune_bundle",
]
