"""The server's rolling drift check: gauges, /v1/stats, the alert, and no reference."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from cvdeploy.bundle import Bundle
from cvdeploy.errors import UsageError
from tests.serve.conftest import serving

pytest.importorskip("scipy")

RAW = {"content-type": "image/jpeg"}
DRIFT = {
    "sample_rate": 1.0,
    "window": 40,
    "min_window": 20,
    "every": 10,
    "permutations": 100,
    "alert_p_value": 0.01,
    "min_interval_s": 0,
}


def _image(seed: int, scale: float = 1.0) -> bytes:
    rng = np.random.default_rng(seed)
    h, w = (120, 160) if seed % 2 else (150, 100)
    base = rng.normal(128, 20, 3)
    img = np.clip((base + rng.normal(0, 30, (h, w, 3))) * scale, 0, 255).astype(np.uint8)
    cv2.rectangle(img, (10, 10), (50, 40), (0, 200, 0), -1)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


@pytest.fixture(scope="module")
def monitored(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with a drift reference of 120 images."""
    from cvdeploy.diagnose import record_reference

    root = tmp_path_factory.mktemp("drift")
    b = root / "bundle"
    shutil.copytree(tiny_bundle, b)
    (root / "ref").mkdir()
    for i in range(120):
        (root / "ref" / f"{i:03d}.jpg").write_bytes(_image(1000 + i))
    record_reference(Bundle.load(b), root / "ref", progress=False)
    return b


def _wait_for_check(c: Any, want_window: int) -> dict[str, Any]:
    end = time.monotonic() + 60
    while time.monotonic() < end:
        m = c.get("/v1/stats").json()["drift"]["models"].get("tiny")
        if m and m["last"] and m["last"]["window"] >= want_window:
            return m  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"no drift check ran: {c.get('/v1/stats').json()['drift']}")


def _alert(metrics: str) -> float:
    line = next(
        x for x in metrics.splitlines() if x.startswith('cvdeploy_drift_alert{model="tiny"}')
    )
    return float(line.split()[-1])


def test_a_darker_camera_raises_the_alert(monitored: Path) -> None:
    with serving(monitored, drift=DRIFT) as c:
        for i in range(40):
            assert (
                c.post("/v1/models/tiny/predict", content=_image(i, 0.5), headers=RAW).status_code
                == 200
            )
        m = _wait_for_check(c, 40)
        assert m["last"]["verdict"] == "drift" and m["last"]["alert"]
        assert m["last"]["ran_in"] == "process"  # off the server's GIL
        assert "ks:brightness" in m["last"]["drifted"] and m["reference"]["images"] == 120
        text = c.get("/metrics").text
        assert _alert(text) == 1.0
        assert 'cvdeploy_drift_p_value{model="tiny",test="ks:brightness"}' in text
        assert 'cvdeploy_drift_window_images{model="tiny"} 40.0' in text


def test_the_same_camera_stays_quiet(monitored: Path) -> None:
    with serving(monitored, drift={**DRIFT, "check_process": False}) as c:
        for i in range(40):
            c.post("/v1/models/tiny/predict", content=_image(i), headers=RAW)
        m = _wait_for_check(c, 40)
        assert m["last"]["verdict"] != "drift" and not m["last"]["alert"], m["last"]
        assert m["last"]["ran_in"] == "thread"
        assert _alert(c.get("/metrics").text) == 0.0


def test_a_model_is_listed_before_its_first_sampled_image(monitored: Path) -> None:
    # /v1/stats once showed drift.models empty with sampling on: windows were only made
    # when an image was sampled
    with serving(monitored, drift={**DRIFT, "sample_rate": 0.001}) as c:
        m = c.get("/v1/stats").json()["drift"]["models"]["tiny"]
        assert m["window"] == 0 and m["last"] is None and m["reference"]["images"] == 120
        assert m["reason"] == ""


def test_no_reference_no_monitoring_and_config_checks(tiny_bundle: Path, tmp_path: Path) -> None:
    from cvdeploy.serve.config import load_config

    with serving(tiny_bundle, drift=DRIFT) as c:
        c.post("/v1/models/tiny/predict", content=_image(1), headers=RAW)
        end = time.monotonic() + 10
        while time.monotonic() < end and not c.get("/v1/stats").json()["drift"]["models"]:
            time.sleep(0.05)
        m = c.get("/v1/stats").json()["drift"]["models"]["tiny"]
        assert m["reference"] is None and "cvdeploy eval" in m["reason"]
        assert "cvdeploy_drift_alert{" not in c.get("/metrics").text
    with serving(tiny_bundle, drift={"enabled": False}) as c:
        assert c.get("/v1/stats").json()["drift"] is None
    with pytest.raises(UsageError, match="min_window"):
        load_config(None, source=tiny_bundle, drift={"window": 20, "min_window": 50})
    with pytest.raises(UsageError, match="alert_p_value"):
        load_config(None, source=tiny_bundle, drift={"alert_p_value": 2})


def test_a_full_queue_drops_and_counts_and_close_stops_the_worker() -> None:
    """A request never waits for the drift worker: with the queue full, samples are dropped
    and counted; close() stops the worker thread."""
    from cvdeploy.serve.config import DriftConfig
    from cvdeploy.serve.drift import DriftMonitor, _Window
    from cvdeploy.serve.monitoring import ServeMetrics

    metrics = ServeMetrics()
    mon = DriftMonitor(DriftConfig(queue=1), metrics)
    w = _Window("tiny", "1", None)
    assert mon.submit(w, [], (64, 64), None)  # the worker is not started: it stays queued
    assert not mon.submit(w, [object(), object()], (64, 64), None)  # type: ignore[list-item]
    assert w.dropped == 2
    assert 'cvdeploy_drift_dropped_samples_total{model="tiny"} 2.0' in (
        metrics.exposition().decode()
    )
    mon._start()
    worker = mon._worker
    assert worker is not None
    mon.close(timeout=10)
    assert not worker.is_alive()
    mon.close()  # twice is fine
