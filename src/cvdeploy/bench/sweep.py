"""Sweeps: several artifacts x batch sizes x input sizes x threads x concurrency in one run.

Combinations an artifact cannot run (a fixed batch or a fixed input size) are skipped with
a note instead of failing the sweep. Results can be recorded in the bundle manifest, one
``latency`` check per result, in a single atomic :meth:`~cvdeploy.bundle.Bundle.edit`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvdeploy.bench.harness import (
    DEFAULT_ITERS,
    BenchConfig,
    BenchResult,
    bench_artifact,
    not_applicable,
)
from cvdeploy.bundle import Bundle, Check
from cvdeploy.data import image_paths
from cvdeploy.errors import UsageError
from cvdeploy.pipeline.predictor import Thresholds, select_artifact
from cvdeploy.progress import track
from cvdeploy.runtime import RUNTIMES

ACCURACY_TOLERANCE = 0.01
"""Artifacts within this much mAP50-95 (or top-1) of the most accurate one may be recommended."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """A combination that was not run, and why."""

    artifact: str
    batch: int
    imgsz: tuple[int, int] | None
    threads: int | None
    concurrency: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "artifact": self.artifact,
            "batch": self.batch,
            "imgsz": list(self.imgsz) if self.imgsz else None,
            "threads": self.threads,
            "concurrency": self.concurrency,
            "reason": self.reason,
        }


@dataclass(slots=True)
class SweepReport:
    """Everything one ``cvdeploy bench`` run measured."""

    bundle: str
    results: list[BenchResult]
    skipped: list[Skipped]
    recommended: str | None
    recommendation: str
    environment: dict[str, Any]
    images: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The ``cvdeploy bench --json`` object."""
        return {
            "bundle": self.bundle,
            "results": [r.to_dict() for r in self.results],
            "skipped": [s.to_dict() for s in self.skipped],
            "recommended": self.recommended,
            "recommendation": self.recommendation,
            "images": self.images,
            "notes": list(self.notes),
            "environment": self.environment,
        }


def resolve_images(
    bundle: Bundle, images: Path | Sequence[Path] | None, notes: list[str] | None = None
) -> list[Path]:
    """The benchmark images: the given data (dataset yaml, COCO json, folders, files), else
    the bundle's sample images, else the images of the bundle's last evaluation (said in
    ``notes``).

    Raises:
        UsageError: No images were given and the bundle has none to fall back to.
    """
    if images is None or (not isinstance(images, Path) and not images):
        paths = bundle.sample_images()
        if paths:
            return paths
        last = bundle.last_evaluated_data()
        if last is None:
            raise UsageError(
                f"bundle {bundle.name!r} stores no sample images to benchmark with, and has "
                "no evaluation whose images could stand in: pass --data",
                hint="pass --data with real images (a dataset yaml, a COCO json or a folder)",
            )
        if notes is not None:
            notes.append(
                f"no --data and no sample images in the bundle: benchmarking on the images of "
                f"its last evaluation ({last})"
            )
        images = last
    return image_paths(images, what="--data")


def reexport_hint(bundle: Bundle) -> str:
    """What to do about a fixed batch: re-export with ``--dynamic`` when the bundle holds a
    source that can give a dynamic batch (a torch model, or an ONNX model with a dynamic
    batch), else say that the imported model fixes it."""
    if any(
        a.format == "torch" or (a.format == "onnx" and a.io.dynamic_batch)
        for a in bundle.manifest.artifacts
    ):
        return "re-export with --dynamic"
    return "the model it was imported from has a fixed batch; export it with a dynamic batch"


def resolve_artifacts(bundle: Bundle, artifacts: str | Sequence[str] | None) -> list[str]:
    """Artifact ids to run: ``None``/``auto`` -> the default one, ``all`` -> every artifact."""
    if artifacts is None or artifacts == "auto":
        return [select_artifact(bundle, None).id]
    if isinstance(artifacts, str):
        if artifacts == "all":
            return [a.id for a in bundle.manifest.artifacts]
        artifacts = [a.strip() for a in artifacts.split(",") if a.strip()]
    ids = list(dict.fromkeys(artifacts))
    for i in ids:
        bundle.artifact(i)
    if not ids:
        raise UsageError("no artifact given", hint="pass --artifact ID or --artifact all")
    return ids


