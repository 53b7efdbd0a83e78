"""Statistics against known synthetic timings; memory probes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cvdeploy.bench.stats import Stats, peak_rss_mb, reset_peak_rss, summarize
from cvdeploy.errors import UsageError


def test_percentiles_mean_std_n_of_known_samples() -> None:
    s = summarize([float(v) for v in range(1, 101)])  # 1..100 ms
    assert s.n == 100
    assert s.p50 == pytest.approx(50.5)
    assert s.p90 == pytest.approx(90.1)
    assert s.p99 == pytest.approx(99.01)
    assert s.mean == pytest.approx(50.5)
    # sample std of 1..n is sqrt(n(n+1)/12)
    assert s.std == pytest.approx(math.sqrt(100 * 101 / 12))


def test_order_does_not_matter_and_constant_has_zero_spread() -> None:
    rng = np.random.default_rng(0)
    a = rng.exponential(5.0, size=257)
    assert summarize(a) == summarize(rng.permutation(a))
    c = summarize([2.5] * 7)
    assert (c.p50, c.p90, c.p99, c.mean, c.std, c.n) == (2.5, 2.5, 2.5, 2.5, 0.0, 7)


def test_single_sample() -> None:
    s = summarize([3.0])
    assert s.std == 0.0 and s.n == 1 and s.p99 == 3.0


def test_round_trip_dict() -> None:
    s = summarize([1.0, 2.0, 4.0])
    d = s.to_dict()
    assert set(d) == {"p50", "p90", "p99", "mean", "std", "n"}
    assert Stats.from_dict(d) == s


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_bad_samples_are_refused(bad: list[float]) -> None:
    with pytest.raises(UsageError):
        summarize(bad)


def test_peak_rss_grows_with_an_allocation() -> None:
    probe = reset_peak_rss()
    before = peak_rss_mb()
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB touched
    after = peak_rss_mb()
    del block
    assert before > 0
    assert after >= before + 32  # MiB; memory, not time
    assert probe.method in ("proc-hwm-reset", "proc-hwm", "getrusage")
