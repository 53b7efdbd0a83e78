"""Decoders: raw model outputs -> per-image :class:`Detections` or :class:`Classification`.

Detection decoders follow Ultralytics' ``non_max_suppression``:

1. candidates are ``(box, class)`` pairs with ``score > conf``: every class above
   ``conf`` with ``multi_label=True``, only the best class of a box otherwise;
2. they are ordered by descending score (equal scores: anchor order, then class order)
   and at most ``max_nms`` of them enter NMS;
3. class-aware NMS (offset trick, ``max_wh=7680``) or class-agnostic NMS;
4. at most ``max_det`` detections are kept.

Boxes are returned in model-INPUT pixels, ``x1, y1, x2, y2``; map them back to the
original image with :func:`cvdeploy.pipeline.preprocess.scale_boxes`. Which decoder a spec's
``decoder.kind`` names, and what its output layout means, is in
:mod:`cvdeploy.pipeline.heads`.

Everything is vectorised. Only the candidates that NMS actually needs are sorted: the
best ``k`` are selected with a linear-time partition, resolved, and ``k`` grows only when
NMS runs out of candidates before keeping ``max_det`` boxes. Because greedy NMS on a
score-ordered prefix yields a prefix of the full result, this is exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from cvdeploy.errors import ShapeError, SpecError, UsageError
from cvdeploy.pipeline.nms import nms_sorted
from cvdeploy.pipeline.results import Classification, Detections

__all__ = [
    "as_output",
    "decode_logits",
    "decode_yolov5",
    "decode_yolov8",
    "decode_yolox",
    "yolox_grid",
]

MAX_WH = 7680  # class offset of the class-aware NMS (Ultralytics)
_FIRST_K = 1024  # candidates in the first NMS round (grows x8 when not enough are kept)
_SAMPLE = 16384  # scores sampled to guess the selection threshold


def _check_options(conf: float, iou: float, max_det: int, max_nms: int) -> None:
    """Validate the thresholds and limits shared by the detection decoders."""
    if not 0.0 <= conf <= 1.0:
        raise UsageError(f"conf must be in [0, 1], got {conf}")
    if not 0.0 <= iou <= 1.0:
        raise UsageError(f"iou must be in [0, 1], got {iou}")
    if max_det < 1:
        raise UsageError(f"max_det must be >= 1, got {max_det}")
    if max_nms < 1:
        raise UsageError(f"max_nms must be >= 1, got {max_nms}")


def as_output(output: np.ndarray, ndim: int, layout: str) -> np.ndarray:
    """Return ``output`` as a float32 array of ``ndim`` dimensions.

    Args:
        output: A raw model output.
        ndim: The dimensions the layout has.
        layout: The layout in words, for the error message (e.g. ``(B, 4 + nc, N)``).

    Raises:
        ShapeError: If ``output`` does not have ``ndim`` dimensions.
    """
    out = np.asarray(output)
    if out.ndim != ndim:
        raise ShapeError(
            f"expected a model output of shape {layout}, got {out.shape}",
            hint="check that the spec's decoder matches the model",
        )
    if out.dtype != np.float32:
        out = out.astype(np.float32)
    return out


def _xywh_to_xyxy(cx: np.ndarray, cy: np.ndarray, w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Centre format to corners, in float32, with Ultralytics' operation order."""
    hw, hh = w / 2, h / 2
    return np.stack([cx - hw, cy - hh, cx + hw, cy + hh], axis=1)


