"""Two-sample tests with calibrated false-alarm rates (numpy + scipy; no Alibi Detect).

Each test compares a reference sample with a production window and returns a p-value that
is valid under "no shift" (both drawn from the same distribution):

- :func:`ks_family`: a Kolmogorov-Smirnov test per feature, Holm-corrected over the
  features, so the family's false-alarm rate stays at ``alpha``;
- :func:`class_mix_test`: predicted-class proportions, a permutation test over *images*
  (detections of one image are not independent, a chi-square over detections would be
  anti-conservative);
- :func:`mmd_test`: maximum mean discrepancy with a Gaussian kernel (median-distance
  bandwidth), p-value by permutation;
- :func:`c2st`: a classifier two-sample test: L2 logistic regression on one half, its
  accuracy on the other half against the exact (hypergeometric) null.

:func:`ks_min_detectable` gives the smallest KS distance a window can detect, which the
verdict uses to say when a window is too small to tell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MIN_PER_SIDE = 8
"""Fewest values on each side for a per-feature test to run."""


@dataclass(slots=True)
class TestResult:
    """One test's outcome.

    Attributes:
        name: ``ks:<feature>``, ``class_mix``, ``mmd``, ``c2st``.
        statistic: KS distance, total-variation distance, MMD^2, held-out accuracy.
        p_value: Unadjusted p-value.
        p_adjusted: After the multiple-testing correction of its family (and the
            Bonferroni split of ``alpha`` between families).
        rejected: ``p_adjusted <= alpha``.
        n_ref: Reference values used.
        n_window: Window values used.
        detail: Test-specific figures (effect size, direction, bandwidth...).
    """

    name: str
    statistic: float
    p_value: float
    p_adjusted: float = math.nan
    rejected: bool = False
    n_ref: int = 0
    n_window: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def ks_critical(n_ref: int, n_window: int, alpha: float) -> float:
    """The asymptotic KS distance a two-sample test needs to reject at ``alpha``."""
    if n_ref < 1 or n_window < 1:
        return math.inf
    c = math.sqrt(-math.log(alpha / 2.0) / 2.0)
    return c * math.sqrt((n_ref + n_window) / (n_ref * n_window))


def ks_min_detectable(n_ref: int, n_window: int, *, alpha: float, tests: int) -> float:
    """Smallest KS distance the first (most significant) Holm step can detect."""
    return ks_critical(n_ref, n_window, alpha / max(tests, 1))


def window_needed(n_ref: int, *, distance: float, alpha: float, tests: int) -> int | None:
    """Fewest window images whose KS test can detect ``distance`` (None: never, the
    reference is too small)."""
    c = math.sqrt(-math.log(alpha / max(tests, 1) / 2.0) / 2.0)
    rest = (distance / c) ** 2 - 1.0 / max(n_ref, 1)
    if rest <= 0:
        return None
    return math.ceil(1.0 / rest)


def ks_family(
    ref: Mapping[str, np.ndarray], window: Mapping[str, np.ndarray], *, alpha: float
) -> list[TestResult]:
    """A two-sample KS test per feature, Holm-corrected over the features that could be
    tested (enough finite values on both sides, not constant on both).

    The ``detail`` of each result holds ``shift_sd`` (the window's median minus the
    reference's, in reference standard deviations) and the medians.
    """
    from scipy.stats import ks_2samp

    results: list[TestResult] = []
    for name, r in ref.items():
        w = window.get(name)
        if w is None:
            continue
        a = np.asarray(r, dtype=np.float64)
        b = np.asarray(w, dtype=np.float64)
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if a.size < MIN_PER_SIDE or b.size < MIN_PER_SIDE:
            continue
        if np.ptp(a) == 0 and np.ptp(b) == 0 and a[0] == b[0]:
            continue
        res = ks_2samp(a, b, method="auto")
        sd = float(a.std())
        shift = float(np.median(b) - np.median(a))
        results.append(
            TestResult(
                name=f"ks:{name}",
                statistic=float(res.statistic),
                p_value=float(res.pvalue),
                n_ref=int(a.size),
                n_window=int(b.size),
                detail={
                    "feature": name,
                    "ref_median": float(np.median(a)),
                    "window_median": float(np.median(b)),
                    # None when the reference is (nearly) constant: no scale to measure by
                    "shift_sd": shift / sd if sd > 1e-6 * max(1.0, abs(float(a.mean()))) else None,
                },
            )
        )
    adjusted = holm([t.p_value for t in results])
    for t, p in zip(results, adjusted, strict=True):
        t.p_adjusted = p
        t.rejected = p <= alpha
    return results


def class_mix_test(
    ref: np.ndarray, window: np.ndarray, *, permutations: int = 500, seed: int = 0
) -> TestResult | None:
    """Do the predicted-class proportions differ? Total-variation distance between the
    two class histograms, p-value by permuting images between the samples.

    Args:
        ref: ``(images, classes)`` counts of the reference.
        window: ``(images, classes)`` counts of the window.

    Returns:
        The result, or ``None`` when either side has no prediction at all.
    """
    if ref.ndim != 2 or ref.shape[1] == 0 or ref.sum() == 0 or window.sum() == 0:
        return None
    pooled = np.concatenate([ref, window]).astype(np.float64)
    n, m = len(ref), len(window)
    rng = np.random.default_rng(seed)

    def tv(sel: np.ndarray) -> np.ndarray:
        # sel: (B, N) 0/1 membership of the window; histograms of both sides per row
        w = sel @ pooled
        r = (1.0 - sel) @ pooled
        w_tot = np.maximum(w.sum(1, keepdims=True), 1e-12)
        r_tot = np.maximum(r.sum(1, keepdims=True), 1e-12)
        out: np.ndarray = 0.5 * np.abs(w / w_tot - r / r_tot).sum(1)
        return out

    observed = np.zeros((1, n + m))
    observed[0, n:] = 1.0
    stat = float(tv(observed)[0])
    perms = np.zeros((permutations, n + m))
    for b in range(permutations):
        perms[b, rng.permutation(n + m)[:m]] = 1.0
    null = tv(perms)
    p = (1.0 + float((null >= stat - 1e-12).sum())) / (permutations + 1.0)
    rs, ws = ref.sum(0), window.sum(0)
    rp, wp = rs / max(rs.sum(), 1e-12), ws / max(ws.sum(), 1e-12)
    moved = np.argsort(-np.abs(wp - rp))[:5]
    return TestResult(
        name="class_mix",
        statistic=stat,
        p_value=p,
        n_ref=n,
        n_window=m,
        detail={
            "permutations": permutations,
            "largest_changes": [
                {"class": int(c), "ref_share": float(rp[c]), "window_share": float(wp[c])}
                for c in moved
                if rp[c] != wp[c]
            ],
        },
    )


def _standardize(ref: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both samples scaled by the *pooled* sample's mean and standard deviation; columns
    constant in the pooled sample are dropped; a non-finite value is replaced by its
    column's pooled mean, with a 0/1 column saying which values were known.

    Pooled, not the reference's: the scaling is then a function of the pooled sample only,
    unchanged when rows are permuted between the samples, so the permutation and held-out
    tests built on it stay exact under "no shift". Scaled by the reference alone, the
    reference has mean 0 and variance 1 exactly and the window does not, a difference a
    classifier or MMD picks up in many dimensions with small samples.
    """
    r = np.asarray(ref, np.float64)
    w = np.asarray(window, np.float64)
    z = np.concatenate([r, w])
    # unknown values (jpeg_quality of a PNG): the pooled mean, plus a column saying which
    fin = np.isfinite(z)
    part = ~np.all(fin, axis=0)
    if part.any():
        cnt = fin.sum(0)
        fill = np.where(fin, z, 0.0).sum(0) / np.maximum(cnt, 1)
        z = np.concatenate([np.where(fin, z, fill), fin[:, part].astype(np.float64)], axis=1)
    mu = z.mean(0) if len(z) else np.zeros(z.shape[1])
    sd = z.std(0) if len(z) else np.zeros(z.shape[1])
    # (nearly) constant in the pooled sample: no scale to standardize by, nothing to test
    keep = sd > max(1e-12, 1e-6 * float(sd.max(initial=0.0)))
    zs = (z[:, keep] - mu[keep]) / sd[keep]
    return zs[: len(r)], zs[len(r) :]


def mmd_test(
    ref: np.ndarray,
    window: np.ndarray,
    *,
    permutations: int = 500,
    seed: int = 0,
    max_ref: int = 500,
) -> TestResult | None:
    """Maximum mean discrepancy (Gaussian kernel) with a permutation p-value.

    Both samples are standardized by the pooled sample; the bandwidth is the median
    distance of the pooled sample (both functions of the pooled sample only, so the
    permutation p-value is exact under "no shift"). The statistic is the biased MMD^2
    ``s^T K s`` with ``s`` = 1/m on window rows and -1/n on reference rows, so all
    permutations are one matrix product.

    Args:
        ref: ``(n, d)`` reference vectors (at most ``max_ref`` rows are used, drawn at
            random with ``seed``).
        window: ``(m, d)`` window vectors.
    """
    rng = np.random.default_rng(seed)
    if len(ref) > max_ref:
        ref = ref[rng.choice(len(ref), max_ref, replace=False)]
    r, w = _standardize(np.asarray(ref, np.float64), np.asarray(window, np.float64))
    n, m = len(r), len(w)
    if n < MIN_PER_SIDE or m < MIN_PER_SIDE or r.shape[1] == 0:
        return None
    z = np.concatenate([r, w])
    sq = (z * z).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0)
    tri = d2[np.triu_indices(len(z), 1)]
    med = float(np.median(tri[tri > 0])) if np.any(tri > 0) else 1.0
    k = np.exp(-d2 / med)
    s_obs = np.concatenate([np.full(n, -1.0 / n), np.full(m, 1.0 / m)])
    stat = float(s_obs @ k @ s_obs)
    s = np.empty((n + m, permutations))
    base = np.concatenate([np.full(n, -1.0 / n), np.full(m, 1.0 / m)])
    for b in range(permutations):
        s[:, b] = base[rng.permutation(n + m)]
    null = np.einsum("ib,ib->b", s, k @ s)
    p = (1.0 + float((null >= stat - 1e-12).sum())) / (permutations + 1.0)
    return TestResult(
        name="mmd",
        statistic=stat,
        p_value=p,
        n_ref=n,
        n_window=m,
        detail={"dims": int(r.shape[1]), "bandwidth_sq": med, "permutations": permutations},
    )


