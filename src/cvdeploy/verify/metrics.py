"""Accuracy metrics: COCO mAP via pycocotools, and top-k accuracy for classifiers.

Detection metrics are computed by pycocotools' ``COCOeval`` (the reference implementation)
from a ground truth dict held in memory, e.g. :meth:`cvdeploy.data.DetectionDataset.coco_gt`.
pycocotools prints progress to stdout; it is silenced while it runs (by redirecting
``sys.stdout``, which is process-wide: do not print from other threads meanwhile).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cvdeploy.errors import BackendUnavailable, InputError
from cvdeploy.verify.bootstrap import DEFAULT_RESAMPLES, bootstrap_accuracy, bootstrap_map

__all__ = [
    "ClassificationMetrics",
    "DetectionMetrics",
    "evaluate_classification",
    "evaluate_detections",
]

Prediction = tuple[int, np.ndarray, np.ndarray, np.ndarray]
"""``(image_id, boxes_xyxy (n, 4) pixels, scores (n,), class_ids (n,) model indices)``."""


@dataclass(frozen=True)
class DetectionMetrics:
    """COCO box metrics.

    Attributes:
        map50_95: AP averaged over IoU 0.50:0.95 and over classes (COCO's headline number).
        map50: AP at IoU 0.50, averaged over classes.
        per_class: AP50-95 per class name, for classes with ground truth only.
        n_images: Images in the ground truth.
        n_instances: Non-crowd ground truth boxes.
    """

    map50_95: float
    map50: float
    per_class: dict[str, float] = field(default_factory=dict)
    n_images: int = 0
    n_instances: int = 0
    ci: dict[str, Any] | None = None
    """Bootstrap confidence intervals of ``map50_95`` and ``map50`` (see
    :func:`cvdeploy.verify.bootstrap.bootstrap_map`); ``None`` when not computed."""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (floats, ints, a dict of floats)."""
        return asdict(self)


@dataclass(frozen=True)
class ClassificationMetrics:
    """Classification accuracy.

    Attributes:
        top1: Fraction of samples whose highest-scoring class is the label.
        top5: Fraction whose label is among the 5 highest-scoring classes (among all
            classes when there are fewer than 5, i.e. 1.0).
        per_class: Top-1 accuracy (recall) per class name, for classes with samples only.
        n: Number of samples.
    """

    top1: float
    top5: float
    per_class: dict[str, float] = field(default_factory=dict)
    n: int = 0
    ci: dict[str, Any] | None = None
    """Bootstrap confidence intervals of ``top1`` and ``top5``; ``None`` when not computed."""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


def evaluate_detections(
    gt: dict[str, Any],
    predictions: Iterable[Prediction],
    *,
    category_ids: Sequence[int],
    names: Sequence[str],
    max_dets: int = 100,
    bootstrap: int = DEFAULT_RESAMPLES,
) -> DetectionMetrics:
    """Compute COCO mAP of box predictions against a COCO ground truth dict.

    Args:
        gt: COCO ground truth (``images``, ``annotations``, ``categories``); not modified.
        predictions: Per image: ``(image_id, boxes_xyxy, scores, class_ids)``, boxes in the
            original image's pixels, ``class_ids`` model class indices. Images without an
            entry have no detections.
        category_ids: COCO category id of each model class index.
        names: Name of each model class index (same length as ``category_ids``).
        max_dets: Detections kept per image and class, highest scores first (COCO: 100);
            AP is read at this limit.
        bootstrap: Resamples of the images for the 95% confidence intervals (``ci``);
            0 computes none.

    Returns:
        The metrics.

    Raises:
        InputError: The ground truth or a prediction is malformed, a prediction names an
            image not in the ground truth, or a class index has no category.
        BackendUnavailable: pycocotools is not installed.
    """
    coco_classes = _import_pycocotools()
    if int(max_dets) < 1:
        raise InputError(f"max_dets is {max_dets}", hint="keep at least 1 detection per image")
    gt = _checked_gt(gt)
    if len(category_ids) != len(names):
        raise InputError(
            f"{len(category_ids)} category ids for {len(names)} class names",
            hint="give one category id per model class",
        )
    gt_categories = {int(cat["id"]) for cat in gt["categories"]}
    unknown = [cid for cid in category_ids if int(cid) not in gt_categories]
    if unknown:
        raise InputError(
            f"category ids {unknown[:10]} are not among the ground truth's categories",
            hint="align the dataset to the model first (cvdeploy.data.align_to_model)",
        )
    name_of = {int(cid): str(name) for cid, name in zip(category_ids, names, strict=True)}
    for cat in gt["categories"]:
        name_of.setdefault(int(cat["id"]), str(cat.get("name", cat["id"])))
    image_ids = {int(img["id"]) for img in gt["images"]}
    detections = _detections(predictions, category_ids=category_ids, image_ids=image_ids)
    n_instances = sum(1 for ann in gt["annotations"] if not ann.get("iscrowd", 0))
    with_gt = sorted(
        {int(ann["category_id"]) for ann in gt["annotations"] if not ann.get("iscrowd", 0)}
    )
    if not detections or n_instances == 0:
        return DetectionMetrics(
            map50_95=0.0,
            map50=0.0,
            per_class={name_of[cid]: 0.0 for cid in with_gt},
            n_images=len(image_ids),
            n_instances=n_instances,
        )
    coco_cls, cocoeval_cls = coco_classes
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = coco_cls()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections)
        evaluator = cocoeval_cls(coco_gt, coco_dt, iouType="bbox")
        # COCOeval sorts maxDets and evaluates with the largest; precision is then
        # accumulated for each entry, so read the one for max_dets.
        evaluator.params.maxDets = sorted({1, 10, int(max_dets)})
        evaluator.evaluate()
        evaluator.accumulate()
    # precision: [T iou thresholds, R recall points, K categories, A area ranges, M maxDets];
    # area range 0 is "all".
    m_index = list(evaluator.params.maxDets).index(int(max_dets))
    precision = np.asarray(evaluator.eval["precision"])[:, :, :, 0, m_index]
    per_class: dict[str, float] = {}
    for k, cid in enumerate(evaluator.params.catIds):
        values = precision[:, :, k]
        values = values[values > -1]
        if values.size:
            per_class[name_of[int(cid)]] = float(values.mean())
    ci = bootstrap_map(evaluator, max_det=int(max_dets), resamples=bootstrap) if bootstrap else None
    return DetectionMetrics(
        map50_95=_mean_valid(precision),
        map50=_mean_valid(precision[0]),
        per_class=per_class,
        n_images=len(image_ids),
        n_instances=n_instances,
        ci=ci,
    )


