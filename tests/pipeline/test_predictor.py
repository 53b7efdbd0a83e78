"""Predictor.run_batch: the one timed preprocess -> inference -> postprocess loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cvdeploy.errors import UsageError
from cvdeploy.pipeline.predictor import BatchRun, Predictor, Result, Thresholds
from cvdeploy.pipeline.results import Detections
from cvdeploy.runtime import create_runner
from cvdeploy.spec import IOSpec, ModelSpec, TensorSpec
from tests.tiny_models import IMGSZ, N_ANCHORS, NC, tiny_detector_onnx, tiny_spec_dict

IO = IOSpec(
    inputs=(TensorSpec(name="images", shape=(-1, 3, IMGSZ, IMGSZ)),),
    outputs=(TensorSpec(name="output0", shape=(-1, 4 + NC, N_ANCHORS)),),
)
LOOSE = Thresholds(conf=0.3, iou=0.9)
STRICT = Thresholds(conf=0.5, max_det=1)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_detector_onnx(tmp_path_factory.mktemp("predictor") / "m.onnx")


def _predictor(model: Path, **kw: object) -> Predictor:
    spec = ModelSpec.model_validate(tiny_spec_dict())
    return Predictor(spec=spec, runner=create_runner("onnx", model, IO), **kw)  # type: ignore[arg-type]


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 255, size=(40 + 8 * i, 72, 3), dtype=np.uint8) for i in range(n)]


def _same(xs: list[Result], ys: list[Result]) -> bool:
    """Whether two result lists hold identical detections, image by image."""
    assert len(xs) == len(ys)
    for a, b in zip(xs, ys, strict=True):
        assert isinstance(a, Detections) and isinstance(b, Detections)
        if not (
            np.array_equal(a.boxes, b.boxes)
            and np.array_equal(a.scores, b.scores)
            and np.array_equal(a.class_ids, b.class_ids)
        ):
            return False
    return True


def test_run_batch_results_times_and_outputs(model: Path) -> None:
    images = _images(3)
    with _predictor(model) as p:
        run = p.run_batch(images)
        kept = p.run_batch(images, keep_outputs=True)
        x, metas = p.preprocess(images)
        raw = p.infer(x)
        staged = p.postprocess(raw, metas)
        results, times = p.predict_batch(images)
    assert isinstance(run, BatchRun) and run.outputs is None
    assert len(run.results) == 3 and _same(run.results, staged)
    assert _same(results, staged)
    assert run.times.images == 3 and run.times.batches == 1
    assert min(run.times.preprocess, run.times.inference, run.times.postprocess) > 0
    assert kept.outputs is not None and len(kept.outputs) == 1
    np.testing.assert_array_equal(kept.outputs[0], raw[0])
    assert times.images == 3


def test_run_batch_thresholds_for_all_or_per_image(model: Path) -> None:
    images = _images(4)
    with _predictor(model, thresholds=LOOSE) as p:
        loose = p.run_batch(images).results
        strict = p.run_batch(images, thresholds=STRICT).results
        mixed = p.run_batch(images, thresholds=[STRICT, LOOSE, LOOSE, STRICT]).results
        same = p.run_batch(images, thresholds=[STRICT] * 4).results
        with pytest.raises(UsageError, match="3 thresholds given for a batch of 4 images"):
            p.run_batch(images, thresholds=[STRICT] * 3)
    assert all(len(a) > len(b) > 0 for a, b in zip(loose, strict, strict=True))  # they matter
    expected = [strict[0], loose[1], loose[2], strict[3]]
    assert _same(mixed, expected)
    assert _same(same, strict)
    assert p.thresholds == LOOSE  # per-call thresholds leave the predictor's alone


def test_run_batch_limits(model: Path) -> None:
    with _predictor(model, batch=2) as p:
        empty = p.run_batch([], keep_outputs=True)
        with pytest.raises(UsageError, match="batch of 3 images exceeds 2"):
            p.run_batch(_images(3))
    assert empty.results == [] and empty.outputs == [] and empty.times.images == 0


def test_check_outputs_runs_before_decoding(model: Path) -> None:
    seen: list[tuple[int, ...]] = []

    def check(outs: list[np.ndarray]) -> None:
        seen.append(outs[0].shape)
        raise RuntimeError("stop")

    with _predictor(model) as p, pytest.raises(RuntimeError, match="stop"):
        p.run_batch(_images(2), check_outputs=check)
    assert seen == [(2, 4 + NC, N_ANCHORS)]
