"""Tests of cvdeploy.pipeline.nms against a brute-force pure-Python greedy NMS."""

from __future__ import annotations

import numpy as np
import pytest

from cvdeploy.errors import ShapeError, UsageError
from cvdeploy.pipeline import nms as nms_module
from cvdeploy.pipeline.nms import batched_nms, box_iou, nms, nms_sorted


def reference_iou(boxes: np.ndarray) -> list[list[float]]:
    """All pairwise IoUs, computed like torchvision's CPU kernel in float32 scalars."""
    boxes = boxes.astype(np.float32)
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
    n = len(boxes)
    table = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            xx1 = max(boxes[i, 0], boxes[j, 0])
            yy1 = max(boxes[i, 1], boxes[j, 1])
            xx2 = min(boxes[i, 2], boxes[j, 2])
            yy2 = min(boxes[i, 3], boxes[j, 3])
            w = max(np.float32(0), xx2 - xx1)
            h = max(np.float32(0), yy2 - yy1)
            inter = w * h
            with np.errstate(divide="ignore", invalid="ignore"):
                table[i][j] = table[j][i] = float(inter / (areas[i] + areas[j] - inter))
    return table


def reference_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    thr: float,
    max_keep: int | None = None,
    iou: list[list[float]] | None = None,
) -> list[int]:
    """Greedy NMS, torchvision style: visit by (-score, index), drop IoU > thr (double)."""
    iou = reference_iou(boxes) if iou is None else iou
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    suppressed = [False] * len(scores)
    keep: list[int] = []
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        if max_keep is not None and len(keep) == max_keep:
            break
        for j in order[pos + 1 :]:
            if iou[i][j] > thr:  # nan never suppresses
                suppressed[j] = True
    return keep


def random_boxes(rng: np.random.Generator, n: int, *, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    """Clustered boxes (so that many overlap) with optional tied scores and duplicates."""
    centres = rng.uniform(0, 100, size=(max(1, n // 8), 2))
    c = centres[rng.integers(0, len(centres), size=n)] + rng.normal(0, 4, size=(n, 2))
    wh = rng.uniform(2, 30, size=(n, 2))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1).astype(np.float32)
    if n > 4:
        boxes[1] = boxes[0]  # an exact duplicate
        boxes[3, 2:] = boxes[3, :2]  # a zero-area box
    scores = rng.uniform(0, 1, size=n)
    if ties:
        scores = np.round(scores * 5) / 5  # only 6 distinct values
    return boxes, scores.astype(np.float32)


@pytest.mark.parametrize("seed", range(12))
def test_matches_bruteforce(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 100))
    boxes, scores = random_boxes(rng, n, ties=seed % 2 == 0)
    iou = reference_iou(boxes)
    for thr in (0.3, 0.45, 0.5, 0.6, 0.7, 0.9):
        expected = reference_nms(boxes, scores, thr, iou=iou)
        # Exercise the blocking, the chunk growth, the sweep, the dense fallback, and
        # both the fixed-point rounds and the sequential pass inside a block.
        for block, chunk, kept_block, dense, rounds in (
            (4, 16, 3, 0, 8),
            (16, 64, 8, 0, 1),
            (512, 512, 2048, 1024, 0),
            (512, 512, 2048, 1024, 8),
        ):
            monkeypatch.setattr(nms_module, "_BLOCK", block)
            monkeypatch.setattr(nms_module, "_MAX_CHUNK", chunk)
            monkeypatch.setattr(nms_module, "_KEPT_BLOCK", kept_block)
            monkeypatch.setattr(nms_module, "_DENSE_PAIRS", dense)
            monkeypatch.setattr(nms_module, "_FIXED_POINT_ROUNDS", rounds)
            got = nms(boxes, scores, thr)
            assert got.dtype == np.int64
            assert got.tolist() == expected, (thr, block)


@pytest.mark.parametrize("seed", range(5))
def test_max_keep_is_a_prefix(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(100 + seed)
    boxes, scores = random_boxes(rng, 80, ties=True)
    full = reference_nms(boxes, scores, 0.5)
    for block, rounds in ((8, 8), (8, 0), (512, 8), (512, 0)):
        monkeypatch.setattr(nms_module, "_BLOCK", block)
        monkeypatch.setattr(nms_module, "_DENSE_PAIRS", 0)
        monkeypatch.setattr(nms_module, "_FIXED_POINT_ROUNDS", rounds)
        for k in (0, 1, 3, 10, len(full), len(full) + 5):
            assert nms(boxes, scores, 0.5, max_keep=k).tolist() == full[:k]


def test_ties_keep_original_order() -> None:
    boxes = np.array([[0, 0, 10, 10], [100, 100, 110, 110], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.5, 0.5, 0.5], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]  # box 2 is suppressed by box 0


def test_threshold_is_strictly_greater() -> None:
    scores = np.array([0.9, 0.8], np.float32)
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], np.float32)  # IoU 50 / 100
    assert float(box_iou(boxes[:1], boxes[1:])[0, 0]) == 0.5
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.49).tolist() == [0]