def evaluate_classification(
    labels: np.ndarray,
    probs: np.ndarray,
    names: Sequence[str],
    *,
    bootstrap: int = DEFAULT_RESAMPLES,
) -> ClassificationMetrics:
    """Compute top-1 / top-5 accuracy.

    Args:
        labels: True class index per sample, shape ``(n,)``.
        probs: Class scores (probabilities or logits) per sample, shape ``(n, len(names))``.
        names: Class names in index order.
        bootstrap: Resamples for the 95% confidence intervals (``ci``); 0 computes none.

    Returns:
        The metrics.

    Raises:
        InputError: Shapes disagree, there are no samples, or a label is out of range.
    """
    labels = np.asarray(labels)
    probs = np.asarray(probs)
    n_classes = len(names)
    if probs.ndim != 2 or probs.shape[1] != n_classes:
        raise InputError(
            f"scores have shape {probs.shape}; expected (n, {n_classes}) for {n_classes} "
            "class names",
            hint="pass one row of class scores per sample, one column per class",
        )
    if labels.ndim != 1 or labels.shape[0] != probs.shape[0]:
        raise InputError(
            f"labels have shape {labels.shape} for {probs.shape[0]} rows of scores",
            hint="pass one label per sample",
        )
    if labels.size == 0:
        raise InputError("no samples to evaluate", hint="check the dataset is not empty")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= n_classes:
        raise InputError(
            f"labels must be integers in 0..{n_classes - 1}",
            hint="labels are class indices into the names",
        )
    top1_hit = np.argmax(probs, axis=1) == labels
    k = min(5, n_classes)
    topk = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    top5_hit = (topk == labels[:, None]).any(axis=1)
    per_class = {
        str(names[c]): float(top1_hit[labels == c].mean())
        for c in range(n_classes)
        if np.any(labels == c)
    }
    return ClassificationMetrics(
        top1=float(top1_hit.mean()),
        top5=float(top5_hit.mean()),
        per_class=per_class,
        n=int(labels.size),
        ci=bootstrap_accuracy(top1_hit, top5_hit, resamples=bootstrap) if bootstrap else None,
    )


