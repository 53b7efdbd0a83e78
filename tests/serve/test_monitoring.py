"""LiveStats keeps only the window's requests, whether or not the dashboard polls."""

from __future__ import annotations

import pytest

from cvdeploy.serve import monitoring
from cvdeploy.serve.monitoring import LiveStats


def test_requests_outside_the_window_are_dropped_without_a_snapshot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(monitoring.time, "monotonic", lambda: clock[0])
    stats = LiveStats(window_s=60.0)
    for _ in range(1000):  # one request every 0.5 s for 500 s, nobody polling
        stats.request(0.01, 200)
        clock[0] += 0.5
    assert len(stats._requests) <= 121  # 60 s of them, not 1000
    snap = stats.snapshot()
    assert snap["requests_in_window"] <= 121
    assert snap["latency_ms"]["p50"] == pytest.approx(10.0)