@pytest.mark.parametrize("thr", [0.1, 0.3, 0.45, 0.5, 0.7, 0.9, 1 / 3])
def test_float32_threshold_equals_double_comparison(thr: float) -> None:
    t = nms_module._threshold(thr, np.dtype(np.float32))
    centre = np.float32(thr)
    xs = [centre]
    for _ in range(3):
        xs = [np.nextafter(xs[0], np.float32(-1)), *xs, np.nextafter(xs[-1], np.float32(2))]
    for x in xs:
        assert bool(x > t) == (float(x) > thr)


def test_iou_uses_no_plus_one_and_handles_empty_boxes() -> None:
    a = np.array([[0, 0, 2, 2]], np.float32)
    b = np.array([[1, 1, 3, 3], [5, 5, 5, 5]], np.float32)
    iou = box_iou(a, b)
    assert iou[0, 0] == pytest.approx(1 / 7)
    assert iou[0, 1] == 0
    empty = np.array([[1, 1, 1, 1], [1, 1, 1, 1]], np.float32)
    assert nms(empty, np.array([0.9, 0.8], np.float32), 0.5).tolist() == [0, 1]  # 0/0 -> nan


def test_batched_nms_separates_classes() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    classes = np.array([0, 1, 0, 1])
    assert batched_nms(boxes, scores, classes, 0.5).tolist() == [0, 1, 3]
    assert nms(boxes, scores, 0.5).tolist() == [0, 3]  # agnostic


@pytest.mark.parametrize("seed", range(6))
def test_batched_nms_matches_per_class_reference(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nms_module, "_BLOCK", 16)
    monkeypatch.setattr(nms_module, "_DENSE_PAIRS", 0)
    rng = np.random.default_rng(200 + seed)
    boxes, scores = random_boxes(rng, 90, ties=True)
    classes = rng.integers(0, 4, size=90)
    expected: list[int] = []
    for c in range(4):
        idx = np.flatnonzero(classes == c)
        offset = np.float32(c) * np.float32(7680)
        kept = reference_nms(boxes[idx] + offset, scores[idx], 0.5)
        expected.extend(int(idx[k]) for k in kept)
    expected.sort(key=lambda i: (-float(scores[i]), i))
    assert batched_nms(boxes, scores, classes, 0.5).tolist() == expected
    assert batched_nms(boxes, scores, classes, 0.5, max_keep=7).tolist() == expected[:7]


def test_nms_sorted_positions() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    assert nms_sorted(boxes, 0.5).tolist() == [0, 2]
    assert nms_sorted(boxes, 0.5, max_keep=1).tolist() == [0]


def test_sweep_never_misses_an_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Touching, nested, far-apart and wide boxes, and large coordinates (float32 ulp)."""
    monkeypatch.setattr(nms_module, "_DENSE_PAIRS", 0)
    rng = np.random.default_rng(5)
    x1 = rng.choice([0.0, 10.0, 10.5, 600000.0, 600000.0625], size=200)
    y1 = rng.uniform(0, 5, size=200)
    w = rng.choice([0.0625, 10.0, 500.0], size=200)
    boxes = np.stack([x1, y1, x1 + w, y1 + rng.uniform(1, 10, size=200)], 1).astype(np.float32)
    a, b = boxes[:70], boxes[70:]
    for thr in (0.0, 0.3, 0.7):
        t = nms_module._threshold(thr, np.dtype(np.float32))
        i, j = nms_module._pairs_over(a, b, t)
        dense_i, dense_j = np.nonzero(box_iou(a, b) > t)
        assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == sorted(
            zip(dense_i.tolist(), dense_j.tolist(), strict=True)
        )


def test_empty_and_integer_inputs() -> None:
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).tolist() == []
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 9]])
    assert nms(boxes, np.array([0.1, 0.2]), 0.5).tolist() == [1]


def test_float64_boxes() -> None:
    rng = np.random.default_rng(7)
    boxes, scores = random_boxes(rng, 60, ties=False)
    assert nms(boxes.astype(np.float64), scores, 0.5).tolist() == nms(boxes, scores, 0.5).tolist()


def test_bad_input() -> None:
    boxes = np.zeros((3, 4), np.float32)
    with pytest.raises(ShapeError):
        nms(np.zeros((3, 5)), np.zeros(3), 0.5)
    with pytest.raises(ShapeError):
        nms(boxes, np.zeros(2), 0.5)
    with pytest.raises(UsageError):
        nms(boxes, np.zeros(3), 1.5)
    with pytest.raises(UsageError):
        nms(boxes, np.zeros(3), 0.5, max_keep=-1)
    with pytest.raises(ShapeError):
        batched_nms(boxes, np.zeros(3), np.zeros(2), 0.5)
