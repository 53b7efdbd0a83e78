"""Exact greedy non-maximum suppression in vectorised numpy.

The result equals ``torchvision.ops.nms``: boxes are visited by descending score (equal
scores keep their original order, like a stable sort), and a box is dropped when its IoU
with an already kept box is *greater* than the threshold. IoU uses areas
``(x2 - x1) * (y2 - y1)`` (no ``+1``) and is computed in the boxes' floating dtype with
torchvision's operation order, then compared with the threshold as a double would be.

Greedy NMS is sequential by nature, but a box's fate depends only on the boxes before it.
The candidates are therefore processed in score order, chunk by chunk: a chunk is first
filtered against every box kept so far, then its survivors are resolved in blocks of
``_BLOCK``: a few vectorised fixed-point rounds usually settle a block, and long
suppression chains fall back to a sequential pass whose only Python loop runs over the
boxes that are *kept*. Processing stops as soon as ``max_keep`` boxes are kept, so a
detector that keeps 300 boxes out of 30000 candidates only looks at the first chunks;
when nearly a whole chunk is suppressed the next one is larger (linear cost).

IoUs are only computed for pairs whose x-ranges overlap (a sort + ``searchsorted``
sweep): every other pair has no intersection and cannot exceed a threshold >= 0. With
the class-offset trick of :func:`batched_nms` this skips every cross-class pair.
"""

from __future__ import annotations

import numpy as np

from cvdeploy.errors import ShapeError, UsageError

__all__ = ["batched_nms", "box_iou", "nms", "nms_sorted"]

_BLOCK = 256  # candidates resolved per IoU matrix (256 x 256 floats: 256 KiB)
_MAX_CHUNK = 16384  # most candidates filtered at once when nearly all are suppressed
_KEPT_BLOCK = 2048  # boxes compared with a set at once (bounds memory)
_DENSE_PAIRS = 1024  # below this many pairs a dense IoU matrix is cheapest
_FIXED_POINT_ROUNDS = 8  # vectorised rounds tried before the sequential pass


def _as_boxes(boxes_xyxy: np.ndarray) -> np.ndarray:
    """Return ``(n, 4)`` boxes in a floating dtype (float32 unless already floating)."""
    boxes = np.asarray(boxes_xyxy)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ShapeError(f"boxes must have shape (n, 4), got {boxes.shape}")
    if boxes.dtype.kind != "f":
        boxes = boxes.astype(np.float32)
    return boxes


def _threshold(iou_threshold: float, dtype: np.dtype) -> np.floating:
    """Validate the IoU threshold and return it in ``dtype``, rounded toward -inf.

    For ``x`` of ``dtype``, ``x > result`` holds exactly when ``x > iou_threshold`` in
    double precision (torchvision compares float IoUs with a double threshold), so the
    IoU matrix never has to be widened to float64.
    """
    thr = float(iou_threshold)
    if not 0.0 <= thr <= 1.0:
        raise UsageError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    cast = dtype.type(thr)
    if float(cast) > thr:
        cast = np.nextafter(cast, dtype.type(-np.inf))
    return cast


def _check_max_keep(max_keep: int | None, n: int) -> int:
    """Return how many boxes may be kept at most."""
    if max_keep is None:
        return n
    if max_keep < 0:
        raise UsageError(f"max_keep must be >= 0 or None, got {max_keep}")
    return min(int(max_keep), n)


