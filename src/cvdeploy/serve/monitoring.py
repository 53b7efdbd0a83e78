"""Serving metrics: Prometheus collectors on a per-app registry, and live dashboard stats.

Nothing here is module-level state: each app builds its own :class:`ServeMetrics` (with its
own :class:`prometheus_client.CollectorRegistry`) and :class:`LiveStats`.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from cvdeploy.pipeline.results import Classification, Detections

__all__ = ["LiveStats", "ServeMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_CONF_BINS = 10


class ServeMetrics:
    """The Prometheus metrics of one app (``GET /metrics``)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "cvdeploy_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "cvdeploy_request_latency_seconds",
            "End-to-end request latency",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "cvdeploy_stage_latency_seconds",
            "Per-image time of each pipeline stage",
            ["model", "stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "cvdeploy_batch_size",
            "Images per inference batch",
            ["model"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256),
            registry=r,
        )
        self.queue_depth = Gauge(
            "cvdeploy_queue_depth", "Images waiting for a batch", ["model"], registry=r
        )
        self.detections = Histogram(
            "cvdeploy_detections_per_image",
            "Detections per image",
            ["model"],
            buckets=(0, 1, 2, 5, 10, 20, 50, 100, 300),
            registry=r,
        )
        self.confidence = Histogram(
            "cvdeploy_confidence",
            "Confidence of returned detections / top classes",
            ["model"],
            buckets=tuple(round(0.1 * i, 1) for i in range(1, 11)),
            registry=r,
        )
        self.classes = Counter(
            "cvdeploy_predicted_class",
            "Returned detections / top-1 classes by class",
            ["model", "class_name"],
            registry=r,
        )
        self.input_megapixels = Histogram(
            "cvdeploy_input_megapixels",
            "Size of the input images",
            ["model"],
            buckets=(0.01, 0.1, 0.3, 0.5, 1, 2, 4, 8, 16, 40),
            registry=r,
        )
        self.model_info = Gauge(
            "cvdeploy_model_version_info",
            "The version being served (value 1)",
            ["model", "version", "artifact"],
            registry=r,
        )
        self.reloads = Counter(
            "cvdeploy_model_reloads", "Version switches by result", ["model", "result"], registry=r
        )
        # the rolling drift check (cvdeploy.serve.drift)
        self.drift_p_value = Gauge(
            "cvdeploy_drift_p_value",
            "p-value of each drift test on the latest window (test=overall: the verdict's)",
            ["model", "test"],
            registry=r,
        )
        self.drift_statistic = Gauge(
            "cvdeploy_drift_statistic",
            "Statistic of each drift test on the latest window",
            ["model", "test"],
            registry=r,
        )
        self.drift_window = Gauge(
            "cvdeploy_drift_window_images",
            "Images in the rolling drift window",
            ["model"],
            registry=r,
        )
        self.drift_dropped = Counter(
            "cvdeploy_drift_dropped_samples",
            "Sampled images left out of the drift window because its queue was full",
            ["model"],
            registry=r,
        )
        self.drift_alert = Gauge(
            "cvdeploy_drift_alert",
            "1 when the latest window's p-value is at or below drift.alert_p_value",
            ["model"],
            registry=r,
        )

    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)

    def set_version(
        self, model: str, version: str, artifact: str, old: tuple[str, str] | None
    ) -> None:
        """Record which version serves ``model`` (removing the old one's series)."""
        if old is not None:
            with contextlib.suppress(KeyError):
                self.model_info.remove(model, *old)
        self.model_info.labels(model, version, artifact).set(1)

    def observe_results(
        self, model: str, results: Sequence[Detections | Classification], names: Sequence[str]
    ) -> None:
        """Count detections, confidences and classes of returned results."""
        for res in results:
            if isinstance(res, Detections):
                self.detections.labels(model).observe(len(res))
                for score, cid in zip(res.scores.tolist(), res.class_ids.tolist(), strict=True):
                    self.confidence.labels(model).observe(score)
                    self.classes.labels(model, _name(names, cid)).inc()
            else:
                cid, p = res.top_k(1)[0]
                self.confidence.labels(model).observe(p)
                self.classes.labels(model, _name(names, cid)).inc()


def _name(names: Sequence[str], cid: int) -> str:
    return names[cid] if 0 <= cid < len(names) else str(cid)