def _logistic_fit(x: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """L2-regularised logistic regression weights (last entry: the intercept)."""
    from scipy.optimize import minimize

    xb = np.concatenate([x, np.ones((len(x), 1))], axis=1)

    def loss(wv: np.ndarray) -> tuple[float, np.ndarray]:
        z = xb @ wv
        p = 1.0 / (1.0 + np.exp(-z))
        ll = np.logaddexp(0.0, z) - y * z
        reg = 0.5 * l2 * float(wv[:-1] @ wv[:-1])
        grad = xb.T @ (p - y) / len(y)
        grad[:-1] += l2 * wv[:-1]
        return float(ll.mean()) + reg, grad

    res = minimize(loss, np.zeros(xb.shape[1]), jac=True, method="L-BFGS-B")
    out: np.ndarray = res.x
    return out


def c2st(
    ref: np.ndarray, window: np.ndarray, *, seed: int = 0, l2: float = 0.05
) -> TestResult | None:
    """Classifier two-sample test: can a classifier tell the window from the reference?

    The reference is subsampled to the window's size (balanced classes), both are
    standardized by the pooled sample (a scaling that does not depend on which rows are the
    window's, so held-out labels stay exchangeable), squares are added (shifts of spread,
    not only of the mean), and the sample is split in halves at random. A logistic
    regression trained on one half predicts the other; under "no shift" the labels of the
    held-out half are a random arrangement, so the number of correct predictions has an
    exact hypergeometric null distribution given how many were predicted "window".
    """
    from scipy.stats import hypergeom

    rng = np.random.default_rng(seed)
    m = len(window)
    if len(ref) > m:
        ref = ref[rng.choice(len(ref), m, replace=False)]
    r, w = _standardize(np.asarray(ref, np.float64), np.asarray(window, np.float64))
    n = len(r)
    if n < MIN_PER_SIDE or m < MIN_PER_SIDE or r.shape[1] == 0:
        return None
    x = np.concatenate([r, w])
    x = np.concatenate([x, x * x - 1.0], axis=1)
    y = np.concatenate([np.zeros(n), np.ones(m)])
    idx = rng.permutation(n + m)
    half = (n + m) // 2
    tr, te = idx[:half], idx[half:]
    wv = _logistic_fit(x[tr], y[tr], l2)
    pred = (np.concatenate([x[te], np.ones((len(te), 1))], axis=1) @ wv) > 0
    yt = y[te].astype(bool)
    n_te, n1, k = len(te), int(yt.sum()), int(pred.sum())
    a = int((pred & yt).sum())
    correct = int((pred == yt).sum())
    p = float(hypergeom.sf(a - 1, n_te, n1, k)) if k > 0 else 1.0
    return TestResult(
        name="c2st",
        statistic=correct / n_te,
        p_value=min(1.0, p),
        n_ref=n,
        n_window=m,
        detail={"held_out": n_te, "dims": int(x.shape[1])},
    )
