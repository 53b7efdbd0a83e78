"""The Runner contract for the formats added by the export targets: TFLite (NHWC) and TensorRT.

The tiny ONNX detector is converted once per session with the TFLite exporter itself; the
contract is the one of test_contract.py, with the input in the artifact's NHWC layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cvdeploy.bundle import Bundle
from cvdeploy.errors import BackendUnavailable, ModelLoadError, ShapeError, UsageError
from cvdeploy.runtime import RUNTIMES, RunnerOptions, create_runner
from cvdeploy.runtime.tensorrt import nvidia_gpu_count, tensorrt_unavailable
from cvdeploy.spec import IOSpec, TensorSpec
from tests.runtime.test_contract import _reference
from tests.tiny_models import IMGSZ, N_ANCHORS, NC

NHWC_DYN = IOSpec(
    inputs=(TensorSpec(name="images", shape=(-1, IMGSZ, IMGSZ, 3)),),
    outputs=(TensorSpec(name="output0", shape=(-1, 4 + NC, N_ANCHORS)),),
    layout="NHWC",
)
NHWC_FIXED = IOSpec(
    inputs=(TensorSpec(name="images", shape=(1, IMGSZ, IMGSZ, 3)),),
    outputs=NHWC_DYN.outputs,
    layout="NHWC",
)
needs_tflite = pytest.mark.skipif(
    not RUNTIMES.availability("tflite").available or not RUNTIMES.availability("onnx").available,
    reason="tflite runtime or exporter not installed",
)


@pytest.fixture(scope="session")
def tiny_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny detector (dynamic batch) converted by the TFLite exporter, once a session."""
    from cvdeploy.export import EXPORTERS, ExportOptions, export_model
    from tests.export.test_targets import _images, _ultra_onnx

    if not EXPORTERS.availability("tflite").available:
        pytest.skip(f"tflite exporter {EXPORTERS.availability('tflite').reason}")
    tmp = tmp_path_factory.mktemp("tflite")
    export_model(
        _ultra_onnx(tmp / "m.onnx", batch="batch"),
        formats=["tflite"],
        out=tmp / "b",
        data=_images(tmp / "imgs"),
        options=ExportOptions(dynamic=True),
    )
    return Bundle.load(tmp / "b").model_file("tflite-fp32")


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


@pytest.mark.slow
@needs_tflite
def test_tflite_runner_matches_reference(tiny_tflite: Path) -> None:
    x = np.random.default_rng(1).random((2, 3, IMGSZ, IMGSZ), dtype=np.float32)
    with create_runner("tflite", tiny_tflite, NHWC_DYN, options=RunnerOptions(threads=1)) as r:
        (out,) = r.run(_nhwc(x))
        (one,) = r.run(_nhwc(x[:1]))  # the batch changes: the input tensor is resized
        assert r.loaded
    assert not r.loaded
    np.testing.assert_allclose(out, _reference(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(one, out[:1], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@needs_tflite
def test_tflite_runner_refuses_wrong_inputs(tiny_tflite: Path) -> None:
    with create_runner("tflite", tiny_tflite, NHWC_FIXED) as r:
        with pytest.raises(ShapeError, match="fixed batch size"):
            r.run(np.zeros((2, IMGSZ, IMGSZ, 3), np.float32))
        with pytest.raises(ShapeError, match="4 dimensions"):
            r.run(np.zeros((IMGSZ, IMGSZ, 3), np.float32))
        with pytest.raises(ShapeError, match="takes float32"):
            r.run(np.zeros((1, IMGSZ, IMGSZ, 3), np.float64))
        with pytest.raises(ShapeError, match="shape"):
            r.run(np.zeros((1, 3, IMGSZ, IMGSZ), np.float32))  # NCHW into an NHWC model


@pytest.mark.slow
@needs_tflite
def test_tflite_runner_from_bytes_and_unknown_options(tiny_tflite: Path) -> None:
    x = np.random.default_rng(2).random((1, IMGSZ, IMGSZ, 3), dtype=np.float32)
    with create_runner(
        "tflite", Path("in-memory"), NHWC_DYN, model_bytes=tiny_tflite.read_bytes()
    ) as r:
        (out,) = r.run(x)
    assert out.shape == (1, 4 + NC, N_ANCHORS)
    with pytest.raises(UsageError, match="unknown"):
        create_runner(
            "tflite", tiny_tflite, NHWC_DYN, options=RunnerOptions(extra={"bogus": 1})
        ).load()


@needs_tflite
def test_tflite_missing_and_corrupted_model(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        create_runner("tflite", tmp_path / "absent.tflite", NHWC_DYN).load()
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"TFL3 garbage" * 10)
    with pytest.raises(ModelLoadError, match=r"bad\.tflite"):
        create_runner("tflite", bad, NHWC_DYN).load()


def test_gpu_detection_reads_driver_files(tmp_path: Path) -> None:
    proc, dev = tmp_path / "proc", tmp_path / "dev"
    dev.mkdir()
    assert nvidia_gpu_count(proc, dev) == 0
    (dev / "nvidia0").touch()
    (dev / "nvidiactl").touch()
    assert nvidia_gpu_count(proc, dev) == 1
    (proc / "0000:01:00.0").mkdir(parents=True)
    (proc / "0000:02:00.0").mkdir()
    assert nvidia_gpu_count(proc, dev) == 2


@pytest.mark.skipif(nvidia_gpu_count() > 0, reason="this machine has an NVIDIA GPU")
def test_tensorrt_runner_unavailable_without_gpu(tmp_path: Path) -> None:
    assert tensorrt_unavailable() == "needs an NVIDIA GPU with CUDA (found none)"
    av = RUNTIMES.availability("tensorrt")
    assert not av.available and "NVIDIA GPU" in str(av.reason)
    with pytest.raises(BackendUnavailable, match="NVIDIA GPU with CUDA"):
        create_runner("tensorrt", tmp_path / "m.engine", NHWC_DYN)


def test_onnxruntime_threads_can_be_told_not_to_spin() -> None:
    # a distillation teacher runs between torch steps: its idle threads must sleep
    from cvdeploy.runtime.onnxruntime import session_options

    with pytest.raises(RuntimeError):  # not set: ONNX Runtime's default (spinning)
        session_options(2, {}).get_session_config_entry("session.intra_op.allow_spinning")
    so = session_options(2, {"allow_spinning": False})
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
