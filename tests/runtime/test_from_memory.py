"""Runners load decrypted models from memory (bytes), with the same outputs as from a file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from cvdeploy.errors import ModelLoadError, UsageError
from cvdeploy.runtime import create_runner
from cvdeploy.runtime.base import Runner
from cvdeploy.spec import IOSpec, TensorSpec
from tests.tiny_models import IMGSZ, N_ANCHORS, NC, tiny_detector_onnx

IO = IOSpec(
    inputs=(TensorSpec(name="images", shape=(-1, 3, IMGSZ, IMGSZ)),),
    outputs=(TensorSpec(name="output0", shape=(-1, 4 + NC, N_ANCHORS)),),
)
X = np.random.default_rng(0).random((2, 3, IMGSZ, IMGSZ), dtype=np.float32)


def _missing(tmp: Path) -> Path:
    return tmp / "not-on-disk" / "model.onnx.enc"


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="no onnxruntime")
def test_onnxruntime_from_bytes(tmp_path: Path) -> None:
    f = tiny_detector_onnx(tmp_path / "m.onnx")
    with create_runner("onnx", f, IO) as r:
        want = r.run(X)
    with create_runner("onnx", _missing(tmp_path), IO, model_bytes=f.read_bytes()) as r:
        np.testing.assert_array_equal(r.run(X)[0], want[0])
    with pytest.raises(ModelLoadError, match=r"could not load model\.onnx\.enc"):
        create_runner("onnx", _missing(tmp_path), IO, model_bytes=b"garbage").load()


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="no openvino")
def test_openvino_ir_and_onnx_from_bytes(tmp_path: Path) -> None:
    import openvino as ov

    f = tiny_detector_onnx(tmp_path / "m.onnx")
    ov.save_model(ov.Core().read_model(str(f)), str(tmp_path / "m.xml"), compress_to_fp16=False)
    xml, weights = (tmp_path / "m.xml").read_bytes(), (tmp_path / "m.bin").read_bytes()
    with create_runner("openvino", tmp_path / "m.xml", IO) as r:
        want = r.run(X)
    missing = tmp_path / "gone" / "m.xml.enc"
    with create_runner("openvino", missing, IO, model_bytes=xml, weights_bytes=weights) as r:
        np.testing.assert_allclose(r.run(X)[0], want[0], rtol=1e-5, atol=1e-5)
    with create_runner("openvino", missing, IO, model_bytes=f.read_bytes()) as r:  # ONNX bytes
        np.testing.assert_allclose(r.run(X)[0], want[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ModelLoadError, match="OpenVINO could not load"):
        create_runner("openvino", missing, IO, model_bytes=xml, weights_bytes=b"\0" * 8).load()


def test_a_runner_without_memory_loading_refuses_bytes(tmp_path: Path) -> None:
    class FileOnly(Runner):
        format = "fileonly"

        def _load(self) -> None:
            return None

        def _run(self, x: np.ndarray) -> list[np.ndarray]:
            return [x]

    with pytest.raises(UsageError, match="cannot load a model from memory"):
        FileOnly(tmp_path / "m", IO, model_bytes=b"x")
    with pytest.raises(UsageError, match="cannot load a model from memory"):
        FileOnly(tmp_path / "m", IO, weights_bytes=b"x")
