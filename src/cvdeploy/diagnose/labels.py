"""A labelled set as doctor uses it: per-image ground truth, matching, mAP on subsets."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvdeploy.bundle import Bundle
from cvdeploy.data import DetectionDataset, align_to_model, load_detection_dataset
from cvdeploy.errors import DatasetError
from cvdeploy.pipeline import Classification, Detections
from cvdeploy.pipeline.nms import box_iou


@dataclass(slots=True)
class Labelled:
    """Images with ground truth in the model's class indices.

    Attributes:
        task: ``detect`` or ``classify``.
        name: The dataset's label (``<stem>:<split>``).
        paths: Image files, in dataset order.
        image_ids: COCO image ids (detection) or positions (classification).
        boxes: Per image, ground-truth boxes ``(n, 4)`` xyxy in pixels (crowd excluded).
        classes: Per image, their class indices.
        labels: Per image, the class index (classification).
        dataset: The detection dataset (for COCO metrics).
    """

    task: str
    name: str
    paths: list[Path]
    image_ids: list[int]
    boxes: list[np.ndarray] = field(default_factory=list)
    classes: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    dataset: DetectionDataset | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def coco_gt(self, keep: Sequence[int] | None = None) -> dict[str, Any]:
        """The COCO ground truth, restricted to the images at positions ``keep``."""
        assert self.dataset is not None
        gt = self.dataset.coco_gt()
        if keep is None:
            return gt
        ids = {self.image_ids[i] for i in keep}
        gt["images"] = [im for im in gt["images"] if im["id"] in ids]
        gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in ids]
        return gt


def load_labelled(bundle: Bundle, data: Path | str, *, split: str = "val") -> Labelled:
    """Read a labelled set (as ``cvdeploy eval --data``) in the bundle's class order.

    Raises:
        DatasetError: The data cannot be read or its classes do not fit the model.
    """
    spec = bundle.spec
    if spec.task == "classify":
        from cvdeploy.data import load_classification_dataset

        cds = load_classification_dataset(data, split=split)
        index = {n: i for i, n in enumerate(spec.names)}
        missing = [n for n in cds.names if n not in index]
        if missing:
            raise DatasetError(
                f"dataset classes {missing[:5]} are not among the model's {len(spec.names)} names",
                hint="the folder names must be the model's class names",
            )
        items = cds.items
        return Labelled(
            task="classify",
            name=f"{cds.name}:{split}",
            paths=[it.path for it in items],
            image_ids=list(range(len(items))),
            labels=[index[cds.names[it.label]] for it in items],
        )
    ds = align_to_model(load_detection_dataset(data, split=split), list(spec.names))
    cat_to_cls = {c: i for i, c in enumerate(ds.category_ids)}
    by_image: dict[int, list[tuple[tuple[float, float, float, float], int]]] = {}
    for a in ds.annotations:
        if a.iscrowd or a.category_id not in cat_to_cls:
            continue
        by_image.setdefault(a.image_id, []).append((a.bbox, cat_to_cls[a.category_id]))
    boxes, classes = [], []
    for it in ds.items:
        rows = by_image.get(it.image_id, [])
        b = np.array([[x, y, x + w, y + h] for (x, y, w, h), _ in rows], np.float32).reshape(-1, 4)
        boxes.append(b)
        classes.append(np.array([c for _, c in rows], np.int64))
    return Labelled(
        task="detect",
        name=f"{ds.name}:{split}",
        paths=[it.path for it in ds.items],
        image_ids=[it.image_id for it in ds.items],
        boxes=boxes,
        classes=classes,
        dataset=ds,
    )


@dataclass(slots=True)
class Counts:
    """True positives, false positives and misses (per class too) of one image."""

    tp: int
    fp: int
    fn: int
    tp_c: np.ndarray
    fp_c: np.ndarray
    fn_c: np.ndarray

    @property
    def f1(self) -> float:
        """F1 of the image (1 when there is nothing to find and nothing was found)."""
        d = 2 * self.tp + self.fp + self.fn
        return 1.0 if d == 0 else 2 * self.tp / d


def match(
    det: Detections,
    boxes: np.ndarray,
    classes: np.ndarray,
    *,
    conf: float,
    num_classes: int,
    iou: float = 0.5,
) -> Counts:
    """Greedy class-aware matching of detections (score >= ``conf``) to ground truth."""
    keep = det.scores >= conf
    db, ds, dc = det.boxes[keep], det.scores[keep], det.class_ids[keep]
    tp_c = np.zeros(num_classes, np.int64)
    fp_c = np.zeros(num_classes, np.int64)
    fn_c = np.zeros(num_classes, np.int64)
    used = np.zeros(len(boxes), bool)
    if len(db) and len(boxes):
        m = box_iou(db, boxes)
        m[dc[:, None] != classes[None, :]] = 0.0
    else:
        m = np.zeros((len(db), len(boxes)))
    for i in np.argsort(-ds, kind="stable"):
        c = int(dc[i])
        row = np.where(used, 0.0, m[i]) if len(boxes) else np.zeros(0)
        j = int(row.argmax()) if row.size else -1
        if j >= 0 and row[j] >= iou:
            used[j] = True
            if 0 <= c < num_classes:
                tp_c[c] += 1
        elif 0 <= c < num_classes:
            fp_c[c] += 1
    for j, c in enumerate(classes):
        if not used[j] and 0 <= int(c) < num_classes:
            fn_c[int(c)] += 1
    return Counts(int(tp_c.sum()), int(fp_c.sum()), int(fn_c.sum()), tp_c, fp_c, fn_c)


def agreement(a: Detections, b: Detections, *, conf: float, iou: float = 0.5) -> float:
    """F1 of ``b``'s detections against ``a``'s (both at ``conf``): 1 when they agree."""
    keep = a.scores >= conf
    c = match(
        b,
        a.boxes[keep],
        a.class_ids[keep],
        conf=conf,
        num_classes=int(max([0, *a.class_ids.tolist(), *b.class_ids.tolist()])) + 1,
        iou=iou,
    )
    return c.f1


def detection_map(
    lab: Labelled, results: Mapping[int, Detections], keep: Sequence[int] | None = None
) -> dict[str, Any]:
    """COCO metrics of detections (by position in ``lab``) on the images at ``keep``."""
    from cvdeploy.verify import evaluate_detections

    assert lab.dataset is not None
    idx = list(range(len(lab))) if keep is None else list(keep)
    preds = [
        (lab.image_ids[i], results[i].boxes, results[i].scores, results[i].class_ids)
        for i in idx
        if i in results
    ]
    m = evaluate_detections(
        lab.coco_gt(idx),
        preds,
        category_ids=lab.dataset.category_ids,
        names=list(lab.dataset.names),
    )
    return m.to_dict()


def top1(results: Mapping[int, Classification], lab: Labelled, keep: Sequence[int]) -> float:
    """Top-1 accuracy on the images at ``keep``."""
    ok = [int(np.argmax(results[i].probs)) == lab.labels[i] for i in keep if i in results]
    return float(np.mean(ok)) if ok else math.nan