def _import_pycocotools() -> tuple[Any, Any]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:
        raise BackendUnavailable(
            "COCO evaluation needs pycocotools, which is not installed",
            hint="pip install pycocotools",
        ) from exc
    return COCO, COCOeval


def _checked_gt(gt: dict[str, Any]) -> dict[str, Any]:
    """Validate the top level and copy what COCOeval mutates (it adds 'ignore' keys)."""
    if not isinstance(gt, dict) or not all(
        isinstance(gt.get(key), list) for key in ("images", "annotations", "categories")
    ):
        raise InputError(
            "ground truth is not a COCO dict with images, annotations and categories lists",
            hint="pass DetectionDataset.coco_gt() or a loaded COCO annotation json",
        )
    copied = dict(gt)
    copied["annotations"] = [dict(ann) for ann in gt["annotations"]]
    for ann in copied["annotations"]:
        if "area" not in ann and isinstance(ann.get("bbox"), list) and len(ann["bbox"]) == 4:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])  # COCOeval needs it
    return copied


def _detections(
    predictions: Iterable[Prediction], *, category_ids: Sequence[int], image_ids: set[int]
) -> list[dict[str, Any]]:
    """Turn per-image arrays into pycocotools result dicts (xywh boxes, category ids)."""
    cids = np.asarray(category_ids, dtype=np.int64)
    out: list[dict[str, Any]] = []
    for image_id, boxes, scores, classes in predictions:
        image_id = int(image_id)
        if image_id not in image_ids:
            raise InputError(
                f"predictions for image id {image_id}, which the ground truth does not have",
                hint="use the image ids of the dataset the ground truth came from",
            )
        boxes = np.asarray(boxes, dtype=np.float64)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise InputError(
                f"image {image_id}: boxes have shape {boxes.shape}; expected (n, 4) x1 y1 x2 y2",
                hint="pass boxes in corner format, original image pixels",
            )
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        classes = np.asarray(classes).reshape(-1)
        if not len(boxes) == len(scores) == len(classes):
            raise InputError(
                f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores and "
                f"{len(classes)} class ids",
                hint="pass boxes (n, 4), scores (n,) and class ids (n,) of equal length n",
            )
        if len(boxes) == 0:
            continue
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise InputError(
                f"image {image_id}: boxes or scores are not finite",
                hint="check the model's outputs and the decoder",
            )
        if (
            not np.all(np.equal(np.mod(classes, 1), 0))
            or classes.min() < 0
            or (classes.max() >= len(cids))
        ):
            raise InputError(
                f"image {image_id}: class ids must be integers in 0..{len(cids) - 1}",
                hint="class ids are model class indices, one per category id",
            )
        mapped = cids[classes.astype(np.int64)]
        widths = np.maximum(boxes[:, 2] - boxes[:, 0], 0.0)
        heights = np.maximum(boxes[:, 3] - boxes[:, 1], 0.0)
        for row in range(len(boxes)):
            out.append(
                {
                    "image_id": image_id,
                    "category_id": int(mapped[row]),
                    "bbox": [
                        float(boxes[row, 0]),
                        float(boxes[row, 1]),
                        float(widths[row]),
                        float(heights[row]),
                    ],
                    "score": float(scores[row]),
                }
            )
    return out


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else 0.0