def recommend(results: Sequence[BenchResult]) -> tuple[str | None, str]:
    """Pick the artifact to recommend: the fastest among the accurate enough.

    Speed is each artifact's best per-image end-to-end p50 (``e2e p50 / batch``) in the
    sweep. When accuracy is recorded for some artifacts, only those within
    :data:`ACCURACY_TOLERANCE` of the most accurate one are candidates; artifacts without a
    recorded accuracy are candidates only when none has one.

    Returns:
        The artifact id (``None`` without results) and the reason in words.
    """
    if not results:
        return None, "nothing was measured"
    best: dict[str, float] = {}
    acc: dict[str, float] = {}
    for r in results:
        per_image = r.e2e_ms.p50 / r.batch
        best[r.artifact] = min(best.get(r.artifact, per_image), per_image)
        a = r.accuracy or {}
        v = a.get("map50_95", a.get("top1"))
        if isinstance(v, float):
            acc[r.artifact] = v
    if acc:
        top = max(acc.values())
        candidates = [a for a in best if a in acc and acc[a] >= top - ACCURACY_TOLERANCE]
        why = f"fastest within {ACCURACY_TOLERANCE:g} of the best recorded accuracy ({top:.4f})"
    else:
        candidates = list(best)
        why = "fastest; no accuracy is recorded for these artifacts (run `cvdeploy eval`)"
    pick = min(candidates, key=lambda a: best[a])
    spread = _artifact_spread(results)
    close = [
        a
        for a in candidates
        if a != pick
        and best[a] <= best[pick] * (1 + max(spread.get(pick, 0.0), spread.get(a, 0.0)))
    ]
    noise = (
        f"; within noise of {', '.join(close)} (their p50s differ by less than the spread "
        "between rounds)"
        if close
        else ""
    )
    return pick, f"{pick}: {best[pick]:.2f} ms/image e2e p50, {why}{noise}"


def _artifact_spread(results: Sequence[BenchResult]) -> dict[str, float]:
    """The largest relative spread between rounds measured for each artifact."""
    out: dict[str, float] = {}
    for r in results:
        if r.spread is not None:
            out[r.artifact] = max(out.get(r.artifact, 0.0), r.spread)
    return out


DRIFT_NOTE = 0.10
"""A spread between rounds above this is said in the report: the machine's timings drift."""


