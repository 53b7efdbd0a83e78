"""Every runner computes an artifact at its recorded precision, on every CPU, or refuses.

The bf16/FP16 paths are forced explicitly where this CPU has them natively and must be
refused where it does not (``plain_cpu`` simulates an AVX2-only EPYC on any machine).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cvdeploy.environment import cpu_info as real_cpu_info
from cvdeploy.errors import BackendUnavailable, UsageError
from cvdeploy.precision import native_precisions
from cvdeploy.runtime import RUNTIMES, RunnerOptions, create_runner
from tests.cpu import native
from tests.runtime.test_contract import AVAILABLE, DYN, _model_for, _reference

HAS_OV = RUNTIMES.availability("openvino").available
REAL_NATIVE = native_precisions(real_cpu_info()["flags"])
X = np.random.default_rng(3).random((1, 3, 64, 64), dtype=np.float32)


@pytest.mark.parametrize("fmt", AVAILABLE)
def test_default_is_fp32_recorded_and_exact(fmt: str, tmp_path: Path) -> None:
    with create_runner(fmt, _model_for(fmt, tmp_path), DYN) as r:
        (out,) = r.run(X)
        assert r.effective_precision == "f32"
        assert r.describe()["inference_precision"] == "f32"
    assert r.describe()["inference_precision"] == "f32"  # still known after close
    np.testing.assert_allclose(out, _reference(X), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", [f for f in AVAILABLE if f != "openvino"])
def test_fp32_only_runtimes_refuse_reduced_compute(fmt: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="computes in f32 only"):
        create_runner(fmt, _model_for(fmt, tmp_path), DYN, inference_precision="bf16")
    with pytest.raises(UsageError, match="unknown inference precision"):
        create_runner(fmt, _model_for(fmt, tmp_path), DYN, inference_precision="fp8")


@pytest.mark.skipif(not HAS_OV, reason="openvino is not installed")
def test_openvino_is_pinned_where_it_would_pick_bf16(tmp_path: Path) -> None:
    """OpenVINO's own default is bf16 exactly on CPUs with native bf16; the runner pins f32."""
    import openvino as ov

    from cvdeploy.runtime.openvino import type_name

    default = type_name(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))
    if "bf16" in REAL_NATIVE:
        assert default == "bf16"  # what an FP32 artifact silently ran at before the pin
    else:
        assert default in ("f32", "f16")  # f16 on ARM
    with create_runner("openvino", _model_for("openvino", tmp_path), DYN) as r:
        got = type_name(r.compiled.get_property("INFERENCE_PRECISION_HINT"))  # type: ignore[attr-defined]
        assert got == "f32" == r.effective_precision


@pytest.mark.skipif(not HAS_OV, reason="openvino is not installed")
@pytest.mark.parametrize("prec", ["bf16", "f16"])
def test_openvino_reduced_precision_is_explicit(prec: str, tmp_path: Path) -> None:
    path = _model_for("openvino", tmp_path)
    ways = [
        {"inference_precision": prec},  # the artifact's recorded precision
        {"options": RunnerOptions(extra={"INFERENCE_PRECISION_HINT": prec})},  # explicit option
    ]
    for kw in ways:
        r = create_runner("openvino", path, DYN, **kw)  # type: ignore[arg-type]
        if prec not in native():
            with pytest.raises(BackendUnavailable, match="no native") as exc:
                r.load()
            assert exc.value.exit_code == 2
            continue
        with r:
            (out,) = r.run(X)
            assert r.effective_precision == prec
            assert r.describe()["inference_precision"] == prec
        ref = _reference(X)
        # reduced, not exact: the answer moves (and stays close)
        assert not np.allclose(out, ref, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(out, ref, rtol=0.05, atol=0.05)


@pytest.mark.skipif(not HAS_OV, reason="openvino is not installed")
def test_openvino_reduced_precision_refused_on_a_plain_cpu(tmp_path: Path, plain_cpu: None) -> None:
    path = _model_for("openvino", tmp_path)
    for prec, name in (("bf16", "bf16"), ("f16", "FP16")):
        with pytest.raises(BackendUnavailable, match=f"no native {name} arithmetic"):
            create_runner("openvino", path, DYN, inference_precision=prec).load()
    with create_runner("openvino", path, DYN) as r:  # FP32 runs everywhere
        assert r.effective_precision == "f32"


def test_onnxruntime_pins_fp32_gemms() -> None:
    from cvdeploy.runtime.onnxruntime import session_options

    so = session_options(None, {})
    assert so.get_session_config_entry("mlas.enable_gemm_fastmath_arm64_bfloat16") == "0"


@pytest.mark.skipif(not RUNTIMES.availability("torch").available, reason="no torch")
def test_torch_runs_fp32_under_autocast_and_refuses_reduced_settings(tmp_path: Path) -> None:
    import torch

    path = _model_for("torch", tmp_path)
    with create_runner("torch", path, DYN) as r, torch.autocast("cpu", dtype=torch.bfloat16):
        (out,) = r.run(X)  # the caller's autocast does not reach the model
    np.testing.assert_allclose(out, _reference(X), rtol=1e-4, atol=1e-4)
    before = torch.backends.mkldnn.conv.fp32_precision
    try:
        torch.backends.mkldnn.conv.fp32_precision = "bf16"
        with pytest.raises(UsageError, match=r"mkldnn\.conv\.fp32_precision='bf16'"):
            create_runner("torch", path, DYN).load()
    finally:
        torch.backends.mkldnn.conv.fp32_precision = before
    before_mm = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        with pytest.raises(UsageError, match="set_float32_matmul_precision"):
            create_runner("torch", path, DYN).load()
    finally:
        torch.set_float32_matmul_precision(before_mm)


@pytest.mark.slow
@pytest.mark.skipif(not RUNTIMES.availability("tflite").available, reason="no LiteRT")
def test_tflite_fp16_weights_compute_in_fp32(tmp_path: Path) -> None:
    """XNNPACK widens FP16 weights to FP32 on this CPU: 1 + 1e-4 survives (it would round to
    1 in FP16 arithmetic), so a tflite-fp16 artifact records f32 compute truthfully."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    inp = tf.keras.Input((4, 4, 1), batch_size=1)
    conv = tf.keras.layers.Conv2D(1, 1, use_bias=True)
    model = tf.keras.Model(inp, conv(inp))
    conv.set_weights([np.ones((1, 1, 1, 1), np.float32), np.array([1e-4], np.float32)])
    conv_ = tf.lite.TFLiteConverter.from_keras_model(model)
    conv_.optimizations = [tf.lite.Optimize.DEFAULT]
    conv_.target_spec.supported_types = [tf.float16]
    path = tmp_path / "m.tflite"
    path.write_bytes(conv_.convert())
    from cvdeploy.spec import IOSpec, TensorSpec

    io = IOSpec(
        inputs=(TensorSpec(name="x", shape=(1, 4, 4, 1)),),
        outputs=(TensorSpec(name="y", shape=(1, 4, 4, 1)),),
        layout="NHWC",
    )
    with create_runner("tflite", path, io) as r:
        (out,) = r.run(np.ones((1, 4, 4, 1), np.float32))
        assert r.effective_precision == "f32"
    assert abs(float(out.ravel()[0]) - 1.0001) < 2e-5
