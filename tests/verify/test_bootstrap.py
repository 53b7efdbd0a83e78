"""Bootstrap intervals of mAP: the accumulation reproduces pycocotools, intervals bracket."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

from cvdeploy.verify.bootstrap import _collect, _map, bootstrap_accuracy
from cvdeploy.verify.metrics import evaluate_classification, evaluate_detections


def _problem(seed: int = 0, n_images: int = 40) -> tuple[dict[str, Any], list[Any]]:
    rng = np.random.default_rng(seed)
    images, anns, preds = [], [], []
    for i in range(n_images):
        images.append({"id": i + 1, "width": 200, "height": 200})
        boxes, scores, classes = [], [], []
        for _ in range(int(rng.integers(0, 5))):
            x, y = rng.uniform(0, 150, 2)
            w, h = rng.uniform(10, 50, 2)
            c = int(rng.integers(0, 3))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": c + 1,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
            if rng.random() < 0.8:  # found, with some box noise
                j = rng.normal(0, 3, 4)
                boxes.append([x + j[0], y + j[1], x + w + j[2], y + h + j[3]])
                scores.append(rng.uniform(0.3, 1.0))
                classes.append(c if rng.random() < 0.9 else (c + 1) % 3)
        for _ in range(int(rng.integers(0, 3))):  # false positives
            x, y = rng.uniform(0, 150, 2)
            boxes.append([x, y, x + 20, y + 20])
            scores.append(rng.uniform(0.0, 0.6))
            classes.append(int(rng.integers(0, 3)))
        preds.append((i + 1, np.array(boxes).reshape(-1, 4), np.array(scores), np.array(classes)))
    cats = [{"id": c + 1, "name": f"c{c}"} for c in range(3)]
    return {"images": images, "annotations": anns, "categories": cats}, preds


def test_full_sample_reproduces_pycocotools() -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, preds = _problem()
    m = evaluate_detections(gt, preds, category_ids=[1, 2, 3], names=["c0", "c1", "c2"])
    # the same evaluation, then the bootstrap's accumulation over every image once
    dets = []
    for image_id, boxes, scores, classes in preds:
        for b, s, c in zip(boxes, scores, classes, strict=True):
            dets.append(
                {
                    "image_id": image_id,
                    "category_id": int(c) + 1,
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "score": float(s),
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {**gt, "annotations": [dict(a) for a in gt["annotations"]]}
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets), iouType="bbox")
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
    cats = _collect(ev, 100)
    full = _map(cats, np.ones(len(ev.params.imgIds), np.int64), np.asarray(ev.params.recThrs))
    assert abs(full[0] - m.map50_95) < 1e-9 and abs(full[1] - m.map50) < 1e-9
    ci = m.ci
    assert ci is not None and ci["resamples"] == 200 and ci["level"] == 0.95
    assert ci["map50_95"][0] <= m.map50_95 <= ci["map50_95"][1]
    assert ci["map50"][0] <= m.map50 <= ci["map50"][1]
    assert ci["map50_95"][1] - ci["map50_95"][0] > 0.0  # 40 images: a real spread
    # reproducible, and off when asked
    again = evaluate_detections(gt, preds, category_ids=[1, 2, 3], names=["c0", "c1", "c2"])
    assert again.ci == ci
    off = evaluate_detections(gt, preds, category_ids=[1, 2, 3], names=["a", "b", "c"], bootstrap=0)
    assert off.ci is None and off.map50_95 == m.map50_95


def test_more_images_narrow_the_interval() -> None:
    widths = []
    for n in (20, 160):
        gt, preds = _problem(seed=1, n_images=n)
        ci = evaluate_detections(gt, preds, category_ids=[1, 2, 3], names=["a", "b", "c"]).ci
        assert ci is not None
        widths.append(ci["map50_95"][1] - ci["map50_95"][0])
    assert widths[1] < widths[0]


def test_classification_interval() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    probs = rng.random((300, 4))
    probs[np.arange(300), labels] += 0.5  # mostly right
    m = evaluate_classification(labels, probs, ["a", "b", "c", "d"])
    assert m.ci is not None
    assert m.ci["top1"][0] <= m.top1 <= m.ci["top1"][1]
    assert m.ci["top5"] == [1.0, 1.0]  # 4 classes: top-5 is always right
    hits = np.ones(10, dtype=bool)
    assert bootstrap_accuracy(hits, hits)["top1"] == [1.0, 1.0]
