"""The two-sample tests keep their false-alarm rate under no shift and detect a shift."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("scipy")

from cvdeploy.diagnose.stats import (
    c2st,
    class_mix_test,
    holm,
    ks_family,
    ks_min_detectable,
    mmd_test,
    window_needed,
)


def test_holm_is_monotone_and_capped() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def _samples(rng: np.random.Generator, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    ref = rng.normal(0, 1, (150, 4))
    win = rng.normal(0, 1, (60, 4))
    win[:, 0] += shift
    return ref, win


def test_false_alarms_stay_near_alpha_without_shift() -> None:
    rng = np.random.default_rng(0)
    alpha, trials = 0.1, 60
    ks = mmd = cc = 0
    for t in range(trials):
        ref, win = _samples(rng)
        fam = ks_family(
            {f"f{i}": ref[:, i] for i in range(4)},
            {f"f{i}": win[:, i] for i in range(4)},
            alpha=alpha,
        )
        ks += any(r.rejected for r in fam)
        m = mmd_test(ref, win, permutations=100, seed=t)
        c = c2st(ref, win, seed=t)
        assert m is not None and c is not None
        mmd += m.p_value <= alpha
        cc += c.p_value <= alpha
    # binomial(60, 0.1): mean 6, P(X >= 14) < 0.5%
    assert ks < 14 and mmd < 14 and cc < 14, (ks, mmd, cc)


def test_a_shift_is_detected_and_named() -> None:
    rng = np.random.default_rng(1)
    ref, win = _samples(rng, shift=1.0)
    fam = ks_family(
        {f"f{i}": ref[:, i] for i in range(4)}, {f"f{i}": win[:, i] for i in range(4)}, alpha=0.05
    )
    assert [r.detail["feature"] for r in fam if r.rejected] == ["f0"]
    assert fam[0].detail["shift_sd"] > 0.7
    m = mmd_test(ref, win, permutations=200)
    c = c2st(ref, win)
    assert m is not None and m.p_value < 0.01 and c is not None and c.p_value < 0.05


def test_nan_and_constant_features_are_left_out() -> None:
    a = {"x": np.array([np.nan] * 20), "k": np.ones(20), "y": np.arange(20.0)}
    b = {"x": np.ones(20), "k": np.ones(20), "y": np.arange(20.0)}
    fam = ks_family(a, b, alpha=0.05)
    assert [r.detail["feature"] for r in fam] == ["y"] and not fam[0].rejected


def test_class_mix_permutes_images_not_detections() -> None:
    rng = np.random.default_rng(2)
    ref = rng.poisson(1.0, (200, 3)).astype(float)
    same = rng.poisson(1.0, (80, 3)).astype(float)
    moved = rng.poisson([2.0, 1.0, 0.2], (80, 3)).astype(float)
    r0 = class_mix_test(ref, same, permutations=200)
    r1 = class_mix_test(ref, moved, permutations=200)
    assert r0 is not None and r0.p_value > 0.01
    assert (
        r1 is not None and r1.p_value < 0.01 and r1.detail["largest_changes"][0]["class"] in (0, 2)
    )
    assert class_mix_test(ref, np.zeros((10, 3))) is None


def test_window_size_arithmetic() -> None:
    small = ks_min_detectable(300, 10, alpha=0.05, tests=10)
    large = ks_min_detectable(300, 200, alpha=0.05, tests=10)
    assert small > 0.4 > large
    n = window_needed(300, distance=0.25, alpha=0.05, tests=10)
    assert n is not None and ks_min_detectable(300, n, alpha=0.05, tests=10) <= 0.25
    assert window_needed(5, distance=0.25, alpha=0.05, tests=10) is None
