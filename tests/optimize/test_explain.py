"""The speed diagnosis names dynamic quantization, missing INT8 instructions, unfused Q/DQ."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cvdeploy.bundle import Bundle
from cvdeploy.cli.main import app
from cvdeploy.optimize import explain as explain_mod
from cvdeploy.optimize.explain import explain_artifact, onnx_op_stats
from cvdeploy.optimize.ort_quant import quantize_dynamic_model
from tests.optimize.conftest import make_bundle
from tests.tiny_models import tiny_detector_onnx


@pytest.fixture()
def dynamic_bundle(tmp_path: Path) -> Path:
    src = tiny_detector_onnx(tmp_path / "fp32.onnx")
    dyn = quantize_dynamic_model(src, tmp_path / "dyn.onnx")
    return make_bundle(tmp_path, extra_onnx={"onnx-int8-dynamic": (dyn, "int8-dynamic")})


def test_dynamic_model_ops(dynamic_bundle: Path) -> None:
    b = Bundle.load(dynamic_bundle)
    ops = onnx_op_stats(b.model_file("onnx-int8-dynamic"))
    assert ops["graph"].get("ConvInteger", 0) >= 1
    assert ops["dynamic_ops"] >= 1


def test_dynamic_quantization_is_diagnosed(
    dynamic_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(explain_mod, "TARGET_SPEEDUP", 1e9)  # always diagnose (no timing test)
    exp = explain_artifact(Bundle.load(dynamic_bundle))
    codes = {f.code for f in exp.findings}
    assert exp.artifact == "onnx-int8-dynamic" and exp.source == "onnx-fp32"
    assert "dynamic-quantization" in codes
    dyn = next(f for f in exp.findings if f.code == "dynamic-quantization")
    assert "cvdeploy quantize" in dyn.fix
    assert exp.speedup is not None and exp.latency["int8"].p50_ms > 0


@pytest.mark.parametrize(("flags", "expected"), [([], True), (["avx512_vnni"], False)])
def test_missing_int8_instructions(
    dynamic_bundle: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], expected: bool
) -> None:
    monkeypatch.setattr(explain_mod, "TARGET_SPEEDUP", 1e9)
    monkeypatch.setattr(
        explain_mod, "cpu_info", lambda: {"model": "test cpu", "flags": flags, "arch": "x86_64"}
    )
    exp = explain_artifact(Bundle.load(dynamic_bundle))
    assert ("no-int8-instructions" in {f.code for f in exp.findings}) is expected


def test_explain_refuses_a_float_artifact(dynamic_bundle: Path) -> None:
    from cvdeploy.errors import UsageError

    with pytest.raises(UsageError, match="not INT8"):
        explain_artifact(Bundle.load(dynamic_bundle), "onnx-fp32")


def test_cli_explain_json_and_missing_calib(dynamic_bundle: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["quantize", "--explain", str(dynamic_bundle), "--json"])
    assert res.exit_code == 0, res.output
    assert '"dynamic_ops"' in res.output
    res = runner.invoke(app, ["quantize", str(dynamic_bundle)])
    assert res.exit_code == 2
    assert "--calib" in res.output


@pytest.mark.realworld
@pytest.mark.slow
def test_ultralytics_dynamic_int8_is_explained(realworld: Path, tmp_path: Path) -> None:
    from cvdeploy.export.importer import import_model

    b, _ = import_model(realworld / "models" / "yolov8n_int8.onnx", out=tmp_path / "b")
    imgs = [realworld / "images" / "bus.jpg", realworld / "images" / "zidane.jpg"]
    exp = explain_artifact(b, images=imgs)
    assert exp.artifact == "onnx-int8-dynamic" and exp.source is None
    assert exp.ops["graph"].get("ConvInteger", 0) > 10
    assert "dynamic-quantization" in {f.code for f in exp.findings}


def _conv_silu_qdq(path: Path, *, quantize_conv_output: bool) -> Path:
    """x -> Q/DQ -> Conv (DQ int8 weight) -> [Q/DQ] -> SiLU (Sigmoid x Mul) -> y."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "s"),
        numpy_helper.from_array(np.array(128, np.uint8), "z"),
        numpy_helper.from_array(np.ones((4, 3, 3, 3), np.int8), "wq"),
        numpy_helper.from_array(np.full((4,), 0.01, np.float32), "ws"),
        numpy_helper.from_array(np.zeros((4,), np.int8), "wz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
        helper.make_node("Conv", ["xd", "w"], ["c"], pads=[1, 1, 1, 1]),
    ]
    act = "c"
    if quantize_conv_output:
        nodes += [
            helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"]),
            helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["cd"]),
        ]
        act = "cd"
    nodes += [
        helper.make_node("Sigmoid", [act], ["sg"]),
        helper.make_node("Mul", [act, "sg"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("quantized_output", [False, True])
def test_conv_output_left_in_float_is_diagnosed(tmp_path: Path, quantized_output: bool) -> None:
    """NNCF's placement (Q/DQ after the SiLU) leaves no QLinearConv for ONNX Runtime."""
    ops = onnx_op_stats(_conv_silu_qdq(tmp_path / "m.onnx", quantize_conv_output=quantized_output))
    assert ops["quantized_input_float_output"] == (0 if quantized_output else 1)
    assert (ops["optimized"].get("QLinearConv", 0) == 1) is quantized_output
    cpu = {"model": "test cpu", "flags": ["avx512_vnni"], "arch": "x86_64"}
    codes = {f.code: f for f in explain_mod._findings(cpu, ops, {}, 0.5)}
    assert ("output-not-quantized" in codes) is not quantized_output
    if not quantized_output:
        assert "Sigmoid" in codes["output-not-quantized"].message
        assert "output-not-quantized" in codes["unfused-qdq"].fix
