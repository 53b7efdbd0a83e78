"""Benchmark one artifact honestly: real images, the served pipeline, stated conditions.

One *request* is ``batch`` images taken in turn from the given files and run through the
same pipeline the server runs: file read + decode (:func:`cvdeploy.data.io.read_image`),
the spec's preprocessing, the runner, decoding + NMS (:class:`~cvdeploy.pipeline.predictor.
Predictor`). Each stage is timed with ``time.perf_counter``.

The run has three phases:

1. **Cold start**: create and load the runner, then the first request. Reported apart
   (``cold_start_ms = load_ms + first_ms``); the import of the runtime's Python package is
   included only for the first runner of a process.
2. **Warm-up**: ``warmup`` requests per worker, excluded from the statistics.
3. **Steady state**: ``iters`` requests (or as many as fit in ``seconds``), summarised as
   p50/p90/p99/mean/std/n per stage and end to end, plus throughput in images/s.

Concurrency: with ``concurrency=N`` there are N worker threads, **each with its own runner**
(its own ONNX Runtime session or OpenVINO compiled model and infer request), taking requests
from one shared counter, so up to N requests are in flight. ONNX Runtime, OpenVINO and
OpenCV release the GIL while they compute; the Python parts of pre- and post-processing
do not, and that contention is part of what is measured. Memory grows with N (N copies of
the model). Each runner uses ``threads`` intra-op threads (backend default when ``None``),
so N workers may oversubscribe the cores: the conditions record both numbers.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvdeploy.bench.stats import Stats, current_rss_mb, peak_rss_mb, reset_peak_rss, summarize
from cvdeploy.bundle import Artifact, Bundle
from cvdeploy.data.io import read_image
from cvdeploy.errors import BackendUnavailable, UsageError
from cvdeploy.pipeline.predictor import Predictor, Thresholds
from cvdeploy.precision import inference_precision_for
from cvdeploy.runtime import RunnerOptions

STAGES = ("decode", "preprocess", "inference", "postprocess")
DEFAULT_ITERS = 100
INCLUDES = (
    "per request of `batch` images: file read + decode (cvdeploy.data.io.read_image), "
    "spec preprocessing, inference, decoding + NMS; excludes runner load (see cold_start_ms) "
    "and warm-up requests"
)


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """Conditions of one benchmark run.

    Attributes:
        batch: Images per request (the artifact must take this batch size).
        imgsz: Input height and width (dynamic-size artifacts only); ``None``: the
            artifact's own size.
        threads: Intra-op threads per runner; ``None``: the backend's default (or the
            bundle's recommended options for the recommended artifact).
        concurrency: Requests in flight (worker threads, one runner each).
        warmup: Requests per worker run before measuring (excluded).
        iters: Measured requests (all workers together).
        seconds: Measure for this long instead of a number of requests.
        thresholds: Post-processing thresholds (default: the spec's, i.e. predict).
    """

    batch: int = 1
    imgsz: tuple[int, int] | None = None
    threads: int | None = None
    concurrency: int = 1
    warmup: int = 5
    iters: int | None = None
    seconds: float | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise UsageError(f"batch must be >= 1, got {self.batch}")
        if self.concurrency < 1:
            raise UsageError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.warmup < 0:
            raise UsageError(f"warmup must be >= 0, got {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be >= 1, got {self.threads}")
        if self.iters is not None and self.seconds is not None:
            raise UsageError(
                "--iters and --seconds exclude each other", hint="give one of them, not both"
            )
        if self.iters is not None and self.iters < 1:
            raise UsageError(f"iters must be >= 1, got {self.iters}")
        if self.seconds is not None and self.seconds <= 0:
            raise UsageError(f"seconds must be > 0, got {self.seconds}")

    @property
    def budget(self) -> str:
        """How long the steady state runs, in words."""
        if self.seconds is not None:
            return f"{self.seconds:g} s"
        return f"{self.iters or DEFAULT_ITERS} requests"


@dataclass(slots=True)
class BenchResult:
    """Latency, throughput and memory of one artifact under one set of conditions."""

    artifact: str
    format: str
    precision: str
    batch: int
    imgsz: tuple[int, int]
    threads: int | None
    concurrency: int
    cold_start_ms: float
    load_ms: float
    first_ms: float
    e2e_ms: Stats
    stages_ms: dict[str, Stats]
    throughput_ips: float
    peak_rss_mb: float
    file_size_bytes: int
    conditions: dict[str, Any]
    accuracy: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    inference_precision: str = "f32"
    """What the artifact computed in (as its runtime reported it)."""
    round_p50_ms: list[float] = field(default_factory=list)
    """The end-to-end p50 of each round when the sweep measured in several rounds (the
    result is the round with the median p50)."""

    @property
    def spread(self) -> float | None:
        """``(max - min) / median`` of the round p50s (``None`` with one round)."""
        r = sorted(self.round_p50_ms)
        if len(r) < 2 or r[len(r) // 2] <= 0:
            return None
        return (r[-1] - r[0]) / r[len(r) // 2]

    @property
    def key(self) -> str:
        """The conditions key under which the result is recorded in the manifest."""
        return conditions_key(self.conditions)

    @property
    def pre_post_share(self) -> float:
        """Mean (preprocess + postprocess) as a fraction of the mean end-to-end time."""
        pp = self.stages_ms["preprocess"].mean + self.stages_ms["postprocess"].mean
        return pp / self.e2e_ms.mean if self.e2e_ms.mean > 0 else float("nan")

    @property
    def pre_post_vs_inference(self) -> float:
        """Mean (preprocess + postprocess) as a fraction of the mean inference time."""
        inf = self.stages_ms["inference"].mean
        pp = self.stages_ms["preprocess"].mean + self.stages_ms["postprocess"].mean
        return pp / inf if inf > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``results`` items of ``cvdeploy bench --json``)."""
        return {
            "artifact": self.artifact,
            "format": self.format,
            "precision": self.precision,
            "inference_precision": self.inference_precision,
            "round_p50_ms": list(self.round_p50_ms),
            "p50_spread": _finite(self.spread) if self.spread is not None else None,
            "batch": self.batch,
            "imgsz": list(self.imgsz),
            "threads": self.threads,
            "concurrency": self.concurrency,
            "cold_start_ms": self.cold_start_ms,
            "load_ms": self.load_ms,
            "first_ms": self.first_ms,
            "e2e_ms": self.e2e_ms.to_dict(),
            "stages_ms": {k: v.to_dict() for k, v in self.stages_ms.items()},
            "throughput_ips": _finite(self.throughput_ips),
            "pre_post_share": _finite(self.pre_post_share),
            "pre_post_vs_inference": _finite(self.pre_post_vs_inference),
            "peak_rss_mb": self.peak_rss_mb,
            "file_size_bytes": self.file_size_bytes,
            "accuracy": self.accuracy,
            "profile": self.profile,
            "conditions": self.conditions,
            "key": self.key,
            "notes": list(self.notes),
        }


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def conditions_key(cond: dict[str, Any]) -> str:
    """A short, stable name for a set of conditions (the latency check's name)."""
    hw = cond.get("hardware", {}).get("cpu", "cpu")
    h, w = cond["imgsz"]
    threads = cond.get("threads") or "default"
    prec = cond["precision"]
    computes = cond.get("inference_precision")
    if computes and computes != inference_precision_for(cond.get("format", ""), prec):
        prec = f"{prec} computed in {computes}"  # an explicit precision option
    return (
        f"{hw} | {prec} | batch {cond['batch']} | {h}x{w} | "
        f"threads {threads} | concurrency {cond['concurrency']}"
    )


def not_applicable(
    artifact: Artifact,
    *,
    batch: int,
    imgsz: tuple[int, int] | None,
    hint: str = "re-export with --dynamic",
) -> str | None:
    """Why an artifact cannot run a batch size / input size (``None`` when it can); ``hint``
    says what to do about a fixed batch (see :func:`cvdeploy.bench.sweep.reexport_hint`)."""
    io = artifact.io
    fixed = io.fixed_batch
    if fixed is not None and fixed != batch:
        return f"fixed batch {fixed}: cannot run batch {batch} ({hint})"
    if imgsz is not None and not io.dynamic_size:
        shape = io.input.shape
        hw = tuple(shape[2:4] if io.layout == "NCHW" else shape[1:3])
        if hw != tuple(imgsz):
            return f"fixed size {hw[0]}x{hw[1]}: cannot run {imgsz[0]}x{imgsz[1]}"
    return None


def accuracy_of(artifact: Artifact, imgsz: tuple[int, int]) -> dict[str, Any] | None:
    """The artifact's latest recorded ``metrics`` check, with the input size it was measured at."""
    check = artifact.latest("metrics")
    if check is None:
        return None
    metrics = check.data.get("metrics", {})
    proto = check.data.get("protocol", {})
    at = proto.get("imgsz")
    out: dict[str, Any] = {
        "dataset": check.name,
        "precision": artifact.precision,
        "imgsz": at,
        "same_imgsz": at is not None and list(at) == list(imgsz),
        "measured": check.created.isoformat(),
    }
    for k in ("map50_95", "map50", "top1", "top5"):
        if isinstance(metrics.get(k), int | float):
            out[k] = float(metrics[k])
    return out


def _hardware(env: dict[str, Any]) -> dict[str, Any]:
    cpu = env.get("cpu", {})
    return {
        "cpu": cpu.get("model", "cpu"),
        "logical_cores": cpu.get("logical_cores"),
        "cpu_flags": cpu.get("flags", []),
        "gpus": [g.get("name") for g in env.get("gpus", [])],
        "available_cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
    }


def _loadavg() -> float | None:
    """The 1-minute load average (other work competing for the cores), where known."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _thresholds(bundle: Bundle, t: Thresholds) -> dict[str, Any]:
    dec = bundle.spec.decoder
    return {
        "conf": dec.conf if t.conf is None else t.conf,
        "iou": dec.iou if t.iou is None else t.iou,
        "max_det": dec.max_det if t.max_det is None else t.max_det,
        "multi_label": t.multi_label,
    }


class _Worker:
    """One predictor plus its timing samples."""

    def __init__(self, predictor: Predictor, paths: Sequence[Path], batch: int) -> None:
        self.pred = predictor
        self.paths = paths
        self.batch = batch
        self.e2e: list[float] = []
        self.stages: dict[str, list[float]] = {s: [] for s in STAGES}
        self.images = 0
        self.error: BaseException | None = None

    def request(self, k: int) -> tuple[float, tuple[float, float, float, float]]:
        """Run request number ``k``; return its end-to-end and per-stage milliseconds."""
        n = len(self.paths)
        chunk = [self.paths[(k * self.batch + j) % n] for j in range(self.batch)]
        t0 = time.perf_counter()
        imgs = [read_image(p) for p in chunk]
        t1 = time.perf_counter()
        st = self.pred.run_batch(imgs).times
        t2 = time.perf_counter()
        ms = ((t1 - t0) * 1e3, st.preprocess, st.inference, st.postprocess)
        return (t2 - t0) * 1e3, ms

    def measured(self, k: int) -> None:
        e2e, ms = self.request(k)
        self.e2e.append(e2e)
        for s, v in zip(STAGES, ms, strict=True):
            self.stages[s].append(v)
        self.images += self.batch


class _Schedule:
    """Hands out request numbers to workers until the budget is spent."""

    def __init__(self, *, start: int, iters: int | None, deadline_s: float | None) -> None:
        self._lock = threading.Lock()
        self._next = start
        self._stop = start + iters if iters is not None else None
        self._deadline_s = deadline_s
        self.t0 = 0.0

    def take(self) -> int | None:
        with self._lock:
            if self._stop is not None and self._next >= self._stop:
                return None
            if self._deadline_s is not None and time.perf_counter() - self.t0 >= self._deadline_s:
                return None
            k = self._next
            self._next += 1
            return k


def _loop(worker: _Worker, schedule: _Schedule, barrier: threading.Barrier | None) -> None:
    try:
        if barrier is not None:
            barrier.wait()
        while (k := schedule.take()) is not None:
            worker.measured(k)
    except BaseException as exc:  # re-raised in the calling thread
        worker.error = exc
        if barrier is not None:
            barrier.abort()


def _make_predictor(
    bundle: Bundle, artifact: Artifact, cfg: BenchConfig, options: RunnerOptions | None
) -> Predictor:
    return Predictor.from_bundle(
        bundle,
        artifact.id,
        options=options,
        thresholds=cfg.thresholds,
        imgsz=cfg.imgsz,
        batch=cfg.batch,
    )


def bench_artifact(
    bundle: Bundle,
    artifact_id: str,
    images: Sequence[Path],
    *,
    config: BenchConfig | None = None,
    options: RunnerOptions | None = None,
    profile: bool = False,
    profile_runs: int = 20,
    environment: dict[str, Any] | None = None,
) -> BenchResult:
    """Benchmark one artifact of a bundle on real images (nothing is recorded).

    Args:
        bundle: The bundle.
        artifact_id: The artifact to run.
        images: Image files, used in turn (cycled when there are fewer than needed).
        config: Conditions (batch, size, threads, concurrency, warm-up, budget).
        options: Runner options; overrides ``config.threads`` when given (e.g. a tuned
            configuration). ``None``: ``RunnerOptions(threads=config.threads)``, or the
            bundle's recommended options for the recommended artifact when threads is None.
        profile: Also collect per-operator times in a separate pass (see
            :func:`cvdeploy.bench.profile.profile_artifact`), so that profiling overhead
            never enters the latency statistics.
        profile_runs: Inferences in the profiling pass.
        environment: A :func:`~cvdeploy.environment.fingerprint` to record
            (computed when ``None``).

    Returns:
        The result, with its conditions.

    Raises:
        UsageError: No images, or the artifact cannot run the batch / input size.
    """
    cfg = config or BenchConfig()
    paths = list(images)
    if not paths:
        raise UsageError("no images to benchmark with", hint="pass --images DIR with real images")
    art = bundle.artifact(artifact_id)
    reason = not_applicable(art, batch=cfg.batch, imgsz=cfg.imgsz)
    if reason is not None:
        raise UsageError(f"artifact {art.id}: {reason}")
    if options is None and cfg.threads is not None:
        options = RunnerOptions(threads=cfg.threads)
    if environment is None:
        from cvdeploy.environment import fingerprint

        environment = fingerprint()
    notes: list[str] = []
    probe = reset_peak_rss()
    baseline = current_rss_mb()
    load_before = _loadavg()

    # 1. cold start: runner creation + load, then the first request
    t0 = time.perf_counter()
    first = _make_predictor(bundle, art, cfg, options)
    predictors = [first]
    try:
        first.runner.load()
        t1 = time.perf_counter()
        workers = [_Worker(first, paths, cfg.batch)]
        workers[0].request(0)
        t2 = time.perf_counter()
        load_ms, first_ms = (t1 - t0) * 1e3, (t2 - t1) * 1e3
        for _ in range(1, cfg.concurrency):
            p = _make_predictor(bundle, art, cfg, options)
            p.runner.load()
            predictors.append(p)
            workers.append(_Worker(p, paths, cfg.batch))
            workers[-1].request(0)
        # 2. warm-up (excluded), each worker on its own runner
        k = 1
        for w in workers:
            for _ in range(cfg.warmup):
                w.request(k)
                k += 1
        # 3. steady state
        iters = None if cfg.seconds is not None else (cfg.iters or DEFAULT_ITERS)
        schedule = _Schedule(start=k, iters=iters, deadline_s=cfg.seconds)
        if cfg.concurrency == 1:
            schedule.t0 = time.perf_counter()
            _loop(workers[0], schedule, None)
        else:
            barrier = threading.Barrier(cfg.concurrency + 1)
            threads = [
                threading.Thread(target=_loop, args=(w, schedule, barrier), daemon=True)
                for w in workers
            ]
            for t in threads:
                t.start()
            schedule.t0 = time.perf_counter()
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait()
            for t in threads:
                t.join()
        wall = time.perf_counter() - schedule.t0
        for w in workers:
            if w.error is not None:
                raise w.error
        runner = first.runner
        imgsz = first.imgsz
        assert imgsz is not None
        runtime = runner.describe()
    finally:
        for p in predictors:
            p.runner.close()
    peak = peak_rss_mb()
    e2e = [v for w in workers for v in w.e2e]
    stages = {s: summarize([v for w in workers for v in w.stages[s]]) for s in STAGES}
    n_images = sum(w.images for w in workers)
    cores = os.cpu_count() or 1
    per_runner = runner.options.threads
    if cfg.concurrency > 1 and (per_runner is None or per_runner * cfg.concurrency > cores):
        notes.append(
            f"{cfg.concurrency} runners x {per_runner or 'the default number of'} threads "
            f"compete for {cores} logical cores; pass --threads to size them"
        )
    if len(paths) < cfg.batch:
        notes.append(f"only {len(paths)} image(s): images repeat within a batch")
    prof = None
    if profile:
        from cvdeploy.bench.profile import profile_artifact

        try:
            op = profile_artifact(
                bundle,
                art.id,
                paths,
                batch=cfg.batch,
                imgsz=cfg.imgsz,
                options=runner.options,
                runs=profile_runs,
            )
        except BackendUnavailable as exc:
            notes.append(exc.message)
        else:
            prof = op.to_dict()
            notes.extend(op.notes)
    conditions = {
        "hardware": _hardware(environment),
        "versions": {
            "python": environment.get("python"),
            "cvdeploy": environment.get("cvdeploy"),
            **environment.get("packages", {}),
        },
        "runtime": {
            k: (v if isinstance(v, str | int | float | bool) or v is None else str(v))
            for k, v in runtime.items()
        },
        "format": art.format,
        "precision": art.precision,
        "inference_precision": runtime["inference_precision"],
        "batch": cfg.batch,
        "imgsz": list(imgsz),
        "threads": runner.options.threads,
        "concurrency": cfg.concurrency,
        "concurrency_model": "one runner per worker thread" if cfg.concurrency > 1 else None,
        "warmup": cfg.warmup,
        "budget": cfg.budget,
        "images": len(paths),
        "thresholds": _thresholds(bundle, cfg.thresholds),
        "includes": INCLUDES,
        "memory": {"method": probe.method, "per_run": probe.per_run, "baseline_mb": baseline},
        "load_average_1m": {"before": load_before, "after": _loadavg()},
    }
    return BenchResult(
        artifact=art.id,
        format=art.format,
        precision=art.precision,
        batch=cfg.batch,
        imgsz=(int(imgsz[0]), int(imgsz[1])),
        threads=runner.options.threads,
        concurrency=cfg.concurrency,
        cold_start_ms=load_ms + first_ms,
        load_ms=load_ms,
        first_ms=first_ms,
        e2e_ms=summarize(e2e),
        stages_ms=stages,
        throughput_ips=n_images / wall if wall > 0 else float("nan"),
        peak_rss_mb=peak,
        file_size_bytes=art.size_bytes,
        conditions=conditions,
        accuracy=accuracy_of(art, (int(imgsz[0]), int(imgsz[1]))),
        profile=prof,
        notes=notes,
        inference_precision=str(runtime["inference_precision"]),
    )
