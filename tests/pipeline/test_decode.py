"""Tests of cvdeploy.pipeline.decode (and the result types of cvdeploy.pipeline.results)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cvdeploy.errors import ShapeError, SpecError, UsageError
from cvdeploy.pipeline import decode as decode_module
from cvdeploy.pipeline.decode import (
    decode_logits,
    decode_yolov5,
    decode_yolov8,
    decode_yolox,
    yolox_grid,
)
from cvdeploy.pipeline.heads import DECODERS, get_decoder
from cvdeploy.pipeline.results import Classification, Detections

# --------------------------------------------------------------------------------------
# A straightforward transcription of Ultralytics' non_max_suppression (full stable sort,
# greedy NMS with a loop over candidates) to compare the fast path with.


def _iou_row(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    xx1 = np.maximum(box[0], others[:, 0])
    yy1 = np.maximum(box[1], others[:, 1])
    xx2 = np.minimum(box[2], others[:, 2])
    yy2 = np.minimum(box[3], others[:, 3])
    inter = np.maximum(xx2 - xx1, 0) * np.maximum(yy2 - yy1, 0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / (area + areas - inter)


def reference_nms(
    box: np.ndarray,  # (M, 4) xyxy
    cls: np.ndarray,  # (M, nc) final class scores
    *,
    conf: float,
    iou: float,
    max_det: int,
    multi_label: bool,
    agnostic: bool,
    max_nms: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nc = cls.shape[1]
    if multi_label and nc > 1:
        i, j = np.nonzero(cls > np.float32(conf))
        boxes, scores, classes = box[i], cls[i, j], j
    else:
        best, j = cls.max(1), cls.argmax(1)
        ok = best > np.float32(conf)
        boxes, scores, classes = box[ok], best[ok], j[ok]
    order = np.argsort(-scores, kind="stable")[:max_nms]
    boxes, scores, classes = boxes[order], scores[order], classes[order]
    offset = boxes + (0 if agnostic else classes[:, None].astype(np.float32) * np.float32(7680))
    keep: list[int] = []
    for k in range(len(boxes)):
        if keep and (_iou_row(offset[k], offset[keep]).astype(np.float64) > iou).any():
            continue
        keep.append(k)
    keep = keep[:max_det]
    return boxes[keep], scores[keep], classes[keep]


def xywh2xyxy(x: np.ndarray) -> np.ndarray:
    y = np.empty_like(x)
    y[:, :2] = x[:, :2] - x[:, 2:] / 2
    y[:, 2:] = x[:, :2] + x[:, 2:] / 2
    return y


def assert_same(det: Detections, ref: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    np.testing.assert_array_equal(det.boxes, ref[0])
    np.testing.assert_array_equal(det.scores, ref[1])
    np.testing.assert_array_equal(det.class_ids, ref[2])


def random_head(
    rng: np.random.Generator, n: int, nc: int, *, tight: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Clustered boxes (cx, cy, w, h) and quantised scores (many ties), float32.

    ``tight`` clusters are near-duplicates, so NMS keeps few boxes.
    """
    centres = rng.uniform(20, 300, size=(6, 2))
    xy = centres[rng.integers(0, 6, size=n)] + rng.normal(0, 0.5 if tight else 6, size=(n, 2))
    wh = rng.uniform(40, 42, size=(n, 2)) if tight else rng.uniform(10, 60, size=(n, 2))
    scores = np.round(rng.uniform(0, 1, size=(n, nc)) ** 3 * 20) / 20
    return np.concatenate([xy, wh], 1).astype(np.float32), scores.astype(np.float32)


OPTIONS = [
    {"conf": 0.25, "iou": 0.7, "max_det": 300, "multi_label": False, "agnostic": False},
    {"conf": 0.001, "iou": 0.7, "max_det": 300, "multi_label": True, "agnostic": False},
    {"conf": 0.1, "iou": 0.5, "max_det": 7, "multi_label": True, "agnostic": False},
    {"conf": 0.05, "iou": 0.45, "max_det": 20, "multi_label": False, "agnostic": True},
    {"conf": 0.0, "iou": 0.6, "max_det": 50, "multi_label": True, "agnostic": True},
]