def _select(
    scores: np.ndarray, conf: float, k: int, key_of: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Flat indices of the ``k`` best candidates (``score > conf``), best first.

    Equivalent to a stable sort of all candidates by descending score and
    ``key_of(flat index)``, truncated to ``k`` (fewer only when there are fewer
    candidates), but in linear time and without materialising indices for candidates
    that are not selected:

    1. a strided sample of the scores gives a threshold ``t >= conf`` that a little more
       than ``k`` scores are expected to exceed; if at least ``k`` do, the ``k`` best are
       among them, otherwise ``t = conf`` (exact in both cases);
    2. the ``k``-th best score among those above ``t`` is found with a partition;
    3. only the selected entries are sorted.

    Args:
        scores: Flat, contiguous score array.
        conf: Candidates have a score strictly greater than this.
        k: How many candidates to return at most.
        key_of: Tie-break key of flat indices (smaller first).
    """
    n = scores.size
    floor = np.float32(conf)
    idx: np.ndarray | None = None
    if n > 4 * _SAMPLE:
        sample = scores[:: n // _SAMPLE].copy()
        rank = min(sample.size - 1, 2 * sample.size * k // n + 16)  # from the top
        sample.partition(sample.size - 1 - rank)
        guess = sample[sample.size - 1 - rank]
        if guess > floor:
            above_guess = np.flatnonzero(scores > guess)
            if above_guess.size >= k:
                idx = above_guess
    if idx is None:
        idx = np.flatnonzero(scores > floor)
    if idx.size > k:
        sub = scores[idx]
        values = sub.copy()
        values.partition(idx.size - k)
        kth = values[idx.size - k]  # the k-th best score
        above = idx[sub > kth]
        tied = idx[sub == kth]  # ascending flat index
        need = k - above.size
        if tied.size > need:
            tied = tied[np.argsort(key_of(tied), kind="stable")[:need]]
        idx = np.concatenate([above, tied])
    return idx[np.lexsort((key_of(idx), -scores[idx]))]


def _decode_scores(
    anchor_boxes: np.ndarray,
    cls_scores: np.ndarray,
    *,
    class_major: bool,
    conf: float,
    iou: float,
    max_det: int,
    multi_label: bool,
    agnostic: bool,
    max_nms: int,
    anchor_ids: np.ndarray | None = None,
) -> Detections:
    """Select ``(box, class)`` candidates above ``conf``, order them and run NMS.

    Args:
        anchor_boxes: ``(N, 4)`` float32 ``xyxy`` boxes of all anchors.
        cls_scores: Final class scores, ``(nc, A)`` when ``class_major`` else ``(A, nc)``,
            for ``A`` anchors (all of them, or those in ``anchor_ids``); contiguous.
        class_major: Layout of ``cls_scores``.
        conf: Score threshold (strictly greater).
        iou: NMS IoU threshold.
        max_det: Most detections returned.
        multi_label: Every class above ``conf`` is a candidate (else the best class).
        agnostic: Class-agnostic NMS.
        max_nms: Most candidates entering NMS.
        anchor_ids: Anchor index of each column/row of ``cls_scores`` (default: all).
    """
    class_axis = 0 if class_major else 1
    nc = cls_scores.shape[class_axis]
    n_local = cls_scores.shape[1 - class_axis]
    cls_scores = np.ascontiguousarray(cls_scores)
    if multi_label and nc > 1:
        scores = cls_scores

        def split(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            if class_major:
                cls, loc = np.divmod(flat, n_local)
                return loc, cls
            return np.divmod(flat, nc)

    else:
        scores = cls_scores.max(axis=class_axis)

        def split(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            sub = cls_scores[:, flat] if class_major else cls_scores[flat]
            return flat, sub.argmax(axis=class_axis)

    def key_of(flat: np.ndarray) -> np.ndarray:
        # (anchor, class) order; the best-class case has one candidate per anchor.
        if scores.ndim == 1 or not class_major:
            return flat
        cls, loc = np.divmod(flat, n_local)
        return loc * nc + cls

    flat_scores = scores.reshape(-1)
    k = min(max_nms, max(_FIRST_K, 4 * max_det))
    while True:
        flat = _select(flat_scores, conf, k, key_of)
        if flat.size == 0:
            return Detections.empty()
        loc, cls = split(flat)
        anchors = loc if anchor_ids is None else anchor_ids[loc]
        boxes = anchor_boxes[anchors]
        nms_boxes = boxes if agnostic else boxes + cls[:, None].astype(np.float32) * MAX_WH
        keep = nms_sorted(nms_boxes, iou, max_keep=max_det)
        if keep.size >= max_det or flat.size < k or k >= max_nms:
            break  # enough kept, every candidate seen, or max_nms reached
        k = min(max_nms, k * 8)
    return Detections(
        boxes=boxes[keep],
        scores=flat_scores[flat[keep]],
        class_ids=cls[keep].astype(np.int64),
    )


def decode_yolov8(
    output: np.ndarray,
    *,
    conf: float,
    iou: float,
    max_det: int = 300,
    multi_label: bool = False,
    agnostic: bool = False,
    max_nms: int = 30000,
    nc: int | None = None,
) -> list[Detections]:
    """Decode a YOLOv8 / YOLO11 detection head (anchor-free, no objectness).

    Args:
        output: ``(B, 4 + nc, N)``: rows ``cx, cy, w, h`` in input pixels, then ``nc``
            class scores (already sigmoid). Extra rows after the classes (segmentation
            mask coefficients) are ignored when ``nc`` is given.
        conf: Keep ``(box, class)`` pairs with score greater than this.
        iou: NMS IoU threshold.
        max_det: Most detections per image.
        multi_label: Every class above ``conf`` is a candidate (else the best class).
        agnostic: Class-agnostic NMS.
        max_nms: Most candidates entering NMS.
        nc: Number of classes (default: every row after the box).

    Returns:
        One :class:`Detections` per image, boxes in input pixels.

    Raises:
        ShapeError: If ``output`` does not have the layout above.
        UsageError: If an option is invalid.
    """
    _check_options(conf, iou, max_det, max_nms)
    out = as_output(output, 3, "(B, 4 + nc, N)")
    n_cls = out.shape[1] - 4 if nc is None else nc
    if n_cls < 1 or 4 + n_cls > out.shape[1]:
        raise ShapeError(
            f"a YOLOv8 output needs 4 + nc rows (nc >= 1), got shape {out.shape} with nc={nc}",
            hint="YOLOv8/YOLO11 outputs are (B, 4 + nc, N); a (B, N, 5 + nc) output is YOLOv5",
        )
    results = []
    for pred in out:
        boxes = _xywh_to_xyxy(pred[0], pred[1], pred[2], pred[3])
        results.append(
            _decode_scores(
                boxes,
                pred[4 : 4 + n_cls],
                class_major=True,
                conf=conf,
                iou=iou,
                max_det=max_det,
                multi_label=multi_label,
                agnostic=agnostic,
                max_nms=max_nms,
            )
        )
    return results


def _decode_objectness(
    boxes: np.ndarray,
    pred: np.ndarray,
    n_cls: int,
    *,
    conf: float,
    iou: float,
    max_det: int,
    multi_label: bool,
    agnostic: bool,
    max_nms: int,
) -> Detections:
    """YOLOv5-style scoring: keep ``obj > conf``, then score ``obj * cls > conf``."""
    obj = pred[:, 4]
    is_cand = obj > np.float32(conf)
    cand = np.flatnonzero(is_cand)
    if 4 * cand.size < obj.size:  # few candidates: gather their rows
        cls_scores = pred[cand, 5 : 5 + n_cls] * obj[cand, None]
        anchor_ids: np.ndarray | None = cand
    else:  # most anchors: one pass, non-candidates scored 0 (never > conf)
        cls_scores = pred[:, 5 : 5 + n_cls] * np.where(is_cand, obj, 0)[:, None]
        anchor_ids = None
    return _decode_scores(
        boxes,
        cls_scores,
        class_major=False,
        conf=conf,
        iou=iou,
        max_det=max_det,
        multi_label=multi_label,
        agnostic=agnostic,
        max_nms=max_nms,
        anchor_ids=anchor_ids,
    )


def decode_yolov5(
    output: np.ndarray,
    *,
    conf: float,
    iou: float,
    max_det: int = 300,
    multi_label: bool = False,
    agnostic: bool = False,
    max_nms: int = 30000,
    nc: int | None = None,
) -> list[Detections]:
    """Decode a YOLOv5-style head with objectness (also YOLOv7 and similar exports).

    Args:
        output: ``(B, N, 5 + nc)``: ``cx, cy, w, h`` in input pixels, objectness, ``nc``
            class probabilities (all already sigmoid). The score is ``obj * cls``.
        conf: Keep boxes with ``obj > conf``, then pairs with ``obj * cls > conf``.
        iou: NMS IoU threshold.
        max_det: Most detections per image.
        multi_label: Every class above ``conf`` is a candidate (else the best class).
        agnostic: Class-agnostic NMS.
        max_nms: Most candidates entering NMS.
        nc: Number of classes (default: every column after objectness).

    Returns:
        One :class:`Detections` per image, boxes in input pixels.

    Raises:
        ShapeError: If ``output`` does not have the layout above.
        UsageError: If an option is invalid.
    """
    _check_options(conf, iou, max_det, max_nms)
    out = as_output(output, 3, "(B, N, 5 + nc)")
    n_cls = out.shape[2] - 5 if nc is None else nc
    if n_cls < 1 or 5 + n_cls > out.shape[2]:
        raise ShapeError(
            f"a YOLOv5 output needs 5 + nc columns (nc >= 1), got shape {out.shape} with nc={nc}",
            hint="YOLOv5 outputs are (B, N, 5 + nc); a (B, 4 + nc, N) output is YOLOv8",
        )
    results = []
    for pred in out:
        boxes = _xywh_to_xyxy(pred[:, 0], pred[:, 1], pred[:, 2], pred[:, 3])
        results.append(
            _decode_objectness(
                boxes,
                pred,
                n_cls,
                conf=conf,
                iou=iou,
                max_det=max_det,
                multi_label=multi_label,
                agnostic=agnostic,
                max_nms=max_nms,
            )
        )
    return results


def yolox_grid(
    input_hw: tuple[int, int], strides: Sequence[int] = (8, 16, 32)
) -> tuple[np.ndarray, np.ndarray]:
    """Anchor points of a YOLOX head.

    For each stride ``s`` in order, a grid of ``ceil(h/s) x ceil(w/s)`` cells in
    row-major order (y outer, x inner), as YOLOX's ``decode_outputs`` builds it.

    Args:
        input_hw: Model input ``(height, width)``.
        strides: Head strides, in output order.

    Returns:
        ``grid`` ``(N, 2)`` float32 cell ``x, y`` and ``stride`` ``(N,)`` float32.

    Raises:
        SpecError: If the size or strides are not positive integers.
    """
    if len(input_hw) != 2 or any(int(v) != v or v < 1 for v in input_hw):
        raise SpecError(f"input_hw must be two positive integers, got {input_hw}")
    if not strides or any(int(s) != s or s < 1 for s in strides):
        raise SpecError(f"strides must be positive integers, got {list(strides)}")
    h, w = int(input_hw[0]), int(input_hw[1])
    grids, stride_rows = [], []
    for s in strides:
        hs, ws = math.ceil(h / s), math.ceil(w / s)
        ys, xs = np.divmod(np.arange(hs * ws), ws)
        grids.append(np.stack([xs, ys], axis=1))
        stride_rows.append(np.full(hs * ws, s))
    return (
        np.concatenate(grids).astype(np.float32),
        np.concatenate(stride_rows).astype(np.float32),
    )


def decode_yolox(
    output: np.ndarray,
    *,
    input_hw: tuple[int, int],
    conf: float,
    iou: float,
    strides: Sequence[int] = (8, 16, 32),
    max_det: int = 300,
    multi_label: bool = False,
    agnostic: bool = False,
    max_nms: int = 30000,
) -> list[Detections]:
    """Decode a raw YOLOX head (exported with ``decode_in_inference=False``).

    Per anchor: ``x, y = (raw_xy + grid_xy) * stride``, ``w, h = exp(raw_wh) * stride``;
    objectness and class scores are already sigmoid; the score is ``obj * cls`` with
    YOLOv5-style filtering (``obj > conf``, then ``obj * cls > conf``).

    Args:
        output: ``(B, N, 5 + nc)`` raw head output.
        input_hw: Model input ``(height, width)`` the grid is built for.
        conf: Score threshold (strictly greater).
        iou: NMS IoU threshold.
        strides: Head strides, in output order.
        max_det: Most detections per image.
        multi_label: Every class above ``conf`` is a candidate (else the best class).
        agnostic: Class-agnostic NMS.
        max_nms: Most candidates entering NMS.

    Returns:
        One :class:`Detections` per image, boxes in input pixels.

    Raises:
        ShapeError: If ``output`` is not ``(B, N, 5 + nc)``.
        SpecError: If ``N`` does not match the anchors of ``input_hw`` and ``strides``.
        UsageError: If an option is invalid.
    """
    _check_options(conf, iou, max_det, max_nms)
    out = as_output(output, 3, "(B, N, 5 + nc)")
    if out.shape[2] < 6:
        raise ShapeError(f"a YOLOX output needs 5 + nc columns (nc >= 1), got {out.shape}")
    grid, stride = yolox_grid(input_hw, strides)
    if out.shape[1] != grid.shape[0]:
        raise SpecError(
            f"YOLOX output has {out.shape[1]} anchors but input {tuple(input_hw)} with "
            f"strides {tuple(strides)} gives {grid.shape[0]}",
            hint="check the spec's input size (imgsz) and strides against the exported model",
        )
    n_cls = out.shape[2] - 5
    results = []
    for pred in out:
        xy = (pred[:, 0:2] + grid) * stride[:, None]
        wh = np.exp(pred[:, 2:4]) * stride[:, None]
        boxes = _xywh_to_xyxy(xy[:, 0], xy[:, 1], wh[:, 0], wh[:, 1])
        results.append(
            _decode_objectness(
                boxes,
                pred,
                n_cls,
                conf=conf,
                iou=iou,
                max_det=max_det,
                multi_label=multi_label,
                agnostic=agnostic,
                max_nms=max_nms,
            )
        )
    return results


def decode_logits(output: np.ndarray, *, softmax: bool = True) -> list[Classification]:
    """Decode a classifier output.

    Args:
        output: ``(B, nc)`` (trailing singleton dimensions, e.g. ``(B, nc, 1, 1)``, are
            dropped).
        softmax: Apply a softmax (the model emits logits); ``False`` when the model
            already emits probabilities.

    Returns:
        One :class:`Classification` per image.

    Raises:
        ShapeError: If ``output`` is not ``(B, nc)``.
    """
    out = np.asarray(output)
    while out.ndim > 2 and out.shape[-1] == 1:
        out = out[..., 0]
    if out.ndim != 2 or out.shape[1] < 1:
        raise ShapeError(f"expected a classifier output of shape (B, nc), got {out.shape}")
    probs = out.astype(np.float32)
    if softmax:
        probs = probs - probs.max(axis=1, keepdims=True)
        np.exp(probs, out=probs)
        probs /= probs.sum(axis=1, keepdims=True)
    return [Classification(probs=row) for row in probs]
