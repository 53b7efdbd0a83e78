"""The Runner contract, run against every registered backend on the same tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cvdeploy.errors import ModelLoadError, ShapeError, UsageError
from cvdeploy.runtime import RUNTIMES, RunnerOptions, create_runner
from cvdeploy.spec import IOSpec, TensorSpec
from tests.tiny_models import IMGSZ, N_ANCHORS, NC, tiny_detector_onnx

DYN = IOSpec(
    inputs=(TensorSpec(name="images", shape=(-1, 3, IMGSZ, IMGSZ)),),
    outputs=(TensorSpec(name="output0", shape=(-1, 4 + NC, N_ANCHORS)),),
)
FIXED = IOSpec(inputs=(TensorSpec(name="images", shape=(1, 3, IMGSZ, IMGSZ)),), outputs=DYN.outputs)


def _model_for(fmt: str, tmp: Path) -> Path:
    if fmt in ("onnx", "openvino"):  # OpenVINO reads the ONNX file directly
        return tiny_detector_onnx(tmp / "tiny.onnx")
    if fmt == "torch":
        from cvdeploy.runtime.torch import save_checkpoint
        from tests.tiny_models import tiny_detector_torch

        m = tiny_detector_torch()
        p = tmp / "model.pt"
        save_checkpoint(
            p,
            builder="factory:tests.tiny_models:tiny_detector_torch",
            num_classes=NC,
            state_dict=m.state_dict(),
        )
        return p
    pytest.skip(f"no contract fixture for format {fmt}")


def _reference(x: np.ndarray) -> np.ndarray:
    from tests.tiny_models import conv_weights

    w, b = conv_weights(0)
    n = x.shape[0]
    patches = x.reshape(n, 3, IMGSZ // 8, 8, IMGSZ // 8, 8).transpose(0, 2, 4, 1, 3, 5)
    out = np.einsum("nhwcij,kcij->nkhw", patches, w) + b[None, :, None, None]
    out = out.reshape(n, 4 + NC, -1)
    out[:, 4:] = 1 / (1 + np.exp(-out[:, 4:]))
    return out


# NCHW backends; the NHWC TFLite runner runs the same contract in test_contract_extra.py.
AVAILABLE = [a.name for a in RUNTIMES.list() if a.available and a.name != "tflite"]


@pytest.mark.parametrize("fmt", AVAILABLE)
def test_runner_matches_reference(fmt: str, tmp_path: Path) -> None:
    path = _model_for(fmt, tmp_path)
    x = np.random.default_rng(1).random((2, 3, IMGSZ, IMGSZ), dtype=np.float32)
    with create_runner(fmt, path, DYN, options=RunnerOptions(threads=1)) as r:
        (out,) = r.run(x)
        assert r.loaded
    assert not r.loaded
    np.testing.assert_allclose(out, _reference(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", AVAILABLE)
def test_runner_refuses_wrong_inputs(fmt: str, tmp_path: Path) -> None:
    path = _model_for(fmt, tmp_path)
    with create_runner(fmt, path, FIXED) as r:
        with pytest.raises(ShapeError, match="fixed batch size"):
            r.run(np.zeros((2, 3, IMGSZ, IMGSZ), np.float32))
        with pytest.raises(ShapeError, match="4 dimensions"):
            r.run(np.zeros((3, IMGSZ, IMGSZ), np.float32))
        with pytest.raises(ShapeError, match="takes float32"):
            r.run(np.zeros((1, 3, IMGSZ, IMGSZ), np.float64))


@pytest.mark.parametrize("fmt", AVAILABLE)
def test_runner_missing_and_corrupted_model(fmt: str, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError):
        create_runner(fmt, tmp_path / "absent.bin", DYN).load()
    bad = tmp_path / ("bad.pt" if fmt == "torch" else "bad.onnx")
    bad.write_bytes(b"\x08\x01garbage" * 10)
    with pytest.raises(ModelLoadError):
        create_runner(fmt, bad, DYN).load()


@pytest.mark.parametrize("fmt", AVAILABLE)
def test_runner_rejects_unknown_options(fmt: str, tmp_path: Path) -> None:
    path = _model_for(fmt, tmp_path)
    with pytest.raises(UsageError, match="unknown"):
        create_runner(fmt, path, DYN, options=RunnerOptions(extra={"bogus": 1})).load()


def test_threads_must_be_positive() -> None:
    with pytest.raises(UsageError):
        RunnerOptions(threads=0)
