"""Bootstrap confidence intervals of COCO mAP and top-1 accuracy (resampling images).

A mAP measured on 128 images is an estimate: another 128 images from the same distribution
would give another number. The percentile bootstrap resamples the evaluated images with
replacement and recomputes the metric on each resample; the spread of those values is the
interval (Efron & Tibshirani, ch. 13).

For detection the per-image matching that pycocotools' ``COCOeval.evaluate`` did once is
reused: each resample only re-runs the accumulation (precision at the 101 recall points)
over the chosen images, with pycocotools' own arithmetic, so the resample that takes every
image once reproduces ``COCOeval.accumulate`` exactly (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["bootstrap_accuracy", "bootstrap_map"]

DEFAULT_RESAMPLES = 200
LEVEL = 0.95


class _CategoryData:
    """Per image, for one category (area range "all"): scores, matches, ignore flags."""

    __slots__ = ("dt_ignore", "dt_match", "npig", "scores")

    def __init__(self, n_images: int, n_thresholds: int) -> None:
        empty_t = np.zeros((n_thresholds, 0), dtype=bool)
        self.scores: list[np.ndarray] = [np.zeros(0)] * n_images
        self.dt_match: list[np.ndarray] = [empty_t] * n_images
        self.dt_ignore: list[np.ndarray] = [empty_t] * n_images
        self.npig = np.zeros(n_images, dtype=np.int64)


def _collect(evaluator: Any, max_det: int) -> list[_CategoryData]:
    """Regroup ``evaluator.evalImgs`` per category and image (area range "all")."""
    p = evaluator.params
    n_img, n_area, n_t = len(p.imgIds), len(p.areaRng), len(p.iouThrs)
    cats = p.catIds if p.useCats else [-1]
    out = []
    for k in range(len(cats)):
        cd = _CategoryData(n_img, n_t)
        for i in range(n_img):
            e = evaluator.evalImgs[k * n_area * n_img + i]  # area index 0 = "all"
            if e is None:
                continue
            cd.scores[i] = np.asarray(e["dtScores"][:max_det], dtype=np.float64)
            cd.dt_match[i] = np.asarray(e["dtMatches"])[:, :max_det] != 0
            cd.dt_ignore[i] = np.asarray(e["dtIgnore"])[:, :max_det].astype(bool)
            cd.npig[i] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
        out.append(cd)
    return out


def _precision(cd: _CategoryData, idx: np.ndarray, rec_thrs: np.ndarray) -> np.ndarray | None:
    """Precision ``[T, R]`` of one category over the images ``idx`` (None: no ground truth).

    The arithmetic of ``COCOeval.accumulate``: detections sorted by score (mergesort, as
    there), cumulative true and false positives, precision made monotone, read at the
    recall thresholds.
    """
    npig = int(cd.npig[idx].sum())
    if npig == 0:
        return None
    scores = np.concatenate([cd.scores[i] for i in idx])
    n_t = cd.dt_match[0].shape[0]
    out = np.zeros((n_t, len(rec_thrs)))
    if scores.size == 0:
        return out
    order = np.argsort(-scores, kind="mergesort")
    dtm = np.concatenate([cd.dt_match[i] for i in idx], axis=1)[:, order]
    dti = np.concatenate([cd.dt_ignore[i] for i in idx], axis=1)[:, order]
    tps = np.logical_and(dtm, np.logical_not(dti))
    fps = np.logical_and(np.logical_not(dtm), np.logical_not(dti))
    tp_sum = np.cumsum(tps, axis=1, dtype=np.float64)
    fp_sum = np.cumsum(fps, axis=1, dtype=np.float64)
    for t in range(n_t):
        tp, fp = tp_sum[t], fp_sum[t]
        rc = tp / npig
        pr = tp / (fp + tp + np.spacing(1))
        pr = np.maximum.accumulate(pr[::-1])[::-1]
        inds = np.searchsorted(rc, rec_thrs, side="left")
        q = np.zeros(len(rec_thrs))
        valid = inds < len(pr)
        q[valid] = pr[inds[valid]]
        out[t] = q
    return out


def _map(
    cats: Sequence[_CategoryData], idx: np.ndarray, rec_thrs: np.ndarray
) -> tuple[float, float]:
    """``(mAP50-95, mAP50)`` over the images ``idx`` (classes without ground truth skipped)."""
    per_cat = [pc for cd in cats if (pc := _precision(cd, idx, rec_thrs)) is not None]
    if not per_cat:
        return 0.0, 0.0
    stack = np.stack(per_cat)  # [K, T, R]
    return float(stack.mean()), float(stack[:, 0].mean())


def bootstrap_map(
    evaluator: Any,
    *,
    max_det: int,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile bootstrap interval of mAP50-95 and mAP50 from an evaluated ``COCOeval``.

    Args:
        evaluator: A ``COCOeval`` after ``evaluate()`` (its ``evalImgs`` are reused).
        max_det: The detection limit per image the mAP is read at.
        resamples: Bootstrap resamples of the images.
        level: Coverage of the interval (0.95: the 2.5th and 97.5th percentiles).
        seed: Seed of the resampling (the interval is reproducible).

    Returns:
        ``{"map50_95": [lo, hi], "map50": [lo, hi], "level", "resamples", "seed",
        "method": "percentile bootstrap over images"}``.
    """
    cats = _collect(evaluator, max_det)
    rec_thrs = np.asarray(evaluator.params.recThrs, dtype=np.float64)
    n = len(evaluator.params.imgIds)
    rng = np.random.default_rng(seed)
    values = np.array(
        [_map(cats, rng.integers(0, n, size=n), rec_thrs) for _ in range(int(resamples))]
    ).reshape(-1, 2)
    return _interval({"map50_95": values[:, 0], "map50": values[:, 1]}, level, resamples, seed)


def bootstrap_accuracy(
    top1_hit: np.ndarray,
    top5_hit: np.ndarray,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile bootstrap interval of top-1 and top-5 accuracy over samples."""
    hits1 = np.asarray(top1_hit, dtype=np.float64)
    hits5 = np.asarray(top5_hit, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, hits1.size, size=(int(resamples), hits1.size))
    return _interval(
        {"top1": hits1[idx].mean(axis=1), "top5": hits5[idx].mean(axis=1)}, level, resamples, seed
    )


def _interval(
    values: dict[str, np.ndarray], level: float, resamples: int, seed: int
) -> dict[str, Any]:
    lo_q, hi_q = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    out: dict[str, Any] = {
        k: [round(float(np.percentile(v, lo_q)), 4), round(float(np.percentile(v, hi_q)), 4)]
        for k, v in values.items()
    }
    out.update(
        level=level, resamples=int(resamples), seed=seed, method="percentile bootstrap over images"
    )
    return out
