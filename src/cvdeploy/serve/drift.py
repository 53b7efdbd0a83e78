"""The server's rolling drift check: sampled requests against the bundle's reference summary.

A fraction of predicted images (``drift.sample_rate``) is summarised off the request path:
image statistics and prediction statistics (:mod:`cvdeploy.diagnose.features`), computed
on an image decoded as the reference images were (the same reduced JPEG decode rule), so
the server's reduced decode is never taken for drift. The newest ``drift.window`` of them
form the window; every ``drift.every`` new samples, once the window holds
``drift.min_window`` and at most once per ``drift.min_interval_s``, the window is tested
against the reference recorded by ``cvdeploy eval`` (:func:`cvdeploy.diagnose.compare`: KS
per statistic with Holm, the class mix, MMD and a classifier test, family-wise false-alarm
rate ``drift.alert_p_value``).

None of it is on the request path. A request only hands its sampled images over through a
bounded queue (``drift.queue``); when the worker is behind, samples are dropped and counted
(``cvdeploy_drift_dropped_samples``), a request never waits. One worker thread per server
computes the statistics at a lowered scheduling priority (on Linux the thread's own nice
value, +10: the kernel gives inference the cores first; OpenCV and NumPy release the GIL
for the pixel work). The window test (KS, permutations, a classifier: about 0.4 s of
Python and NumPy) runs in a separate worker process at nice +10 (``drift.check_process``),
so it takes neither the GIL nor the cores from inference; if that process cannot be
started, the test runs in the worker thread.

Results: Prometheus gauges (``cvdeploy_drift_p_value{model,test}``,
``cvdeploy_drift_statistic{model,test}``, ``cvdeploy_drift_window_images{model}``,
``cvdeploy_drift_alert{model}``), the dashboard's drift panel (``/v1/stats``), and a
warning in the server log when a model's alert turns on. A bundle without a reference is
not monitored (its panel says how to record one). The model's embeddings are not used here
(that would cost a second inference): MMD and the classifier test run on the image
statistics.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import multiprocessing
import os
import queue
import random
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cvdeploy.errors import CvdeployError

if TYPE_CHECKING:
    from cvdeploy.diagnose import ReferenceSummary
    from cvdeploy.serve.config import DriftConfig
    from cvdeploy.serve.inputs import DecodedImage
    from cvdeploy.serve.models import LoadedVersion
    from cvdeploy.serve.monitoring import ServeMetrics

__all__ = ["DriftMonitor"]

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Window:
    """One served version's reference and rolling window."""

    name: str
    version: str
    reference: ReferenceSummary | None
    reason: str = ""
    rows: collections.deque[np.ndarray] = field(default_factory=collections.deque)
    classes: collections.deque[np.ndarray] = field(default_factory=collections.deque)
    new: int = 0
    checks: int = 0
    last: dict[str, Any] | None = None
    alert: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    checked_at: float = 0.0
    dropped: int = 0