@dataclass(slots=True)
class LiveStats:
    """Rolling in-memory statistics for the dashboard (``GET /v1/stats``).

    Attributes:
        window_s: Requests older than this are dropped from rates and percentiles.
        recent_every_s: At most one recent prediction is kept per this many seconds.
    """

    window_s: float = 60.0
    recent_every_s: float = 1.0
    _requests: collections.deque[tuple[float, float, int]] = field(
        default_factory=lambda: collections.deque(maxlen=50_000)
    )
    _batches: collections.Counter[int] = field(default_factory=collections.Counter)
    _classes: collections.Counter[str] = field(default_factory=collections.Counter)
    _conf: list[int] = field(default_factory=lambda: [0] * _CONF_BINS)
    _recent: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=6)
    )
    _last_recent: float = 0.0
    started: float = field(default_factory=time.time)

    def request(self, latency_s: float, status: int) -> None:
        """Record one predict request (and forget those older than the window)."""
        now = time.monotonic()
        self._requests.append((now, latency_s * 1e3, status))
        self._trim(now)

    def _trim(self, now: float) -> None:
        # on every request, not only when the dashboard polls: a server nobody watches
        # would otherwise hold up to maxlen entries (a soak run saw RSS creep 0.5 MB/min)
        while self._requests and now - self._requests[0][0] > self.window_s:
            self._requests.popleft()

    def batch(self, size: int) -> None:
        """Record one batch size."""
        self._batches[size] += 1

    def results(self, results: Sequence[Detections | Classification], names: Sequence[str]) -> None:
        """Record the classes and confidences of returned results."""
        for res in results:
            pairs: list[tuple[float, int]]
            if isinstance(res, Detections):
                pairs = list(zip(res.scores.tolist(), res.class_ids.tolist(), strict=True))
            else:
                cid, p = res.top_k(1)[0]
                pairs = [(p, cid)]
            for score, cid in pairs:
                self._classes[_name(names, int(cid))] += 1
                self._conf[min(int(score * _CONF_BINS), _CONF_BINS - 1)] += 1

    def wants_recent(self) -> bool:
        """Whether a new recent prediction should be kept now (rate-limited)."""
        return time.monotonic() - self._last_recent >= self.recent_every_s

    def add_recent(
        self, model: str, version: str, image: np.ndarray, predictions: list[dict[str, Any]]
    ) -> None:
        """Keep a thumbnail of a predicted image with its predictions (boxes rescaled)."""
        self._last_recent = time.monotonic()
        h, w = image.shape[:2]
        s = min(1.0, 320 / max(h, w))
        thumb = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))))
        ok, jpg = cv2.imencode(".jpg", thumb, [cv2.IMWRITE_JPEG_QUALITY, 80])
        preds = []
        for p in predictions:
            q = dict(p)
            if "box" in q:
                q["box"] = [round(v * s, 1) for v in q["box"]]
            preds.append(q)
        self._recent.append(
            {
                "time": time.time(),
                "model": model,
                "version": version,
                "width": thumb.shape[1],
                "height": thumb.shape[0],
                "image": "data:image/jpeg;base64," + base64.b64encode(jpg.tobytes()).decode()
                if ok
                else None,
                "predictions": preds,
            }
        )

    def snapshot(self) -> dict[str, Any]:
        """Rates, latency percentiles and distributions over the window."""
        now = time.monotonic()
        self._trim(now)
        reqs = list(self._requests)
        span = min(self.window_s, max(now - (reqs[0][0] if reqs else now), 1.0))
        lat = np.array([r[1] for r in reqs if r[2] < 400], dtype=np.float64)
        errors = sum(1 for r in reqs if r[2] >= 400)
        recent_10s = sum(1 for r in reqs if now - r[0] <= 10.0)
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "requests_per_s": round(recent_10s / min(10.0, max(span, 1.0)), 2),
            "window_s": self.window_s,
            "requests_in_window": len(reqs),
            "errors_in_window": errors,
            "latency_ms": {
                "p50": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
                "p99": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
            },
            "batch_sizes": {str(k): v for k, v in sorted(self._batches.items())},
            "classes": dict(self._classes.most_common(20)),
            "confidence_bins": list(self._conf),
            "recent": list(self._recent),
        }
