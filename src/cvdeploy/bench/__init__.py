"""The bench stage: honest latency, throughput, memory and per-operator profiles.

Public API: :func:`bench_artifact` (one artifact, one set of conditions),
:func:`run_sweep` (artifacts x batch x size x threads x concurrency, recorded in the
bundle), :func:`profile_artifact`, and for reports :func:`results_table`,
:func:`pareto_png` and :func:`html_fragment`; :func:`measure_side_by_side` (artifacts timed in
alternating rounds) and :func:`measure_latency`. ``cvdeploy tune`` is a workflow
(:mod:`cvdeploy.workflows`).
"""

from __future__ import annotations

from cvdeploy.bench.compare import (
    SIDE_BY_SIDE_ROUNDS,
    Latency,
    measure_latency,
    measure_side_by_side,
)
from cvdeploy.bench.harness import (
    BenchConfig,
    BenchResult,
    accuracy_of,
    bench_artifact,
    not_applicable,
)
from cvdeploy.bench.profile import OpProfile, profile_artifact
from cvdeploy.bench.report import html_fragment, pareto_png, results_table
from cvdeploy.bench.stats import Stats, summarize
from cvdeploy.bench.sweep import SweepReport, recommend, record_results, run_sweep

__all__ = [
    "SIDE_BY_SIDE_ROUNDS",
    "BenchConfig",
    "BenchResult",
    "Latency",
    "OpProfile",
    "Stats",
    "SweepReport",
    "accuracy_of",
    "bench_artifact",
    "html_fragment",
    "measure_latency",
    "measure_side_by_side",
    "not_applicable",
    "pareto_png",
    "profile_artifact",
    "recommend",
    "record_results",
    "results_table",
    "run_sweep",
    "summarize",
]
