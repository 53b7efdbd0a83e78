"""Tests for cvdeploy.verify.metrics (COCO mAP via pycocotools, top-k accuracy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cvdeploy.errors import InputError
from cvdeploy.verify.metrics import (
    ClassificationMetrics,
    DetectionMetrics,
    evaluate_classification,
    evaluate_detections,
)

pytest.importorskip("pycocotools")

# COCO interpolates precision at 101 recall points 0, 0.01, ..., 1: finding half the boxes
# with precision 1 gives AP = 51 / 101 (the points 0 .. 0.50).
HALF_RECALL_AP = 51 / 101


def _gt(
    boxes: list[tuple[int, int, list[float]]],
    *,
    categories: tuple[tuple[int, str], ...] = ((1, "cat"),),
    n_images: int = 2,
    crowd: tuple[int, ...] = (),
) -> dict[str, Any]:
    """COCO gt dict; ``boxes`` are ``(image_id, category_id, [x, y, w, h])``."""
    return {
        "images": [{"id": i, "width": 200, "height": 200} for i in range(1, n_images + 1)],
        "annotations": [
            {
                "id": n,
                "image_id": image_id,
                "category_id": cid,
                "bbox": bbox,
                "area": bbox[2] * bbox[3],
                "iscrowd": int(n - 1 in crowd),
            }
            for n, (image_id, cid, bbox) in enumerate(boxes, start=1)
        ],
        "categories": [{"id": cid, "name": name} for cid, name in categories],
    }


def _pred(
    image_id: int, boxes: list[list[float]], scores: list[float], classes: list[int]
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    return (
        image_id,
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(scores, np.float32),
        np.array(classes, np.int64),
    )


def test_perfect_predictions() -> None:
    gt = _gt(
        [(1, 1, [10, 10, 50, 40]), (2, 1, [0, 0, 100, 100]), (2, 2, [120, 120, 30, 30])],
        categories=((1, "cat"), (2, "dog")),
    )
    predictions = [
        _pred(1, [[10, 10, 60, 50]], [0.9], [0]),
        _pred(2, [[0, 0, 100, 100], [120, 120, 150, 150]], [0.8, 0.7], [0, 1]),
    ]
    metrics = evaluate_detections(gt, predictions, category_ids=[1, 2], names=["cat", "dog"])
    assert isinstance(metrics, DetectionMetrics)
    assert metrics.map50_95 == pytest.approx(1.0)
    assert metrics.map50 == pytest.approx(1.0)
    assert metrics.per_class == pytest.approx({"cat": 1.0, "dog": 1.0})
    assert (metrics.n_images, metrics.n_instances) == (2, 3)
    assert metrics.to_dict()["per_class"]["dog"] == pytest.approx(1.0)


def test_one_of_two_found_gives_known_ap() -> None:
    gt = _gt([(1, 1, [0, 0, 100, 100]), (2, 1, [50, 50, 40, 40])])
    # IoU 0.96 with the first box: a match at every threshold 0.50..0.95; no false positive
    predictions = [_pred(1, [[0, 0, 100, 96]], [0.9], [0])]
    metrics = evaluate_detections(gt, predictions, category_ids=[1], names=["cat"])
    assert metrics.map50 == pytest.approx(HALF_RECALL_AP)
    assert metrics.map50_95 == pytest.approx(HALF_RECALL_AP)
    assert metrics.per_class == pytest.approx({"cat": HALF_RECALL_AP})


def test_iou_between_thresholds() -> None:
    gt = _gt([(1, 1, [0, 0, 100, 100])])
    # IoU 0.72: matched at 0.50, 0.55, 0.60, 0.65, 0.70 (5 of 10 thresholds)
    metrics = evaluate_detections(
        gt, [_pred(1, [[0, 0, 100, 72]], [0.5], [0])], category_ids=[1], names=["cat"]
    )
    assert metrics.map50 == pytest.approx(1.0)
    assert metrics.map50_95 == pytest.approx(0.5)


def test_no_predictions_at_all() -> None:
    gt = _gt([(1, 1, [0, 0, 10, 10])])
    for predictions in ([], [_pred(1, [], [], [])]):
        metrics = evaluate_detections(gt, predictions, category_ids=[1], names=["cat"])
        assert metrics.map50_95 == 0.0
        assert metrics.map50 == 0.0
        assert metrics.per_class == {"cat": 0.0}
        assert metrics.n_instances == 1


def test_no_ground_truth() -> None:
    metrics = evaluate_detections(
        _gt([]), [_pred(1, [[0, 0, 5, 5]], [0.9], [0])], category_ids=[1], names=["cat"]
    )
    assert metrics.map50_95 == 0.0 and metrics.per_class == {} and metrics.n_instances == 0


def test_category_id_mapping() -> None:
    # non-contiguous COCO ids: model class 0 -> id 18 ("dog"), class 1 -> id 3 ("car")
    gt = _gt(
        [(1, 18, [0, 0, 50, 50]), (2, 3, [10, 10, 20, 20])], categories=((3, "car"), (18, "dog"))
    )
    predictions = [
        _pred(1, [[0, 0, 50, 50]], [0.9], [0]),
        _pred(2, [[10, 10, 30, 30]], [0.9], [1]),
    ]
    right = evaluate_detections(gt, predictions, category_ids=[18, 3], names=["dog", "car"])
    assert right.map50_95 == pytest.approx(1.0)
    assert set(right.per_class) == {"dog", "car"}
    wrong = evaluate_detections(gt, predictions, category_ids=[3, 18], names=["car", "dog"])
    assert wrong.map50_95 == pytest.approx(0.0)


def test_class_without_ground_truth_is_left_out() -> None:
    gt = _gt([(1, 1, [0, 0, 50, 50])], categories=((1, "cat"), (2, "dog")))
    predictions = [_pred(1, [[0, 0, 50, 50], [100, 100, 150, 150]], [0.9, 0.8], [0, 1])]
    metrics = evaluate_detections(gt, predictions, category_ids=[1, 2], names=["cat", "dog"])
    assert metrics.per_class == pytest.approx({"cat": 1.0})
    assert metrics.map50_95 == pytest.approx(1.0)


def test_crowd_regions_absorb_detections() -> None:
    gt = _gt([(1, 1, [0, 0, 50, 50]), (1, 1, [100, 100, 80, 80])], crowd=(1,))
    predictions = [_pred(1, [[0, 0, 50, 50], [110, 110, 150, 150]], [0.8, 0.95], [0, 0])]
    metrics = evaluate_detections(gt, predictions, category_ids=[1], names=["cat"])
    assert metrics.n_instances == 1
    assert metrics.map50_95 == pytest.approx(1.0)  # the detection inside the crowd is ignored


def test_gt_dict_is_not_modified() -> None:
    gt = _gt([(1, 1, [0, 0, 50, 50])])
    before = repr(gt)
    evaluate_detections(
        gt, [_pred(1, [[0, 0, 50, 50]], [0.9], [0])], category_ids=[1], names=["cat"]
    )
    assert repr(gt) == before


def test_max_dets_limits_detections_per_image() -> None:
    gt = _gt([(1, 1, [0, 0, 50, 50])])
    # a higher-scoring false positive first: with max_dets=1 the true box is cut off
    predictions = [_pred(1, [[100, 100, 150, 150], [0, 0, 50, 50]], [0.9, 0.8], [0, 0])]
    full = evaluate_detections(gt, predictions, category_ids=[1], names=["cat"])
    one = evaluate_detections(gt, predictions, category_ids=[1], names=["cat"], max_dets=1)
    assert full.map50 == pytest.approx(0.5, abs=0.01)
    assert one.map50 == 0.0


@pytest.mark.parametrize(
    ("prediction", "pattern"),
    [
        (_pred(9, [[0, 0, 1, 1]], [0.5], [0]), "image id 9"),
        (_pred(1, [[0, 0, 1, 1]], [0.5], [3]), r"class ids must be integers in 0\.\.0"),
        (_pred(1, [[0, 0, 1, 1]], [0.5, 0.4], [0]), "1 boxes, 2 scores"),
        ((1, np.zeros((1, 5)), np.ones(1), np.zeros(1, np.int64)), r"expected \(n, 4\)"),
        (_pred(1, [[0, 0, np.nan, 1]], [0.5], [0]), "not finite"),
    ],
)
def test_bad_predictions(prediction: Any, pattern: str) -> None:
    with pytest.raises(InputError, match=pattern):
        evaluate_detections(
            _gt([(1, 1, [0, 0, 5, 5])]), [prediction], category_ids=[1], names=["cat"]
        )


def test_bad_arguments() -> None:
    gt = _gt([(1, 1, [0, 0, 5, 5])])
    with pytest.raises(InputError, match="1 category ids for 2"):
        evaluate_detections(gt, [], category_ids=[1], names=["a", "b"])
    with pytest.raises(InputError, match="align the dataset"):
        evaluate_detections(gt, [], category_ids=[5], names=["a"])
    with pytest.raises(InputError, match="not a COCO dict"):
        evaluate_detections({"images": []}, [], category_ids=[1], names=["a"])


def test_classification_metrics() -> None:
    names = [f"c{i}" for i in range(6)]
    probs = np.array(
        [
            [0.9, 0.02, 0.02, 0.02, 0.02, 0.02],  # label 0: top1
            [0.3, 0.25, 0.2, 0.1, 0.1, 0.05],  # label 3: top5, not top1
            [0.3, 0.25, 0.2, 0.1, 0.1, 0.05],  # label 5: neither
            [0.0, 0.0, 0.0, 1.0, 0.0, 0.0],  # label 3: top1
        ]
    )
    metrics = evaluate_classification(np.array([0, 3, 5, 3]), probs, names)
    assert isinstance(metrics, ClassificationMetrics)
    assert metrics.top1 == pytest.approx(0.5)
    assert metrics.top5 == pytest.approx(0.75)
    assert metrics.per_class == pytest.approx({"c0": 1.0, "c3": 0.5, "c5": 0.0})
    assert metrics.n == 4
    assert metrics.to_dict()["top1"] == pytest.approx(0.5)


def test_classification_fewer_than_five_classes() -> None:
    metrics = evaluate_classification(
        np.array([1, 0]), np.array([[0.9, 0.1], [0.2, 0.8]]), ["a", "b"]
    )
    assert metrics.top1 == 0.0 and metrics.top5 == 1.0


def test_classification_bad_input() -> None:
    with pytest.raises(InputError, match=r"expected \(n, 3\)"):
        evaluate_classification(np.array([0]), np.ones((1, 2)), ["a", "b", "c"])
    with pytest.raises(InputError, match="one label per sample"):
        evaluate_classification(np.array([0, 1]), np.ones((1, 2)), ["a", "b"])
    with pytest.raises(InputError, match="no samples"):
        evaluate_classification(np.zeros(0, np.int64), np.ones((0, 2)), ["a", "b"])
    with pytest.raises(InputError, match=r"0\.\.1"):
        evaluate_classification(np.array([2]), np.ones((1, 2)), ["a", "b"])


@pytest.mark.realworld
def test_coco128_yolo_labels_score_perfectly_against_the_json(realworld: Path) -> None:
    from cvdeploy.data import load_detection_dataset

    root = realworld / "datasets" / "coco128"
    yolo = load_detection_dataset(root / "coco128.yaml")
    coco = load_detection_dataset(root / "annotations" / "instances_train2017.json")
    json_id = {item.path.name: item.image_id for item in coco.items}

    def predictions() -> Any:
        for item in yolo.items:
            boxes, classes = yolo.ground_truth(item.image_id)
            yield json_id[item.path.name], boxes, np.ones(len(boxes)), classes

    metrics = evaluate_detections(
        coco.coco_gt(), predictions(), category_ids=coco.category_ids, names=coco.names
    )
    assert metrics.n_images == 128 and metrics.n_instances == 929
    assert metrics.map50_95 == pytest.approx(1.0)
    assert len(metrics.per_class) == 71  # classes with ground truth in coco128


def test_agrees_with_pycocotools_summarize() -> None:
    """Noisy predictions: the numbers equal COCOeval.summarize()'s AP and AP50."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    boxes = []
    for image_id in range(1, 21):
        for _ in range(rng.integers(0, 6)):
            x, y = rng.uniform(0, 150, 2)
            w, h = rng.uniform(10, 50, 2)
            boxes.append((image_id, int(rng.choice([1, 4, 9])), [x, y, w, h]))
    gt = _gt(boxes, categories=((1, "a"), (4, "b"), (9, "c")), n_images=20)
    index = {1: 0, 4: 1, 9: 2}
    predictions = []
    rows = []
    for image_id in range(1, 21):
        mine = [(cid, b) for i, cid, b in boxes if i == image_id]
        xyxy, scores, classes = [], [], []
        for cid, (x, y, w, h) in [*mine, (4, [100.0, 100.0, 30.0, 30.0])]:
            jitter = rng.normal(0, 3, 4).clip(-4.5, 4.5)  # boxes keep w, h > 0
            box = [x + jitter[0], y + jitter[1], x + w + jitter[2], y + h + jitter[3]]
            score = float(rng.uniform(0.1, 1.0))
            xyxy.append(box)
            scores.append(score)
            classes.append(index[cid])
            rows.append([image_id, box[0], box[1], box[2] - box[0], box[3] - box[1], score, cid])
        predictions.append((image_id, np.array(xyxy), np.array(scores), np.array(classes)))
    ours = evaluate_detections(gt, predictions, category_ids=[1, 4, 9], names=["a", "b", "c"])
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = _gt(boxes, categories=((1, "a"), (4, "b"), (9, "c")), n_images=20)
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(np.array(rows)), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert 0.1 < ours.map50_95 < 0.95
    assert ours.map50_95 == pytest.approx(evaluator.stats[0], abs=1e-9)
    assert ours.map50 == pytest.approx(evaluator.stats[1], abs=1e-9)