def _iou(
    ax1: np.ndarray,
    ay1: np.ndarray,
    ax2: np.ndarray,
    ay2: np.ndarray,
    bx1: np.ndarray,
    by1: np.ndarray,
    bx2: np.ndarray,
    by2: np.ndarray,
) -> np.ndarray:
    """IoU with torchvision's operation order; broadcasts (pairwise or matrix)."""
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    iw = np.minimum(ax2, bx2)
    iw -= np.maximum(ax1, bx1)
    np.maximum(iw, 0, out=iw)
    ih = np.minimum(ay2, by2)
    ih -= np.maximum(ay1, by1)
    np.maximum(ih, 0, out=ih)
    inter = iw
    inter *= ih
    union = area_a + area_b
    union -= inter
    with np.errstate(divide="ignore", invalid="ignore"):
        inter /= union
    return inter


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of two sets of ``xyxy`` boxes.

    Args:
        a: ``(n, 4)`` boxes.
        b: ``(m, 4)`` boxes of the same dtype.

    Returns:
        ``(n, m)`` IoU matrix in the boxes' dtype; ``nan`` where both boxes are empty.
    """
    return _iou(*(a[:, i : i + 1] for i in range(4)), *(b[:, i] for i in range(4)))


def _no_pairs() -> tuple[np.ndarray, np.ndarray]:
    """An empty pair list."""
    return np.zeros(0, np.intp), np.zeros(0, np.intp)


def _sweep(s: np.ndarray, q: np.ndarray, thr: np.floating) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)`` with ``IoU(s[i], q[j]) > thr``, testing only x-overlapping pairs.

    ``s`` is sorted by ``x1``; each ``q[j]`` can only overlap the ``s`` boxes whose ``x1``
    lies in ``(q.x1 - widest s, q.x2)``, a window found with ``searchsorted``. Pairs
    outside the windows have no intersection, hence an IoU of 0 (or nan), which is never
    greater than ``thr >= 0``. When the windows cover most pairs, the dense IoU matrix
    is cheaper and is used instead.
    """
    ns, nq = len(s), len(q)
    widths = s[:, 2].astype(np.float64) - s[:, 0]
    wmax = float(widths.max())
    if not np.isfinite(wmax) or ns * nq <= _DENSE_PAIRS:
        i, j = np.nonzero(box_iou(s, q) > thr)
        return i, j
    order = np.argsort(s[:, 0], kind="stable")
    sx1 = s[order, 0].astype(np.float64)
    qx1 = q[:, 0].astype(np.float64)
    # The margin covers float64 rounding, so that no overlapping pair is ever missed.
    lo = np.searchsorted(sx1, qx1 - wmax - 1e-7 * (np.abs(qx1) + abs(wmax)), side="right")
    hi = np.searchsorted(sx1, q[:, 2].astype(np.float64), side="left")
    counts = np.maximum(hi - lo, 0)
    total = int(counts.sum())
    if total == 0:
        return _no_pairs()
    if 2 * total > ns * nq:
        i, j = np.nonzero(box_iou(s, q) > thr)
        return i, j
    j = np.repeat(np.arange(nq), counts)
    offsets = np.repeat(lo - np.cumsum(counts) + counts, counts)
    i = order[np.arange(total) + offsets]
    hit = _iou(*(s[:, k][i] for k in range(4)), *(q[:, k][j] for k in range(4))) > thr
    return i[hit], j[hit]