def run_sweep(
    bundle: Bundle,
    images: Path | Sequence[Path] | None = None,
    *,
    artifacts: str | Sequence[str] | None = None,
    batches: Sequence[int] = (1,),
    imgszs: Sequence[tuple[int, int] | None] = (None,),
    threads: Sequence[int | None] = (None,),
    concurrency: Sequence[int] = (1,),
    warmup: int = 5,
    iters: int | None = None,
    seconds: float | None = None,
    thresholds: Thresholds | None = None,
    profile: bool = False,
    record: bool = True,
    progress: bool = False,
    rounds: int = 1,
) -> SweepReport:
    """Benchmark every combination of artifacts and conditions.

    Args:
        bundle: The bundle.
        images: Image files or folders (default: the bundle's sample images).
        artifacts: ``None`` (default artifact), ``"all"``, an id, or ids.
        batches: Batch sizes.
        imgszs: Input sizes (``None``: the artifact's own); dynamic-size artifacts only.
        threads: Intra-op thread counts (``None``: backend default).
        concurrency: Requests in flight.
        warmup: Warm-up requests per worker.
        iters: Measured requests per combination.
        seconds: Measuring time per combination (instead of ``iters``).
        thresholds: Post-processing thresholds (default: the spec's).
        profile: Add per-operator profiles.
        record: Record each result as a ``latency`` check of its artifact.
        progress: Show a progress bar over the combinations.
        rounds: Measure every combination this many times, the combinations alternating
            (A B C, C B A, ...), each round with ``iters`` (or ``seconds``) split between
            the rounds; each result is the round with the median p50, and carries every
            round's p50 (its spread says how much the machine's timings drift).

    Returns:
        The report (results, skipped combinations, recommendation, environment).
    """
    from cvdeploy.environment import fingerprint

    notes: list[str] = []
    paths = resolve_images(bundle, images, notes)
    ids = resolve_artifacts(bundle, artifacts)
    env = fingerprint()
    results: list[BenchResult] = []
    skipped: list[Skipped] = []
    combos = list(
        itertools.product(
            ids,
            dict.fromkeys(batches),
            dict.fromkeys(imgszs),
            dict.fromkeys(threads),
            dict.fromkeys(concurrency),
        )
    )
    runnable = []
    dynamic_hint = reexport_hint(bundle)
    for aid, b, size, t, c in combos:
        art = bundle.artifact(aid)
        av = RUNTIMES.availability(art.format) if art.format in RUNTIMES.names() else None
        reason = (
            f"no runtime registered for format {art.format!r}"
            if av is None
            else (None if av.available else av.reason)
        ) or not_applicable(art, batch=b, imgsz=size, hint=dynamic_hint)
        if reason:
            skipped.append(Skipped(aid, b, size, t, c, reason))
        else:
            runnable.append((aid, b, size, t, c))
    if rounds < 1:
        raise UsageError(f"rounds must be >= 1, got {rounds}")
    per_iters = None if iters is None else max(1, -(-iters // rounds))
    per_seconds = None if seconds is None else seconds / rounds
    if iters is None and seconds is None:
        per_iters = max(1, -(-DEFAULT_ITERS // rounds))
    by_combo: dict[tuple[Any, ...], list[BenchResult]] = {combo: [] for combo in runnable}
    order = [
        (r, combo) for r in range(rounds) for combo in (runnable if r % 2 == 0 else runnable[::-1])
    ]
    for _, (aid, b, size, t, c) in track(
        order, total=len(order), description="bench", enabled=progress
    ):
        cfg = BenchConfig(
            batch=b,
            imgsz=size,
            threads=t,
            concurrency=c,
            warmup=warmup,
            iters=per_iters,
            seconds=per_seconds,
            thresholds=thresholds or Thresholds(),
        )
        by_combo[(aid, b, size, t, c)].append(
            bench_artifact(bundle, aid, paths, config=cfg, profile=profile, environment=env)
        )
    for runs in by_combo.values():
        ranked = sorted(runs, key=lambda r: r.e2e_ms.p50)
        chosen = ranked[len(ranked) // 2]
        if len(runs) > 1:
            chosen.round_p50_ms = [r.e2e_ms.p50 for r in runs]
        results.append(chosen)
    drift = max((r.spread or 0.0 for r in results), default=0.0)
    if drift > DRIFT_NOTE:
        notes.append(
            f"timings drifted by up to {drift:.0%} between rounds on this machine: differences "
            "smaller than that are noise, not a ranking"
        )
    rec, why = recommend(results)
    report = SweepReport(
        bundle=bundle.name,
        results=results,
        skipped=skipped,
        recommended=rec,
        recommendation=why,
        environment=env,
        images=len(paths),
        notes=notes,
    )
    if record and results:
        record_results(bundle, results, environment=env)
    return report


def record_results(
    bundle: Bundle, results: Sequence[BenchResult], *, environment: dict[str, Any]
) -> None:
    """Record results as ``latency`` checks (one atomic edit, one history entry).

    Each check is named by its conditions key and holds the result (``e2e_ms``,
    ``stages_ms``, throughput, memory, conditions) plus the full environment fingerprint.
    """
    with bundle.edit(
        action="bench",
        details={"results": len(results), "artifacts": sorted({r.artifact for r in results})},
    ) as edit:
        for r in results:
            data = r.to_dict()
            data["environment"] = environment
            edit.add_check(r.artifact, Check(kind="latency", name=r.key, passed=None, data=data))