class DriftMonitor:
    """Samples predicted images, keeps a rolling window per model and tests it.

    Args:
        config: The ``drift`` section of the serve configuration.
        metrics: The app's Prometheus metrics (the drift gauges are set here).
        seed: Seed of the sampling (tests).
    """

    def __init__(
        self, config: DriftConfig, metrics: ServeMetrics, *, seed: int | None = None
    ) -> None:
        import importlib.util

        self.config = config
        self.metrics = metrics
        self.unavailable = (
            ""
            if importlib.util.find_spec("scipy")
            else "needs scipy: pip install 'cvdeploy[diagnose]'"
        )
        self._rng = random.Random(seed)
        self._windows: dict[tuple[str, str], _Window] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=config.queue)
        self._worker: threading.Thread | None = None
        self._closed = False
        self._pool: Executor | None = None
        self._pool_failed = not config.check_process
        self._where = ""

    def _start(self) -> None:
        with self._lock:
            if self._worker is not None or self._closed:
                return
            self._worker = threading.Thread(target=self._work, name="cvdeploy-drift", daemon=True)
            self._worker.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker (samples still queued are dropped)."""
        with self._lock:
            self._closed = True
            worker = self._worker
        if worker is None:
            return
        while True:  # make room for the stop signal
            try:
                self._queue.put_nowait(None)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
        worker.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _compare(self, reference: ReferenceSummary, window: Any, seed: int) -> Any:
        """The window test: in the worker process when it can be started, else here."""
        args = (reference, window, self.config.alert_p_value, self.config.permutations, seed)
        if not self._pool_failed and not self._closed:
            try:
                if self._pool is None:
                    self._pool = ProcessPoolExecutor(
                        max_workers=1,
                        mp_context=multiprocessing.get_context("spawn"),
                        initializer=_lower_priority,
                    )
                rep = self._pool.submit(_compare, *args).result()
                self._where = "process"
                return rep
            except Exception as exc:  # BrokenProcessPool, OSError, a sandbox without fork
                _log.warning("drift tests run in the server process: %s", exc)
                self._pool_failed = True
                if self._pool is not None:
                    self._pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = None
        self._where = "thread"
        return _compare(*args)

    def _work(self) -> None:
        _lower_priority()
        while True:
            try:
                item = self._queue.get(timeout=self._wait())
            except queue.Empty:
                item = ()
            if item is None:
                return
            if item:
                try:
                    self._ingest(*item)
                except Exception as exc:  # a bad sample must not stop monitoring
                    _log.error("drift sampling failed: %s", exc)
            for w in self._due():
                try:
                    self.check(w)
                except Exception as exc:
                    _log.error("drift check failed: %s", exc)

    def _pending(self, w: _Window) -> bool:
        return len(w.rows) >= self.config.min_window and (
            w.new >= self.config.every or w.last is None
        )

    def _due(self) -> list[_Window]:
        now = time.monotonic()
        with self._lock:
            windows = list(self._windows.values())
        return [
            w
            for w in windows
            if self._pending(w) and now - w.checked_at >= self.config.min_interval_s
        ]

    def _wait(self) -> float | None:
        """How long the worker may wait for a sample before a pending test is due."""
        with self._lock:
            windows = list(self._windows.values())
        now = time.monotonic()
        waits = [
            self.config.min_interval_s - (now - w.checked_at) for w in windows if self._pending(w)
        ]
        return max(0.01, min(waits)) if waits else None

    def _window(self, model: LoadedVersion) -> _Window:
        key = (model.name, model.version)
        with self._lock:
            w = self._windows.get(key)
            if w is not None:
                return w
            ref, reason = None, ""
            try:
                from cvdeploy.diagnose import load_reference

                ref = load_reference(model.bundle, model.artifact_id)
                if ref is None:
                    reason = (
                        "the bundle has no drift reference: record one with "
                        "`cvdeploy eval BUNDLE --data VAL`"
                    )
            except (CvdeployError, OSError, ValueError, ImportError) as exc:
                reason = f"the drift reference cannot be read: {exc}"
            w = _Window(
                model.name,
                model.version,
                ref,
                reason,
                rows=collections.deque(maxlen=self.config.window),
                classes=collections.deque(maxlen=self.config.window),
            )
            # a newer version replaces the old one's window (and its gauges)
            for k in [k for k in self._windows if k[0] == model.name]:
                del self._windows[k]
            self._windows[key] = w
            return w

    def observe(
        self,
        model: LoadedVersion,
        images: Sequence[DecodedImage],
        results: Sequence[Any],
        background: set[asyncio.Task[Any]],
    ) -> None:
        """Sample some of a request's images and queue them for the drift worker (never
        waits: a full queue drops them, counted)."""
        if (
            not self.config.enabled
            or self.config.sample_rate <= 0
            or self.unavailable
            or self._closed
        ):
            return
        picked = [
            (im, r)
            for im, r in zip(images, results, strict=True)
            if self._rng.random() < self.config.sample_rate
        ]
        if not picked:
            return
        w = self._window(model)
        if w.reference is None:
            return
        fit = model.predictors[0].imgsz
        assert fit is not None
        self._start()
        self.submit(w, picked, (int(fit[0]), int(fit[1])), model.bundle.spec)

    def submit(
        self, w: _Window, picked: list[tuple[DecodedImage, Any]], fit: tuple[int, int], spec: Any
    ) -> bool:
        """Queue sampled images for the worker; ``False``: the queue was full, they were
        dropped and counted."""
        try:
            self._queue.put_nowait((w, picked, fit, spec))
            return True
        except queue.Full:
            with w.lock:
                w.dropped += len(picked)
            self.metrics.drift_dropped.labels(w.name).inc(len(picked))
            return False

    def _ingest(
        self, w: _Window, picked: list[tuple[DecodedImage, Any]], fit: tuple[int, int], spec: Any
    ) -> None:
        from cvdeploy.diagnose import (
            decode_for_features,
            feature_side,
            image_features,
            jpeg_reduction,
            result_features,
        )

        side = feature_side(fit)
        for im, res in picked:
            img = im.image
            size = im.size
            want = jpeg_reduction(size, fit) if im.data[:2] == b"\xff\xd8" else 1
            if want != im.reduced:  # decoded otherwise than the reference images were
                try:
                    img, size, _ = decode_for_features(im.data, fit)
                except CvdeployError:
                    continue
            feats = image_features(img, data=im.data, size=size, side=side)
            pf, cc = result_features(
                res, conf=spec.decoder.conf, num_classes=spec.num_classes, image_size=im.size
            )
            with w.lock:
                w.rows.append(np.concatenate([feats, pf]))
                w.classes.append(cc)
                w.new += 1

    def check(self, w: _Window) -> dict[str, Any] | None:
        """Test the window now (normally done every ``drift.every`` samples)."""
        from cvdeploy.diagnose import FeatureTable

        if w.reference is None:
            return None
        with w.lock:
            values = np.stack(list(w.rows)) if w.rows else None
            classes = np.stack(list(w.classes)) if w.classes else None
            w.new = 0
            w.checked_at = time.monotonic()
        if values is None or classes is None:
            return None
        names = w.reference.table.names
        window = FeatureTable(names=names[: values.shape[1]], values=values, classes=classes)
        t0 = time.perf_counter()
        rep = self._compare(w.reference, window, w.checks)
        w.checks += 1
        m = self.metrics
        m.drift_window.labels(w.name).set(len(window))
        m.drift_p_value.labels(w.name, "overall").set(rep.p_value)
        for fam, v in rep.families.items():
            m.drift_p_value.labels(w.name, fam).set(v["p_adjusted"])
        for t in rep.tests:
            m.drift_p_value.labels(w.name, t.name).set(t.p_adjusted)
            m.drift_statistic.labels(w.name, t.name).set(t.statistic)
        alert = rep.verdict == "drift"
        m.drift_alert.labels(w.name).set(1.0 if alert else 0.0)
        if alert and not w.alert:
            _log.warning(
                "drift alert for %s (version %s): p=%.3g <= %s; moved: %s",
                w.name,
                w.version,
                rep.p_value,
                self.config.alert_p_value,
                ", ".join(rep.drifted[:5]),
            )
        w.alert = alert
        w.last = {
            "time": time.time(),
            "verdict": rep.verdict,
            "p_value": rep.p_value,
            "alert": alert,
            "window": rep.n_window,
            "reference_images": rep.n_ref,
            "drifted": rep.drifted[:8],
            "tests": [
                {"name": t.name, "p": t.p_adjusted, "statistic": t.statistic}
                for t in sorted(rep.tests, key=lambda t: t.p_adjusted)[:12]
            ],
            "seconds": round(time.perf_counter() - t0, 3),
            "ran_in": self._where,
        }
        return w.last

    def snapshot(self, models: Sequence[LoadedVersion] = ()) -> dict[str, Any]:
        """Per model: the reference, the window size, the latest verdict (``/v1/stats``).

        Args:
            models: The served versions: each is listed (its reference loaded) even before
                its first image is sampled, with an empty window (otherwise a server
                sampling a fraction of few requests would show no monitored model at all).
        """
        out: dict[str, Any] = {}
        if self.config.enabled and self.config.sample_rate > 0 and not self.unavailable:
            for m in models:
                self._window(m)
        with self._lock:
            windows = list(self._windows.values())
        for w in windows:
            ref = w.reference
            out[w.name] = {
                "version": w.version,
                "reference": None
                if ref is None
                else {"dataset": ref.meta.get("dataset"), "images": len(ref.table)},
                "reason": w.reason,
                "window": len(w.rows),
                "dropped": w.dropped,
                "min_window": self.config.min_window,
                "alert_p_value": self.config.alert_p_value,
                "last": w.last,
            }
        return {
            "enabled": self.config.enabled and not self.unavailable,
            "unavailable": self.unavailable or None,
            "sample_rate": self.config.sample_rate,
            "models": out,
        }


def _compare(
    reference: ReferenceSummary, window: Any, alpha: float, permutations: int, seed: int
) -> Any:
    from cvdeploy.diagnose import compare

    return compare(reference, window, alpha=alpha, permutations=permutations, seed=seed)


def _lower_priority() -> None:
    """Raise the calling thread's nice value by 10 (Linux: per thread, and in the check
    process its main thread; elsewhere the call would renice the whole server, so it is not
    made)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 10))
    except OSError:  # not permitted in some sandboxes: run at normal priority
        pass
