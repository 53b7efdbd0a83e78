"""The integrity gate must refuse what diverges, naming the output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cvdeploy.errors import CheckFailed
from cvdeploy.pipeline.predictor import Predictor
from cvdeploy.runtime import create_runner
from cvdeploy.runtime.torch import save_checkpoint
from cvdeploy.spec import IOSpec, ModelSpec, TensorSpec
from cvdeploy.verify.parity import SCORING_MIN, check_parity, tolerance_for
from tests.tiny_models import (
    IMGSZ,
    N_ANCHORS,
    NC,
    tiny_detector_onnx,
    tiny_detector_torch,
    tiny_spec_dict,
)

IO = IOSpec(
    inputs=(TensorSpec(name="images", shape=(-1, 3, IMGSZ, IMGSZ)),),
    outputs=(TensorSpec(name="output0", shape=(-1, 4 + NC, N_ANCHORS)),),
)


def _images(n: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, size=(48 + 8 * i, 80, 3), dtype=np.uint8) for i in range(n)]


def _torch_predictor(tmp: Path, spec: ModelSpec) -> Predictor:
    p = tmp / "model.pt"
    save_checkpoint(
        p,
        builder="factory:tests.tiny_models:tiny_detector_torch",
        num_classes=NC,
        state_dict=tiny_detector_torch().state_dict(),
    )
    return Predictor(spec=spec, runner=create_runner("torch", p, IO), artifact_id="torch-fp32")


def _onnx_predictor(path: Path, spec: ModelSpec) -> Predictor:
    return Predictor(spec=spec, runner=create_runner("onnx", path, IO), artifact_id="onnx-fp32")


def test_equal_models_pass(tmp_path: Path) -> None:
    spec = ModelSpec.model_validate(tiny_spec_dict())
    src = _torch_predictor(tmp_path, spec)
    cand = _onnx_predictor(tiny_detector_onnx(tmp_path / "m.onnx"), spec)
    with src, cand:
        res = check_parity(src, cand, _images(), precision="fp32")
    assert res.passed, res.failures
    assert res.outputs[0].cosine > 0.99999
    assert res.match_fraction == 1.0
    check = res.to_check(source="torch-fp32")
    assert check.kind == "parity" and check.passed
    assert check.data["tolerance"]["cosine_min"] == tolerance_for("fp32").cosine_min


def test_perturbed_weight_is_refused(tmp_path: Path) -> None:
    spec = ModelSpec.model_validate(tiny_spec_dict())
    path = tiny_detector_onnx(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.name == "w":
            w = numpy_helper.to_array(init).copy()
            w[0, 0, 0, 0] += 3.0  # one weight changed
            init.CopyFrom(numpy_helper.from_array(w, "w"))
    onnx.save(model, str(path))
    src = _torch_predictor(tmp_path, spec)
    cand = _onnx_predictor(path, spec)
    with src, cand:
        res = check_parity(src, cand, _images(), precision="fp32")
    assert not res.passed
    assert any("output 'output0' diverged" in f for f in res.failures), res.failures


def test_wrong_preprocessing_spec_is_refused(tmp_path: Path) -> None:
    good = ModelSpec.model_validate(tiny_spec_dict())
    d = tiny_spec_dict()
    d["preprocess"]["color"] = "bgr"  # the candidate was recorded with the wrong colour order
    wrong = ModelSpec.model_validate(d)
    src = _torch_predictor(tmp_path, good)
    cand = _onnx_predictor(tiny_detector_onnx(tmp_path / "m.onnx"), wrong)
    with src, cand:
        res = check_parity(src, cand, _images(), precision="fp32")
    assert not res.passed
    assert any("'output0'" in f for f in res.failures), res.failures


def test_fp16_tolerance_is_looser() -> None:
    assert tolerance_for("fp16").cosine_min < tolerance_for("fp32").cosine_min
    assert tolerance_for("int8-dynamic") == tolerance_for("int8")
    with pytest.raises(Exception, match="no parity tolerance"):
        tolerance_for("fp8")


class _HalfEmpty(Predictor):
    """The tiny model with the class scores of every other anchor scaled down below the
    gate's scoring threshold (the tiny model's random weights score every anchor about 0.5);
    as a candidate, its box rows are also shifted on one group of anchors: the empty ones
    (harmless: never decoded) or the scoring ones."""

    noise: str | None = None

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        out = Predictor.infer(self, x)[0].copy()
        out[:, 4:, 1::2] *= 0.01
        if self.noise is not None:
            best = out[:, 4:, :].max(axis=1)  # (B, N)
            group = best >= SCORING_MIN if self.noise == "scoring" else best < SCORING_MIN
            rng = np.random.default_rng(1)
            shift = rng.uniform(20, 60, size=(4, out.shape[2])).astype(np.float32)
            out[:, :4, :] += shift[None] * group[:, None, :]
        return [out]


def _noisy_pair(tmp: Path, spec: ModelSpec, *, noise: str) -> tuple[Predictor, Predictor]:
    _torch_predictor(tmp, spec)  # writes model.pt
    src = _HalfEmpty(
        spec=spec, runner=create_runner("torch", tmp / "model.pt", IO), artifact_id="s"
    )
    cand = _HalfEmpty(
        spec=spec, runner=create_runner("torch", tmp / "model.pt", IO), artifact_id="c"
    )
    cand.noise = noise
    return src, cand


def test_empty_anchors_do_not_decide_the_int8_gate(tmp_path: Path) -> None:
    spec = ModelSpec.model_validate(tiny_spec_dict())
    src, cand = _noisy_pair(tmp_path, spec, noise="empty")
    with src, cand:
        res = check_parity(src, cand, _images(), precision="int8")
        strict = check_parity(src, cand, _images(), precision="fp32")
    out = res.outputs[0]
    assert 0 < out.n_scoring < N_ANCHORS * len(_images())
    assert out.cosine < tolerance_for("int8").cosine_min  # all anchors: would have failed
    assert out.cosine_scoring == pytest.approx(1.0)
    assert res.passed, res.failures
    # at fp32 every anchor must agree as well
    assert not strict.passed
    assert any("over all anchors" in f for f in strict.failures), strict.failures


def test_diverging_scoring_anchors_fail_the_int8_gate(tmp_path: Path) -> None:
    spec = ModelSpec.model_validate(tiny_spec_dict())
    src, cand = _noisy_pair(tmp_path, spec, noise="scoring")
    with src, cand:
        res = check_parity(src, cand, _images(), precision="int8")
    assert not res.passed
    assert any("scoring anchors" in f for f in res.failures), res.failures


class _ThreeRows(Predictor):
    """A candidate whose output lost rows: its decoder could not even read it."""

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        return [Predictor.infer(self, x)[0][:, :3, :]]


def test_a_different_output_shape_fails_the_gate_before_decoding(tmp_path: Path) -> None:
    spec = ModelSpec.model_validate(tiny_spec_dict())
    src = _onnx_predictor(tiny_detector_onnx(tmp_path / "m.onnx"), spec)
    cand = _ThreeRows(spec=spec, runner=create_runner("onnx", tmp_path / "m.onnx", IO))
    with src, cand, pytest.raises(CheckFailed, match=r"shape \[1, 3, 64\] differs from"):
        check_parity(src, cand, _images(1), precision="fp32")


class _Shifted(Predictor):
    """Every box moved right by a tenth of its width: IoU (1 - 0.1) / (1 + 0.1) = 0.82 with
    the source's box, the size of the shifts INT8 makes on real models."""

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        out = Predictor.infer(self, x)[0].copy()
        out[:, 0, :] += 0.1 * out[:, 2, :]
        return [out]