def _pairs_over(a: np.ndarray, b: np.ndarray, thr: np.floating) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``(i, j)`` with ``IoU(a[i], b[j]) > thr`` (IoU is symmetric, bit for bit).

    The smaller set is sorted; the larger one queries it in chunks (bounded memory).
    """
    if len(a) == 0 or len(b) == 0:
        return _no_pairs()
    if len(a) > len(b):
        j, i = _pairs_over(b, a, thr)
        return i, j
    if len(b) <= _KEPT_BLOCK:
        return _sweep(a, b, thr)
    parts = [
        _sweep(a, b[start : start + _KEPT_BLOCK], thr) for start in range(0, len(b), _KEPT_BLOCK)
    ]
    return (
        np.concatenate([i for i, _ in parts]),
        np.concatenate([j + k * _KEPT_BLOCK for k, (_, j) in enumerate(parts)]),
    )


def _alive(kept: np.ndarray, cand: np.ndarray, thr: np.floating) -> np.ndarray:
    """Boolean mask over ``cand``: not suppressed by any ``kept`` box."""
    alive = np.ones(len(cand), dtype=bool)
    alive[_pairs_over(kept, cand, thr)[1]] = False
    return alive


def _greedy_block(block: np.ndarray, thr: np.floating, limit: int) -> np.ndarray:
    """Exact greedy NMS inside one block of score-ordered boxes (at most ``limit`` kept).

    First a few rounds of the fixed-point iteration ``keep[j] = no kept i < j overlaps j``
    from "everything kept": the greedy result is its only fixed point and it is usually
    reached in two or three vectorised rounds. Long suppression chains fall back to the
    sequential pass, a Python loop over the KEPT boxes only.
    """
    m = len(block)
    i_idx, j_idx = _pairs_over(block, block, thr)
    later = i_idx < j_idx  # i (better) would suppress j
    i_idx, j_idx = i_idx[later], j_idx[later]
    keep = np.ones(m, dtype=bool)
    for _ in range(_FIXED_POINT_ROUNDS):
        suppressed = np.zeros(m, dtype=bool)
        suppressed[j_idx[keep[i_idx]]] = True
        if not (suppressed == keep).any():  # keep == ~suppressed: the fixed point
            return np.flatnonzero(keep)[:limit]
        keep = ~suppressed
    over = np.zeros((m, m), dtype=bool)
    over[i_idx, j_idx] = True
    alive = np.ones(m, dtype=bool)
    local: list[int] = []
    i = 0
    while len(local) < limit and i < m:
        rest = alive[i:]
        step = int(rest.argmax())
        if not rest[step]:
            break
        i += step
        local.append(i)
        i += 1
        alive[i:] &= ~over[i - 1, i:]
    return np.asarray(local, dtype=np.intp)


def nms_sorted(
    boxes_xyxy: np.ndarray, iou_threshold: float, *, max_keep: int | None = None
) -> np.ndarray:
    """Greedy NMS of boxes that are already ordered by descending score.

    Args:
        boxes_xyxy: ``(n, 4)`` boxes, best first.
        iou_threshold: Drop a box whose IoU with a kept box is greater than this.
        max_keep: Stop once this many boxes are kept (``None``: no limit).

    Returns:
        ``int64`` positions into ``boxes_xyxy`` of the kept boxes, ascending.

    Raises:
        ShapeError: If ``boxes_xyxy`` is not ``(n, 4)``.
        UsageError: If the threshold or ``max_keep`` is invalid.
    """
    boxes = _as_boxes(boxes_xyxy)
    thr = _threshold(iou_threshold, boxes.dtype)
    n = boxes.shape[0]
    limit = _check_max_keep(max_keep, n)
    keep: list[np.ndarray] = []
    n_kept = 0
    kept_boxes = boxes[:0]
    start = 0  # next position not yet looked at
    chunk = _BLOCK  # how many positions the next chunk takes
    pending = np.zeros(0, np.intp)  # positions that survived their chunk's filter
    filtered_by = 0  # the kept boxes that `pending` was already filtered against
    while n_kept < limit and (pending.size or start < n):
        if not pending.size:
            # Take the next chunk and drop what the boxes kept so far suppress.
            cand = np.arange(start, min(n, start + chunk))
            start += cand.size
            if n_kept:
                cand = cand[_alive(kept_boxes, boxes[cand], thr)]
            # Mostly suppressed: look further ahead next time (cheap, linear); else
            # back to blocks whose IoU matrix stays small.
            chunk = min(4 * chunk, _MAX_CHUNK) if 4 * cand.size < chunk else _BLOCK
            pending, filtered_by = cand, n_kept
            continue
        cand, pending = pending[:_BLOCK], pending[_BLOCK:]
        if n_kept > filtered_by:  # boxes kept since this chunk was filtered
            cand = cand[_alive(kept_boxes[filtered_by:], boxes[cand], thr)]
            if not cand.size:
                continue
        local = _greedy_block(boxes[cand], thr, limit - n_kept)
        chosen = cand[local]
        keep.append(chosen)
        n_kept += local.size
        kept_boxes = np.concatenate([kept_boxes, boxes[chosen]])
    if not keep:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(keep).astype(np.int64, copy=False)


def nms(
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    *,
    max_keep: int | None = None,
) -> np.ndarray:
    """Exact greedy NMS, equal to ``torchvision.ops.nms``.

    Args:
        boxes_xyxy: ``(n, 4)`` boxes ``x1, y1, x2, y2``.
        scores: ``(n,)`` scores.
        iou_threshold: Drop a box whose IoU with a kept box is greater than this.
        max_keep: Stop once this many boxes are kept (``None``: no limit). The result is
            the first ``max_keep`` indices of the unlimited result.

    Returns:
        ``int64`` indices of the kept boxes, by descending score (ties: original order).

    Raises:
        ShapeError: If the shapes disagree.
        UsageError: If the threshold or ``max_keep`` is invalid.
    """
    boxes = _as_boxes(boxes_xyxy)
    scores = np.asarray(scores)
    if scores.shape != (boxes.shape[0],):
        raise ShapeError(
            f"scores must have shape ({boxes.shape[0]},) to match boxes, got {scores.shape}"
        )
    order = np.argsort(-scores, kind="stable")
    return order[nms_sorted(boxes[order], iou_threshold, max_keep=max_keep)]


def batched_nms(
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    iou_threshold: float,
    *,
    max_keep: int | None = None,
    max_wh: float = 7680,
) -> np.ndarray:
    """Class-aware NMS: boxes of different classes never suppress each other.

    Uses the coordinate-offset trick of Ultralytics (``boxes + class_id * max_wh``,
    computed in the boxes' dtype, so results match Ultralytics bit for bit). Classes
    stay apart as long as every coordinate lies in ``[0, max_wh)``.

    Args:
        boxes_xyxy: ``(n, 4)`` boxes.
        scores: ``(n,)`` scores.
        class_ids: ``(n,)`` integer class ids.
        iou_threshold: Drop a box whose IoU with a kept box of its class is greater.
        max_keep: Stop once this many boxes are kept (``None``: no limit).
        max_wh: Offset between classes; larger than any box coordinate.

    Returns:
        ``int64`` indices of the kept boxes, by descending score.

    Raises:
        ShapeError: If the shapes disagree.
        UsageError: If an option is invalid.
    """
    boxes = _as_boxes(boxes_xyxy)
    class_ids = np.asarray(class_ids)
    if class_ids.shape != (boxes.shape[0],):
        raise ShapeError(
            f"class_ids must have shape ({boxes.shape[0]},) to match boxes, got {class_ids.shape}"
        )
    if max_wh <= 0:
        raise UsageError(f"max_wh must be positive, got {max_wh}")
    offsets = class_ids.astype(boxes.dtype) * boxes.dtype.type(max_wh)
    return nms(boxes + offsets[:, None], scores, iou_threshold, max_keep=max_keep)
