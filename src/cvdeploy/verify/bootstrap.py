"""Bootstrap confidence intervals of COCO mAP and top-1 accuracy (resampling images).

A mAP measured on 128 images is an estimate: another 128 images from the same distribution
would give another number. The percentile bootstrap resamples the evaluated images with
replacement and recomputes the metric on each resample; the spread of those values is the
interval (Efron & Tibshirani, ch. 13).

For detection the per-image matching that pycocotools' ``COCOeval.evaluate`` did once is
reused, and each category's detections are sorted once: a resample only re-weights them by
how often each image was drawn and re-runs the accumulation (precision at the 101 recall
points) with pycocotools' own arithmetic, so the resample that draws every image once
reproduces ``COCOeval.accumulate`` exactly (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["bootstrap_accuracy", "bootstrap_map"]

DEFAULT_RESAMPLES = 200
LEVEL = 0.95


class _CategoryData:
    """One category (area range "all"), every image's detections merged and sorted once.

    Attributes:
        image: Image index of each detection, in score order.
        tps, fps: True/false positive flags ``[T, D]`` in score order (float, for weights).
        npig: Non-ignored ground truth boxes per image.
    """

    __slots__ = ("fps", "image", "npig", "tps")

    def __init__(self, image: np.ndarray, tps: np.ndarray, fps: np.ndarray, npig: np.ndarray):
        self.image = image
        self.tps = tps
        self.fps = fps
        self.npig = npig


def _collect(evaluator: Any, max_det: int) -> list[_CategoryData]:
    """Regroup ``evaluator.evalImgs`` per category: detections of every image, sorted by
    score with pycocotools' mergesort over the images in order (``accumulate``'s order)."""
    p = evaluator.params
    n_img, n_area, n_t = len(p.imgIds), len(p.areaRng), len(p.iouThrs)
    cats = p.catIds if p.useCats else [-1]
    out = []
    for k in range(len(cats)):
        scores, images, dtm, dti = [], [], [], []
        npig = np.zeros(n_img, dtype=np.int64)
        for i in range(n_img):
            e = evaluator.evalImgs[k * n_area * n_img + i]  # area index 0 = "all"
            if e is None:
                continue
            sc = np.asarray(e["dtScores"][:max_det], dtype=np.float64)
            scores.append(sc)
            images.append(np.full(sc.size, i, dtype=np.int64))
            dtm.append(np.asarray(e["dtMatches"]).reshape(n_t, -1)[:, :max_det] != 0)
            dti.append(np.asarray(e["dtIgnore"]).reshape(n_t, -1)[:, :max_det].astype(bool))
            npig[i] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
        if scores:
            all_scores = np.concatenate(scores)
            order = np.argsort(-all_scores, kind="mergesort")
            m = np.concatenate(dtm, axis=1)[:, order]
            ig = np.concatenate(dti, axis=1)[:, order]
            image = np.concatenate(images)[order]
        else:
            m = ig = np.zeros((n_t, 0), dtype=bool)
            image = np.zeros(0, dtype=np.int64)
        tps = np.logical_and(m, ~ig).astype(np.float64)
        fps = np.logical_and(~m, ~ig).astype(np.float64)
        out.append(_CategoryData(image, tps, fps, npig))
    return out


def _precision(cd: _CategoryData, counts: np.ndarray, rec_thrs: np.ndarray) -> np.ndarray | None:
    """Precision ``[T, R]`` of one category when image ``i`` is drawn ``counts[i]`` times
    (``None``: no ground truth among the drawn images).

    ``COCOeval.accumulate``'s arithmetic with each detection weighted by how often its
    image was drawn: cumulative true and false positives, precision made monotone, read at
    the recall thresholds. A detection drawn twice adds its two copies in one step, which
    gives the same interpolated precision (the copies of a true positive raise precision
    step by step, so the envelope at their end is the same; copies of a false positive
    never raise it); with every count 1 it is ``accumulate`` exactly.
    """
    npig = float((cd.npig * counts).sum())
    if npig == 0:
        return None
    n_t = cd.tps.shape[0]
    out = np.zeros((n_t, len(rec_thrs)))
    if cd.image.size == 0:
        return out
    w = counts[cd.image].astype(np.float64)
    tp_sum = np.cumsum(cd.tps * w, axis=1)
    fp_sum = np.cumsum(cd.fps * w, axis=1)
    rc = tp_sum / npig
    pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
    for t in range(n_t):  # per row: shifting rows into one searchsorted rounds differently
        inds = np.searchsorted(rc[t], rec_thrs, side="left")
        valid = inds < rc.shape[1]
        out[t, valid] = pr[t, inds[valid]]
    return out


def _map(
    cats: Sequence[_CategoryData], counts: np.ndarray, rec_thrs: np.ndarray
) -> tuple[float, float]:
    """``(mAP50-95, mAP50)`` with image ``i`` drawn ``counts[i]`` times (classes without
    ground truth skipped)."""
    per_cat = [pc for cd in cats if (pc := _precision(cd, counts, rec_thrs)) is not None]
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
    draws = (np.bincount(rng.integers(0, n, size=n), minlength=n) for _ in range(int(resamples)))
    values = np.array([_map(cats, c, rec_thrs) for c in draws]).reshape(-1, 2)
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
