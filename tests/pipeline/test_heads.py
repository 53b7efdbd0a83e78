"""Template tests of cvdeploy.pipeline.heads: every registered head description.

Each head class has a synthetic-output builder below that plants one box (or one class);
a new head fails ``test_every_head_has_a_synthetic_output`` until it gets one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from cvdeploy.errors import SpecError
from cvdeploy.pipeline import heads as heads_module
from cvdeploy.pipeline.decode import decode_yolov8
from cvdeploy.pipeline.heads import (
    DECODERS,
    HEADS,
    Head,
    LogitsHead,
    YOLOv5Head,
    YOLOv8Head,
    YOLOXHead,
    get_decoder,
    get_head,
    layouts_hint,
    register_head,
)
from cvdeploy.pipeline.results import Classification, Detections
from cvdeploy.spec import Decoder

NC = 3
CLS = 2
BOX = (12.0, 20.0, 44.0, 52.0)  # x1, y1, x2, y2 in input pixels
INPUT_HW = (64, 64)


@dataclass(frozen=True)
class Synthetic:
    """A raw output with one planted box of class ``CLS`` at anchor ``anchor``."""

    output: np.ndarray
    anchor: int | None  # None: a classifier
    channels: int


def _v8() -> Synthetic:
    n = 64
    out = np.zeros((1, 4 + NC, n), np.float32)
    out[0, 4:, :] = 0.01
    x1, y1, x2, y2 = BOX
    out[0, :4, 10] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
    out[0, 4 + CLS, 10] = 0.9
    return Synthetic(out, 10, 4 + NC)


def _v5() -> Synthetic:
    n = 50
    out = np.zeros((1, n, 5 + NC), np.float32)
    out[0, :, 4] = 0.01
    out[0, :, 5:] = 0.5
    x1, y1, x2, y2 = BOX
    out[0, 7, :5] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 0.95]
    out[0, 7, 5 + CLS] = 0.9
    return Synthetic(out, 7, 5 + NC)


def _yolox() -> Synthetic:
    n = 8 * 8 + 4 * 4 + 2 * 2  # strides 8, 16, 32 on 64x64
    out = np.zeros((1, n, 5 + NC), np.float32)
    out[0, :, 4] = 0.01
    out[0, :, 5:] = 0.5
    anchor = 4 * 8 + 3  # stride 8, cell x=3, y=4: centre (3.5, 4.5) * 8 = (28, 36)
    out[0, anchor, :5] = [0.5, 0.5, math.log(4.0), math.log(4.0), 0.95]  # 32 x 32
    out[0, anchor, 5 + CLS] = 0.9
    return Synthetic(out, anchor, 5 + NC)


def _logits() -> Synthetic:
    out = np.zeros((1, NC), np.float32)
    out[0, CLS] = 5.0
    return Synthetic(out, None, NC)


SYNTHETIC: dict[type[Head], Callable[[], Synthetic]] = {
    YOLOv8Head: _v8,
    YOLOv5Head: _v5,
    YOLOXHead: _yolox,
    LogitsHead: _logits,
}
KINDS = sorted(HEADS)


def _synthetic(head: Head) -> Synthetic:
    return SYNTHETIC[type(head)]()


def _decode(head: Head, output: np.ndarray) -> list[Detections] | list[Classification]:
    decoder = Decoder(kind=type(head).kinds[0])  # type: ignore[arg-type]
    extra = head.decode_args(decoder, input_hw=INPUT_HW)
    if head.task == "classify":
        return head.decode(output, **extra)
    return head.decode(output, conf=0.25, iou=0.7, max_det=300, **extra)


def test_registered_kinds() -> None:
    assert KINDS == ["logits", "yolo11", "yolov5", "yolov8", "yolox"]
    assert type(get_head("yolo11")) is YOLOv8Head and get_head("yolo11").kind == "yolo11"
    with pytest.raises(SpecError, match=r"known decoders: logits, yolo11, yolov5, yolov8, yolox"):
        get_head("detr")


@pytest.mark.parametrize("kind", KINDS)
def test_every_head_has_a_synthetic_output(kind: str) -> None:
    assert type(HEADS[kind]) in SYNTHETIC, f"add a synthetic output for {type(HEADS[kind])}"


@pytest.mark.parametrize("kind", KINDS)
def test_class_count_from_shape(kind: str) -> None:
    head = HEADS[kind]
    syn = _synthetic(head)
    assert head.num_classes(syn.output.shape) == NC
    if head.task == "classify":  # Caffe-style [B, nc, 1, 1]
        assert head.num_classes((1, NC, 1, 1)) == NC


@pytest.mark.parametrize("kind", KINDS)
def test_a_shape_that_does_not_fit_raises(kind: str) -> None:
    head = HEADS[kind]
    with pytest.raises(SpecError, match=f"does not fit decoder '{kind}'") as err:
        head.num_classes((1, 2, 3, 4))
    assert err.value.hint == f"{layouts_hint()}. Pass the right --preset or --decoder"
    assert head.num_classes((1, -1, -1)) is None  # dynamic: cannot tell


@pytest.mark.parametrize("kind", KINDS)
def test_scoring_anchor_scores_agree_with_decoded_scores(kind: str) -> None:
    head = HEADS[kind]
    syn = _synthetic(head)
    if syn.anchor is None:
        with pytest.raises(SpecError, match="no anchors"):
            head.anchor_scores(syn.output)
        return
    scores = head.anchor_scores(syn.output)
    (det,) = _decode(head, syn.output)
    assert isinstance(det, Detections)
    assert scores.shape == (1, head.rows(syn.output).shape[1])
    np.testing.assert_allclose(np.sort(scores[scores > 0.25]), np.sort(det.scores))
    assert int(scores[0].argmax()) == syn.anchor


@pytest.mark.parametrize("kind", KINDS)
def test_rows_are_anchors_first(kind: str) -> None:
    head = HEADS[kind]
    syn = _synthetic(head)
    if syn.anchor is None:
        assert head.anchors_first is None
        with pytest.raises(SpecError, match="no anchors"):
            head.rows(syn.output)
        return
    rows = head.rows(syn.output)
    n = syn.output.shape[1] if head.anchors_first else syn.output.shape[2]
    assert rows.shape == (1, n, syn.channels)
    channels = syn.output[0, syn.anchor] if head.anchors_first else syn.output[0, :, syn.anchor]
    np.testing.assert_array_equal(rows[0, syn.anchor], channels)


@pytest.mark.parametrize("kind", KINDS)
def test_decode_round_trip(kind: str) -> None:
    head = HEADS[kind]
    syn = _synthetic(head)
    (res,) = _decode(head, syn.output)
    if syn.anchor is None:
        assert isinstance(res, Classification)
        assert res.top_k(1)[0][0] == CLS
        return
    assert isinstance(res, Detections) and len(res) == 1
    np.testing.assert_allclose(res.boxes[0], BOX, atol=1e-4)
    assert res.class_ids.tolist() == [CLS]


def test_decoder_names_follow_the_heads() -> None:
    assert set(DECODERS) == set(HEADS)
    for kind, head in HEADS.items():
        assert DECODERS[kind] is head.decode_fn is get_decoder(kind)


def test_layouts_hint() -> None:
    assert (
        layouts_hint() == "yolov8 expects [B, 4+nc, N]; yolov5/yolox [B, N, 5+nc]; logits [B, nc]"
    )


def test_yolox_needs_the_input_size_and_strides() -> None:
    args = get_head("yolox").decode_args(Decoder(kind="yolox", strides=(8, 16)), input_hw=(32, 48))
    assert args == {"input_hw": (32, 48), "strides": (8, 16)}
    assert get_head("yolov8").decode_args(Decoder(kind="yolov8"), input_hw=(32, 48)) == {}
    assert get_head("logits").decode_args(
        Decoder(kind="logits", softmax=False), input_hw=(1, 1)
    ) == {"softmax": False}


def test_adding_a_layout_is_one_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heads_module, "_HEADS", dict(heads_module._HEADS))  # undone after

    @register_head("flat", "flat2")
    class FlatHead(YOLOv8Head):
        layout = "[B, 4+nc, N] (flat)"

    assert type(get_head("flat2")) is FlatHead and FlatHead.kinds == ("flat", "flat2")
    assert get_decoder("flat") is decode_yolov8 and "flat2" in DECODERS
    assert layouts_hint().endswith("; flat [B, 4+nc, N] (flat)")