def test_int8_matches_boxes_at_iou_075_and_the_other_precisions_at_09(tmp_path: Path) -> None:
    assert tolerance_for("int8").match_iou == 0.75
    assert {tolerance_for(p).match_iou for p in ("fp32", "fp16", "bf16")} == {0.9}
    spec = ModelSpec.model_validate(tiny_spec_dict())
    path = tiny_detector_onnx(tmp_path / "m.onnx")
    src = _onnx_predictor(path, spec)
    cand = _Shifted(spec=spec, runner=create_runner("onnx", path, IO), artifact_id="c")
    with src, cand:
        int8 = check_parity(src, cand, _images(), precision="int8")
        bf16 = check_parity(src, cand, _images(), precision="bf16")
    assert int8.n_source > 0
    assert int8.match_fraction == 1.0 and int8.passed, int8.failures
    assert int8.to_check(source="s").data["tolerance"]["match_iou"] == 0.75  # recorded
    assert bf16.match_fraction == 0.0 and not bf16.passed
    assert any("agree (0 of" in f and "at IoU 0.9;" in f for f in bf16.failures), bf16.failures


def test_match_detections_is_one_to_one_best_source_first_and_same_class() -> None:
    from cvdeploy.pipeline.results import Detections
    from cvdeploy.verify import match_detections

    box = [10.0, 10.0, 30.0, 30.0]
    src = Detections(
        boxes=np.array([box, box], np.float32),
        scores=np.array([0.5, 0.9], np.float32),
        class_ids=np.array([0, 0]),
    )
    cand = Detections(
        boxes=np.array([[12.0, 10.0, 32.0, 30.0]], np.float32),  # IoU 18/22 = 0.818
        scores=np.array([0.8], np.float32),
        class_ids=np.array([0]),
    )
    pairs = match_detections(src, cand, 0.75)
    assert [(i, j) for i, j, _ in pairs] == [(1, 0)]  # the 0.9 source box takes it
    assert pairs[0][2] == pytest.approx(18 / 22)
    assert match_detections(src, cand, 0.9) == []
    other = Detections(boxes=cand.boxes, scores=cand.scores, class_ids=np.array([1]))
    assert match_detections(src, other, 0.5) == []