@pytest.fixture(params=[False, True], ids=["default", "tiny-blocks"])
def small_internals(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink the selection constants so that sampling and the growth loop run."""
    if request.param:
        monkeypatch.setattr(decode_module, "_FIRST_K", 4)
        monkeypatch.setattr(decode_module, "_SAMPLE", 64)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize("max_nms", [30000, 40])
@pytest.mark.parametrize("tight", [False, True], ids=["spread", "tight"])
@pytest.mark.usefixtures("small_internals")
def test_yolov8_matches_reference(seed: int, opts: dict, max_nms: int, tight: bool) -> None:
    rng = np.random.default_rng(seed)
    xywh, cls = random_head(rng, 120, 6, tight=tight)
    out = np.concatenate([xywh, cls], 1).T[None]  # (1, 4 + nc, N)
    got = decode_yolov8(out, max_nms=max_nms, **opts)[0]
    assert_same(got, reference_nms(xywh2xyxy(xywh), cls, max_nms=max_nms, **opts))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.usefixtures("small_internals")
def test_yolov5_matches_reference(seed: int, opts: dict) -> None:
    rng = np.random.default_rng(10 + seed)
    xywh, cls = random_head(rng, 150, 4)
    obj = np.round(rng.uniform(0, 1, size=(150, 1)) * 10).astype(np.float32) / 10
    if seed % 2:
        obj[::3] = 0.0  # few candidates: exercises the gather path
    out = np.concatenate([xywh, obj, cls], 1)[None]
    got = decode_yolov5(out, **opts)[0]
    keep = obj[:, 0] > np.float32(opts["conf"])  # YOLOv5: objectness filter first
    final = np.where(keep[:, None], cls * obj, 0).astype(np.float32)
    assert_same(got, reference_nms(xywh2xyxy(xywh), final, max_nms=30000, **opts))


# --------------------------------------------------------------------------------------
# Hand-computed expectations.


def v8_output(rows: list[list[float]], nc: int) -> np.ndarray:
    """(1, 4 + nc, N) from per-anchor rows [cx, cy, w, h, s0, s1, ...]."""
    arr = np.asarray(rows, np.float32)
    assert arr.shape[1] == 4 + nc
    return arr.T[None].copy()


def test_yolov8_hand_computed() -> None:
    out = v8_output(
        [
            [50, 50, 20, 10, 0.9, 0.1, 0.0],  # -> (40, 45, 60, 55), class 0
            [51, 50, 20, 10, 0.8, 0.6, 0.0],  # overlaps anchor 0 (IoU 0.9): suppressed for class 0
            [200, 100, 40, 40, 0.0, 0.0, 0.3],  # -> (180, 80, 220, 120), class 2
            [300, 300, 10, 10, 0.2, 0.25, 0.1],  # best 0.25 is not > 0.25
        ],
        nc=3,
    )
    det = decode_yolov8(out, conf=0.25, iou=0.7)[0]
    np.testing.assert_array_equal(det.boxes, [[40, 45, 60, 55], [180, 80, 220, 120]])
    np.testing.assert_array_equal(det.scores, np.array([0.9, 0.3], np.float32))
    assert det.class_ids.tolist() == [0, 2] and det.class_ids.dtype == np.int64

    multi = decode_yolov8(out, conf=0.25, iou=0.7, multi_label=True)[0]
    # Anchor 1 adds its class-1 pair (0.6); its class-0 pair is suppressed by anchor 0.
    assert multi.scores.tolist() == pytest.approx([0.9, 0.6, 0.3])
    assert multi.class_ids.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(multi.boxes[1], [41, 45, 61, 55])

    agnostic = decode_yolov8(out, conf=0.25, iou=0.7, multi_label=True, agnostic=True)[0]
    assert agnostic.class_ids.tolist() == [0, 2]  # the class-1 pair overlaps anchor 0

    assert decode_yolov8(out, conf=0.25, iou=0.95)[0].class_ids.tolist() == [0, 0, 2]
    assert len(decode_yolov8(out, conf=0.25, iou=0.95, max_det=2)[0]) == 2
    assert len(decode_yolov8(out, conf=0.95, iou=0.7)[0]) == 0


def test_yolov8_batch_single_class_and_extra_rows() -> None:
    a = v8_output([[10, 10, 4, 4, 0.5], [30, 30, 4, 4, 0.2]], nc=1)
    b = v8_output([[10, 10, 4, 4, 0.1], [30, 30, 4, 4, 0.7]], nc=1)
    dets = decode_yolov8(np.concatenate([a, b]), conf=0.3, iou=0.5, multi_label=True)
    assert [d.scores.tolist() for d in dets] == [[0.5], [pytest.approx(0.7)]]
    np.testing.assert_array_equal(dets[1].boxes, [[28, 28, 32, 32]])
    # Extra rows after the classes (e.g. mask coefficients) are ignored with nc given.
    seg = np.concatenate([a, np.full((1, 32, 2), 5.0, np.float32)], axis=1)
    assert decode_yolov8(seg, conf=0.3, iou=0.5, nc=1)[0].scores.tolist() == [0.5]


def test_yolov5_hand_computed() -> None:
    out = np.array(
        [
            [
                [100, 100, 20, 20, 0.5, 0.9, 0.6],  # scores 0.45 / 0.30 -> (90, 90, 110, 110)
                [100, 100, 20, 20, 0.2, 1.0, 1.0],  # objectness 0.2 <= conf: dropped
                [300, 200, 10, 30, 0.9, 0.1, 0.5],  # best class 1 with 0.45 -> (295, 185, 305, 215)
            ]
        ],
        np.float32,
    )
    det = decode_yolov5(out, conf=0.25, iou=0.45)[0]
    np.testing.assert_array_equal(det.boxes, [[90, 90, 110, 110], [295, 185, 305, 215]])
    np.testing.assert_allclose(det.scores, [0.45, 0.45])
    assert det.class_ids.tolist() == [0, 1]  # equal scores: anchor order
    multi = decode_yolov5(out, conf=0.25, iou=0.45, multi_label=True)[0]
    assert multi.class_ids.tolist() == [0, 1, 1]
    np.testing.assert_allclose(multi.scores, [0.45, 0.45, 0.3])


def test_yolox_grid_order() -> None:
    grid, stride = yolox_grid((64, 64))
    assert grid.shape == (84, 2) and stride.shape == (84,)
    assert grid[:3].tolist() == [[0, 0], [1, 0], [2, 0]] and grid[8].tolist() == [0, 1]
    assert stride[63] == 8 and stride[64] == 16 and stride[80] == 32
    assert grid[83].tolist() == [1, 1]
    grid, _ = yolox_grid((64, 96))  # 8x12 + 4x6 + 2x3
    assert grid.shape == (96 + 24 + 6, 2) and grid[11].tolist() == [11, 0]


def yolox_output(n: int = 84, nc: int = 2) -> np.ndarray:
    out = np.zeros((1, n, 5 + nc), np.float32)
    out[..., 4] = 0.01  # low objectness everywhere
    return out


def test_yolox_hand_computed() -> None:
    out = yolox_output()
    # stride 8, cell (x=3, y=2) -> index 2*8 + 3 = 19
    out[0, 19] = [0.5, 0.25, math.log(2), 0, 0.9, 0.8, 0.1]
    # stride 16, cell (x=1, y=3) -> 64 + 3*4 + 1 = 77
    out[0, 77] = [0, 0, 0, 0, 0.6, 0.2, 0.5]
    # stride 32, cell (x=1, y=0) -> 80 + 1 = 81
    out[0, 81] = [0, 0, 0, 0, 0.5, 0.6, 0.0]
    det = decode_yolox(out, input_hw=(64, 64), conf=0.25, iou=0.65)[0]
    # 19: cx=(0.5+3)*8=28, cy=(0.25+2)*8=18, w=2*8=16, h=8 -> (20, 14, 36, 22), 0.72
    # 77: cx=16, cy=48, w=h=16 -> (8, 40, 24, 56), 0.6*0.5 = 0.3 (class 1)
    # 81: cx=32, cy=0, w=h=32 -> (16, -16, 48, 16), 0.5*0.6 = 0.3: tie, anchor order
    np.testing.assert_allclose(
        det.boxes, [[20, 14, 36, 22], [8, 40, 24, 56], [16, -16, 48, 16]], atol=1e-5
    )
    np.testing.assert_allclose(det.scores, [0.72, 0.3, 0.3], rtol=1e-6)
    assert det.class_ids.tolist() == [0, 1, 0]
    multi = decode_yolox(out, input_hw=(64, 64), conf=0.25, iou=0.65, multi_label=True)[0]
    assert len(multi) == 3  # the 0.8*0.1 pair of anchor 19 is below conf
    assert decode_yolox(out, input_hw=(64, 64), conf=0.25, iou=0.65, max_det=1)[0].scores[0] == (
        np.float32(0.9) * np.float32(0.8)
    )


def test_yolox_custom_strides_and_wrong_anchor_count() -> None:
    out = yolox_output(n=64 + 16)
    out[0, 70] = [0, 0, 0, 0, 0.9, 0.9, 0.0]  # stride 16, index 6 -> cell (2, 1)
    det = decode_yolox(out, input_hw=(64, 64), strides=(8, 16), conf=0.25, iou=0.65)[0]
    np.testing.assert_allclose(det.boxes, [[24, 8, 40, 24]])
    with pytest.raises(SpecError, match="84"):
        decode_yolox(out, input_hw=(64, 64), conf=0.25, iou=0.65)
    with pytest.raises(SpecError, match="imgsz"):
        decode_yolox(yolox_output(), input_hw=(96, 64), conf=0.25, iou=0.65)
    with pytest.raises(SpecError):
        decode_yolox(yolox_output(), input_hw=(64, 64), strides=(0,), conf=0.25, iou=0.65)


def test_detection_decoders_reject_bad_input() -> None:
    out = v8_output([[10, 10, 4, 4, 0.5]], nc=1)
    with pytest.raises(ShapeError):
        decode_yolov8(out[0], conf=0.25, iou=0.7)
    with pytest.raises(ShapeError):
        decode_yolov8(np.zeros((1, 4, 10), np.float32), conf=0.25, iou=0.7)
    with pytest.raises(ShapeError):
        decode_yolov5(np.zeros((1, 10, 5), np.float32), conf=0.25, iou=0.7)
    with pytest.raises(UsageError):
        decode_yolov8(out, conf=1.5, iou=0.7)
    with pytest.raises(UsageError):
        decode_yolov8(out, conf=0.25, iou=-0.1)
    with pytest.raises(UsageError):
        decode_yolov8(out, conf=0.25, iou=0.7, max_det=0)


def test_float16_output_and_empty_batch() -> None:
    out = v8_output([[10, 10, 4, 4, 0.5]], nc=1).astype(np.float16)
    det = decode_yolov8(out, conf=0.25, iou=0.7)[0]
    assert det.boxes.dtype == np.float32 and det.scores.tolist() == [0.5]
    assert decode_yolov8(np.zeros((0, 5, 3), np.float32), conf=0.25, iou=0.7) == []


def test_decode_logits() -> None:
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], np.float32)
    res = decode_logits(logits)
    assert len(res) == 2 and all(isinstance(r, Classification) for r in res)
    e = np.exp([1.0, 2.0, 3.0])
    np.testing.assert_allclose(res[0].probs, e / e.sum(), rtol=1e-6)
    assert res[0].probs.dtype == np.float32
    assert res[0].top_k(2) == [
        (2, pytest.approx(e[2] / e.sum())),
        (1, pytest.approx(e[1] / e.sum())),
    ]
    assert [i for i, _ in res[1].top_k(3)] == [0, 1, 2]  # ties: lower class id first
    raw = decode_logits(np.array([[0.2, 0.8]]), softmax=False)[0]
    np.testing.assert_allclose(raw.probs, [0.2, 0.8])
    assert len(decode_logits(np.zeros((3, 5, 1, 1)))) == 3
    with pytest.raises(ShapeError):
        decode_logits(np.zeros((3, 5, 2)))


def test_registry() -> None:
    assert get_decoder("yolov8") is decode_yolov8
    assert get_decoder("yolo11") is decode_yolov8
    assert get_decoder("yolov5") is decode_yolov5
    assert get_decoder("yolox") is decode_yolox
    assert get_decoder("logits") is decode_logits
    with pytest.raises(SpecError, match=r"known decoders: logits, yolo11, yolov5, yolov8, yolox"):
        get_decoder("detr")
    with pytest.raises(TypeError):
        DECODERS["mine"] = decode_logits  # type: ignore[index]


# --------------------------------------------------------------------------------------
# Result types


def test_detections() -> None:
    det = Detections(
        boxes=np.array([[1.234, 2.0, 3.456, 4.0]]),
        scores=np.array([0.5]),
        class_ids=np.array([1.0]),
    )
    assert det.boxes.dtype == np.float32 and det.class_ids.dtype == np.int64 and len(det) == 1
    assert det.to_dicts(["a", "b"]) == [
        {"box": [1.23, 2.0, 3.46, 4.0], "score": 0.5, "class_id": 1, "class_name": "b"}
    ]
    assert det.to_dicts([])[0]["class_name"] == "1"
    empty = Detections.empty()
    assert len(empty) == 0 and empty.boxes.shape == (0, 4) and empty.to_dicts(["a"]) == []
    with pytest.raises(ShapeError):
        Detections(boxes=np.zeros((2, 4)), scores=np.zeros(3), class_ids=np.zeros(2))
    with pytest.raises(ShapeError):
        Detections(boxes=np.zeros((2, 5)), scores=np.zeros(2), class_ids=np.zeros(2))


def test_classification() -> None:
    cls = Classification(probs=np.array([0.1, 0.6, 0.3]))
    assert cls.probs.dtype == np.float32
    assert [i for i, _ in cls.top_k(2)] == [1, 2]
    assert len(cls.top_k(10)) == 3
    dicts = cls.to_dicts(["cat", "dog", "fox"], k=1)
    assert dicts == [{"class_id": 1, "class_name": "dog", "score": pytest.approx(0.6)}]
    with pytest.raises(UsageError):
        cls.top_k(0)
    with pytest.raises(ShapeError):
        Classification(probs=np.zeros((2, 2)))
