"""Side-by-side latency: several artifacts timed in alternating rounds, medians kept.

On a shared machine the same configuration drifts between runs by more than the differences
being compared, so comparisons never take one measurement of each artifact after the other:
:func:`measure_side_by_side` alternates them (A B, B A, A B, ...) and keeps the median of each
one's rounds. Used by ``cvdeploy quantize`` (FP32 against INT8) and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvdeploy.bench.harness import BenchConfig, bench_artifact
from cvdeploy.bundle import Bundle
from cvdeploy.errors import UsageError

MIN_ITERS = 10
"""Fewest measured requests per artifact (images are cycled when there are fewer)."""


@dataclass(slots=True)
class Latency:
    """End-to-end latency of one artifact through the Predictor (milliseconds)."""

    artifact: str
    p50_ms: float
    inference_p50_ms: float
    pre_post_p50_ms: float
    images: int
    warmup: int
    rounds: int = 1


def measure_latency(
    bundle: Bundle,
    artifact_id: str,
    images: Sequence[Path],
    *,
    warmup: int = 3,
    threads: int | None = None,
) -> Latency:
    """Warm up, then time each image through the Predictor; report medians.

    Uses the bench harness (:func:`cvdeploy.bench.harness.bench_artifact`, batch 1, one
    request in flight, one measured request per image), so the numbers are those
    ``cvdeploy bench`` reports under the same conditions (at least :data:`MIN_ITERS`
    requests, cycling the images).

    Args:
        bundle: The bundle.
        artifact_id: Which artifact.
        images: Image files (the same ones for every artifact compared).
        warmup: Untimed requests first.
        threads: Runtime threads (``None``: the backend's default).
    """
    if not images:
        raise UsageError("latency needs at least one image")
    res = bench_artifact(
        bundle,
        artifact_id,
        list(images),
        config=BenchConfig(warmup=warmup, iters=max(len(images), MIN_ITERS), threads=threads),
        environment={},
    )
    st = res.stages_ms
    return Latency(
        artifact=artifact_id,
        p50_ms=res.e2e_ms.p50,
        inference_p50_ms=st["inference"].p50,
        pre_post_p50_ms=st["preprocess"].p50 + st["postprocess"].p50,
        images=len(images),
        warmup=warmup,
    )


SIDE_BY_SIDE_ROUNDS = 3
"""Alternating rounds of :func:`measure_side_by_side` (A B, B A, A B)."""


def measure_side_by_side(
    bundle: Bundle,
    artifacts: dict[str, str],
    images: Sequence[Path],
    *,
    rounds: int = SIDE_BY_SIDE_ROUNDS,
    warmup: int = 3,
    threads: int | None = None,
) -> dict[str, Latency]:
    """Time several artifacts in alternating rounds and keep the median of each one's rounds.

    Timed one after the other, two artifacts see different moments of the machine (on a
    shared VM the same run drifts by 10-30% within minutes); alternating the order (A B,
    B A, A B, ...) and taking the median of the per-round medians puts both under the
    same conditions, as the benchmarks do.

    Args:
        bundle: The bundle.
        artifacts: ``{key: artifact id}``, e.g. ``{"fp32": "onnx-fp32", "int8": "onnx-int8"}``.
        images: Image files (the same ones for every artifact and round).
        rounds: Alternating rounds (at least 1).
        warmup: Untimed requests at the start of every round.
        threads: Runtime threads (``None``: the backend's default).

    Returns:
        ``{key: Latency}`` with the medians over the rounds.
    """
    runs: dict[str, list[Latency]] = {k: [] for k in artifacts}
    keys = list(artifacts)
    for r in range(max(1, rounds)):
        for k in keys if r % 2 == 0 else reversed(keys):
            runs[k].append(
                measure_latency(bundle, artifacts[k], images, warmup=warmup, threads=threads)
            )

    def med(xs: list[Latency], attr: str) -> float:
        return float(np.median([getattr(x, attr) for x in xs]))

    return {
        k: Latency(
            artifact=artifacts[k],
            p50_ms=med(v, "p50_ms"),
            inference_p50_ms=med(v, "inference_p50_ms"),
            pre_post_p50_ms=med(v, "pre_post_p50_ms"),
            images=len(images),
            warmup=warmup,
            rounds=len(v),
        )
        for k, v in runs.items()
    }
