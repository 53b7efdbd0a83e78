"""The decoding arithmetic of the head is found by graph analysis and kept in float."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cvdeploy.optimize.ort_quant import float_head_nodes, name_nodes
from tests.tiny_models import tiny_detector_onnx


def test_tiny_detector_head(tmp_path: Path) -> None:
    model = name_nodes(onnx.load(str(tiny_detector_onnx(tmp_path / "m.onnx"))))
    head = float_head_nodes(model)
    ops = {n.name: n.op_type for n in model.graph.node}
    assert sorted(ops[h] for h in head) == ["Concat", "Reshape", "Sigmoid", "Slice", "Slice"]
    assert not any(ops[h] == "Conv" for h in head)


def _dfl_model() -> onnx.ModelProto:
    """Feature conv -> reshape -> softmax -> DFL conv (fixed 1x1) -> reshape -> mul -> output."""
    w = np.ones((4, 16, 1, 1), dtype=np.float32)
    dfl = np.arange(16, dtype=np.float32).reshape(1, 16, 1, 1)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["f"], name="head_conv"),
        helper.make_node("Reshape", ["f", "s1"], ["r"], name="r1"),
        helper.make_node("Softmax", ["r"], ["p"], axis=1, name="softmax"),
        helper.make_node("Conv", ["p", "dfl"], ["d"], name="dfl_conv"),
        helper.make_node("Reshape", ["d", "s2"], ["e"], name="r2"),
        helper.make_node("Mul", ["e", "stride"], ["out"], name="mul_stride"),
    ]
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(dfl, "dfl"),
        numpy_helper.from_array(np.array([1, 16, 4, 4], dtype=np.int64), "s1"),
        numpy_helper.from_array(np.array([1, 4], dtype=np.int64), "s2"),
        numpy_helper.from_array(np.array([8.0], dtype=np.float32), "stride"),
    ]
    g = helper.make_graph(
        nodes,
        "dfl",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 2, 2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_dfl_conv_is_part_of_the_decoder() -> None:
    head = float_head_nodes(_dfl_model())
    assert head == ["r1", "softmax", "dfl_conv", "r2", "mul_stride"]


def test_openvino_head_ops(tmp_path: Path) -> None:
    ov = pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from cvdeploy.optimize.nncf_quant import float_head_ops

    model = ov.convert_model(str(tiny_detector_onnx(tmp_path / "m.onnx")))
    head = float_head_ops(model)
    kinds = {op.get_friendly_name(): op.get_type_name() for op in model.get_ordered_ops()}
    assert head, "no head ops found"
    assert {kinds[h] for h in head} >= {"Sigmoid", "Concat"}
    assert not any(kinds[h] == "Convolution" for h in head)


@pytest.mark.realworld
def test_yolox_nano_head(realworld: Path, tmp_path: Path) -> None:
    from cvdeploy.optimize.ort_quant import pre_process

    model = pre_process(realworld / "models" / "yolox_nano.onnx", tmp_path / "pre.onnx")
    head = float_head_nodes(model)
    ops = {n.name: n.op_type for n in model.graph.node}
    kinds = [ops[h] for h in head]
    # three levels: obj and cls sigmoids, their concat with the box regression, then flattening
    assert kinds.count("Sigmoid") == 6
    assert "Transpose" in kinds and "Conv" not in kinds
