"""Served models: load and warm up a version, switch versions atomically, follow a registry.

A :class:`ModelManager` holds, per model name, the :class:`LoadedVersion` answering
requests. A switch (promotion, rollback, reload) loads and warms the new version in a
thread while the old one keeps serving, swaps the reference in one event-loop step, and
then drains the old version's queue before closing it, so no request fails. A version
that fails to load leaves the current one serving and records the error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvdeploy.bundle import Bundle
from cvdeploy.errors import CvdeployError, UsageError
from cvdeploy.pipeline.predictor import Predictor, StageTimes, Thresholds, select_artifact
from cvdeploy.runtime import RunnerOptions
from cvdeploy.security import key_from_options, model_loader, require_signed
from cvdeploy.serve.batching import Batcher
from cvdeploy.serve.config import ServeConfig
from cvdeploy.serve.monitoring import ServeMetrics
from cvdeploy.serve.registry import STATE_FILE, ModelRegistry, is_registry

__all__ = [
    "LoadedVersion",
    "ModelManager",
    "PredictorFactory",
    "auto_workers",
    "default_predictors",
]

_log = logging.getLogger(__name__)

PredictorFactory = Callable[[Bundle, ServeConfig], list[Predictor]]
"""Builds one (unloaded) predictor per inference worker for a bundle."""

BUNDLE_VERSION = "bundle"


def default_predictors(bundle: Bundle, config: ServeConfig) -> list[Predictor]:
    """One predictor per worker, on the configured (or recommended) artifact.

    With ``workers`` unset: one single-threaded runner per core (at most 4), see
    :func:`auto_workers`. Runner options the bundle recommends for the artifact are kept
    as they are.
    """
    artifact = None if config.artifact == "auto" else config.artifact
    workers, threads = config.workers, config.threads
    if workers is None:
        workers, threads = auto_workers(bundle, artifact, threads)
    options = RunnerOptions(threads=threads) if threads else None
    return [
        Predictor.from_bundle(bundle, artifact, options=options, batch=config.max_batch)
        for _ in range(workers)
    ]


def auto_workers(
    bundle: Bundle, artifact: str | None, threads: int | None
) -> tuple[int, int | None]:
    """``(workers, threads)`` when ``--workers`` is not given.

    One single-threaded runner per core, at most 4 (one runner on one core), for
    fixed- and dynamic-batch artifacts alike. In a server the cores are shared with
    image decoding and the HTTP loop: an intra-op thread pool spins between runs and
    takes CPU from them (measured: ~7 of 21 CPU ms per request for the tiny detector,
    `benchmarks/serve_load.py`), while one single-threaded runner per core keeps the
    cores busy with whole batches. Given ``threads``, or runner options the bundle
    recommends for the artifact (`cvdeploy tune`), one runner with those settings.
    """
    art = select_artifact(bundle, artifact)
    rec = bundle.manifest.recommended
    recommended_options = rec is not None and rec.artifact == art.id
    if recommended_options or threads is not None:
        return 1, threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = max(1, min(4, cores or 1))
    return n, (1 if n > 1 else None)


def run_batch(
    predictor: Predictor, images: Sequence[np.ndarray], thresholds: Sequence[Thresholds]
) -> tuple[list[Any], StageTimes]:
    """Run one batch; images with different thresholds share pre-processing and inference."""
    run = predictor.run_batch(images, thresholds=thresholds)
    return run.results, run.times


@dataclass(slots=True)
class LoadedVersion:
    """One loaded, warmed-up model version with its batcher."""

    name: str
    version: str
    bundle: Bundle
    predictors: list[Predictor]
    batcher: Batcher
    loaded_at: float = field(default_factory=time.time)
    warmup_ms: float = 0.0

    @property
    def artifact_id(self) -> str:
        """The artifact being served."""
        return self.predictors[0].artifact_id

    @property
    def names(self) -> tuple[str, ...]:
        """Class names."""
        return tuple(self.bundle.spec.names)

    def close(self) -> None:
        """Release the runners."""
        for p in self.predictors:
            p.runner.close()

    def describe(self) -> dict[str, Any]:
        """Version, artifact, spec, and the metrics and latency checks of the manifest."""
        art = self.bundle.artifact(self.artifact_id)
        checks: dict[str, Any] = {}
        for c in art.checks:
            if c.kind in ("metrics", "latency", "parity"):
                checks[f"{c.kind}:{c.name}"] = {
                    "kind": c.kind,
                    "passed": c.passed,
                    "created": c.created.isoformat(),
                    "summary": _summary(c.kind, c.data),
                }
        return {
            "name": self.name,
            "version": self.version,
            "artifact": art.id,
            "format": art.format,
            "precision": art.precision,
            "batch": self.predictors[0].batch,
            "workers": len(self.predictors),
            "loaded_at": self.loaded_at,
            "warmup_ms": round(self.warmup_ms, 1),
            "spec": self.bundle.spec.model_dump(mode="json"),
            "checks": checks,
            "recommended": self.bundle.manifest.recommended,
        }


def _summary(kind: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """The headline numbers of a check (the full record stays in the manifest)."""
    if kind == "metrics":
        return dict(data.get("metrics") or {})
    if kind == "latency":
        keep = ("batch", "threads", "concurrency", "e2e_ms", "throughput_ips", "conditions")
        return {k: data[k] for k in keep if k in data}
    return {k: v for k, v in data.items() if k != "environment"}


class ModelManager:
    """Loads the models of a bundle or registry and keeps them current.

    Args:
        config: The server configuration.
        metrics: Where version switches are recorded.
        factory: Builds predictors for a bundle (default :func:`default_predictors`).
        on_batch: Called after each batch with ``(model, batch_size, stage_times)``.
    """

    def __init__(
        self,
        config: ServeConfig,
        *,
        metrics: ServeMetrics,
        factory: PredictorFactory | None = None,
        on_batch: Callable[[str, int, StageTimes], None] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.factory = factory or default_predictors
        self.on_batch = on_batch
        self.registry = ModelRegistry(config.source) if is_registry(config.source) else None
        self.current: dict[str, LoadedVersion] = {}
        self.errors: dict[str, str] = {}
        self.ready = False
        self._lock = asyncio.Lock()
        self._state_sig: tuple[int, int] | None = None

    # targets --------------------------------------------------------------------------------
    def targets(self) -> dict[str, tuple[str, Path]]:
        """What should be served: ``name -> (version, bundle path)``."""
        if self.registry is None:
            bundle = Bundle.load(self.config.source, verify=False)
            return {bundle.name: (BUNDLE_VERSION, Path(self.config.source))}
        out = {}
        for name in self.registry.models():
            version = self.registry.stage_version(name, "production")
            if version is not None:
                out[name] = (version, self.registry.bundle_path(name, version))
        return out

    def registry_info(self, name: str) -> dict[str, Any] | None:
        """The registry entry of a model (versions and stages), when serving a registry."""
        if self.registry is None:
            return None
        try:
            return self.registry.model(name)
        except CvdeployError:
            return None

    # loading --------------------------------------------------------------------------------
    def _load(self, name: str, version: str, path: Path) -> LoadedVersion:
        """Load, check and warm up a version (runs in a thread)."""
        cfg = self.config
        if cfg.trusted_public_key is not None:
            require_signed(path, cfg.trusted_public_key)  # unsigned or altered: refused
        bundle = Bundle.load(
            path, loader=model_loader(key_from_options(cfg.model_key_file, cfg.model_key_env))
        )
        if bundle.name != name:
            raise UsageError(f"bundle at {path} is named {bundle.name!r}, expected {name!r}")
        predictors = self.factory(bundle, self.config)
        t0 = time.perf_counter()
        try:
            for p in predictors:
                p.runner.load()
                assert p.imgsz is not None
                blank = np.full((*p.imgsz, 3), 114, np.uint8)
                for _ in range(self.config.warmup_runs):
                    run_batch(p, [blank] * p.batch, [p.thresholds] * p.batch)
        except BaseException:
            for p in predictors:
                p.runner.close()
            raise
        warm = (time.perf_counter() - t0) * 1e3
        max_batch = min(cfg.max_batch, predictors[0].batch)
        label = f"{name}:{version}"
        batcher = Batcher(
            [lambda ims, ths, p=p: run_batch(p, ims, ths) for p in predictors],  # type: ignore[misc]
            max_batch=max_batch,
            max_wait_ms=cfg.max_wait_ms,
            queue_size=cfg.queue_size,
            on_batch=lambda n, t: self._batch_done(name, n, t),
            name=label,
        )
        return LoadedVersion(name, version, bundle, predictors, batcher, warmup_ms=warm)

    def _batch_done(self, name: str, n: int, times: StageTimes) -> None:
        if self.on_batch is not None:
            self.on_batch(name, n, times)

    async def switch(self, name: str, version: str, path: Path) -> bool:
        """Load ``version`` and make it serve ``name``; the old version is drained.

        Returns:
            Whether the switch happened (``False``: it failed; the old version still serves).
        """
        try:
            new = await asyncio.to_thread(self._load, name, version, path)
        except Exception as exc:  # any load failure keeps the current version serving
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.errors[name] = f"version {version} failed to load: {msg}"
            self.metrics.reloads.labels(name, "failed").inc()
            _log.error("model %s version %s failed to load: %s", name, version, msg)
            return False
        new.batcher.start()
        old = self.current.get(name)
        self.current[name] = new  # the atomic switch: one assignment on the event loop
        self.errors.pop(name, None)
        self.metrics.set_version(
            name, version, new.artifact_id, (old.version, old.artifact_id) if old else None
        )
        self.metrics.reloads.labels(name, "ok").inc()
        _log.info("model %s now serves version %s (%s)", name, version, new.artifact_id)
        if old is not None:
            await old.batcher.drain()
            await asyncio.to_thread(old.close)
        return True

    async def sync(self, *, force: str | None = None) -> dict[str, str]:
        """Bring every served model to its target version.

        Args:
            force: A model name to reload even when its version did not change.

        Returns:
            ``name -> outcome`` (``unchanged``, ``switched``, ``failed``, ``removed``).
        """
        async with self._lock:
            try:
                targets = await asyncio.to_thread(self.targets)
            except CvdeployError as exc:
                _log.error("cannot read the models to serve: %s", exc)
                return {n: "failed" for n in self.current}
            outcome: dict[str, str] = {}
            for name, (version, path) in targets.items():
                cur = self.current.get(name)
                if cur is not None and cur.version == version and force != name:
                    outcome[name] = "unchanged"
                    continue
                ok = await self.switch(name, version, path)
                outcome[name] = "switched" if ok else "failed"
            for name in [n for n in self.current if n not in targets]:
                old = self.current.pop(name)
                await old.batcher.drain()
                await asyncio.to_thread(old.close)
                outcome[name] = "removed"
            return outcome

    def _signature(self) -> tuple[int, int] | None:
        if self.registry is None:
            return None
        try:
            st = (self.registry.root / STATE_FILE).stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    async def start(self) -> None:
        """Load every model, then mark the manager ready (when all loaded)."""
        self._state_sig = self._signature()
        await self.sync()
        self.ready = bool(self.current) and not self.errors

    async def follow(self) -> None:
        """Poll the registry state and switch versions when it changes (runs until cancelled)."""
        if self.registry is None:
            return
        while True:
            await asyncio.sleep(self.config.poll_interval_s)
            sig = self._signature()
            if sig != self._state_sig:
                self._state_sig = sig
                await self.sync()
                self.ready = bool(self.current)

    async def close(self) -> None:
        """Drain and release every model."""
        for name in list(self.current):
            old = self.current.pop(name)
            await old.batcher.drain()
            await asyncio.to_thread(old.close)
