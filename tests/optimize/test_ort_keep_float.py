"""`--keep-float` with quantize_static: the layer kept in float reads a float input too.

The planted cause is the one found on YOLOX-Nano: a convolution whose output channels differ in
scale by three orders of magnitude, a SiLU (``Mul(x, Sigmoid(x))``), then a depthwise
convolution that reads each channel alone. A per-tensor activation scale rounds the small
channel to zero; ``nodes_to_exclude`` alone keeps the depthwise convolution's arithmetic in
float but not its input, so the channel stays erased.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ort = pytest.importorskip("onnxruntime")

from cvdeploy.optimize.ort_quant import (  # noqa: E402
    OrtQuantOptions,
    quantize_qdq,
    unquantize_inputs,
)

CH = 4
SMALL = 3  # the channel 1000x smaller than the others


def _model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 1, (CH, CH, 1, 1)).astype(np.float32)
    w1[SMALL] *= 0.001
    b1 = np.zeros(CH, np.float32)
    wdw = rng.normal(0, 1, (CH, 1, 3, 3)).astype(np.float32)
    bdw = np.zeros(CH, np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1"),
        helper.make_node("Sigmoid", ["c1"], ["s1"], name="sig1"),
        helper.make_node("Mul", ["c1", "s1"], ["a1"], name="silu1"),
        helper.make_node("Conv", ["a1", "wdw", "bdw"], ["y"], name="dw", group=CH, pads=[1] * 4),
    ]
    graph = helper.make_graph(
        nodes,
        "planted",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CH, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, CH, 8, 8])],
        [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(wdw, "wdw"),
            numpy_helper.from_array(bdw, "bdw"),
        ],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def _inputs(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 50, (1, CH, 8, 8)).astype(np.float32) for _ in range(n)]


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(s.run(None, {"x": x})[0])


def _small_channel_error(src: Path, q: Path) -> float:
    x = _inputs(1, 99)[0]
    f, g = _run(src, x)[0, SMALL], _run(q, x)[0, SMALL]
    return float(np.abs(f - g).mean() / np.abs(f).mean())


def _quantize(tmp_path: Path, name: str, **kw: tuple[str, ...]) -> Path:
    src = _model(tmp_path / "src.onnx")
    opts = OrtQuantOptions(**kw)
    return quantize_qdq(src, tmp_path / f"{name}.onnx", _inputs(16, 0), options=opts)


def _producers(path: Path) -> tuple[onnx.GraphProto, dict[str, onnx.NodeProto]]:
    g = onnx.load(str(path)).graph
    return g, {o: n for n in g.node for o in n.output}


def test_excluding_the_layer_alone_leaves_its_input_quantized(tmp_path: Path) -> None:
    q = _quantize(tmp_path, "excluded", exclude=("dw",))
    g, producer = _producers(q)
    dw = next(n for n in g.node if n.name == "dw")
    assert producer[dw.input[0]].op_type == "DequantizeLinear"  # the input is still Q/DQ
    assert _small_channel_error(tmp_path / "src.onnx", q) > 0.5  # the small channel is erased


def test_keep_float_makes_the_input_float_back_to_the_producing_layer(tmp_path: Path) -> None:
    q = _quantize(tmp_path, "kept", exclude=("dw",), float_inputs=("dw",))
    g, producer = _producers(q)
    by_name = {n.name: n for n in g.node}
    # the depthwise conv and the SiLU in front of it read float tensors...
    for name in ("dw", "silu1", "sig1"):
        for t in by_name[name].input:
            p = producer.get(t)
            assert (
                p is None or p.op_type != "DequantizeLinear" or p.input[0].endswith("_quantized")
            ), f"{name} still reads {t} through Q/DQ"
    assert by_name["silu1"].input[0] == "c1" and by_name["dw"].input[0] == "a1"
    # ...while the producing convolution stays quantized (its input and weights)
    assert producer[by_name["conv1"].input[0]].op_type == "DequantizeLinear"
    assert producer[by_name["conv1"].input[1]].op_type == "DequantizeLinear"
    # nothing left over: no Q/DQ nobody reads, no constant nobody uses
    read = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    assert all(any(o in read for o in n.output) for n in g.node)
    assert all(i.name in read for i in g.initializer)
    onnx.checker.check_model(onnx.load(str(q)))
    assert _small_channel_error(tmp_path / "src.onnx", q) < 0.05  # the channel survives


def test_unquantize_inputs_reports_the_freed_tensors_and_keeps_other_nodes(
    tmp_path: Path,
) -> None:
    q = _quantize(tmp_path, "plain")
    m = onnx.load(str(q))
    before = sum(n.op_type == "QuantizeLinear" for n in m.graph.node)
    freed = unquantize_inputs(m, ["dw"])
    assert set(freed) == {"a1", "c1", "s1"}
    after = sum(n.op_type == "QuantizeLinear" for n in m.graph.node)
    assert 0 < after < before  # conv1's input keeps its quantizer
    assert unquantize_inputs(m, ["no-such-node"]) == []


def test_the_record_says_the_inputs_are_float() -> None:
    assert "kept_float_inputs" in OrtQuantOptions(exclude=("a",), float_inputs=("a",)).record()
    assert "kept_float_inputs" not in OrtQuantOptions(exclude=("a",)).record()


@pytest.mark.parametrize("act", ["Relu", "Clip"])
def test_a_folded_relu_is_computed_in_float_in_front_of_a_kept_layer(
    tmp_path: Path, act: str
) -> None:
    """quantize_static drops a ReLU (or ReLU6 Clip) after a quantized conv and clamps through
    the Q/DQ range, giving the conv's raw output the ReLU's tensor name. Rewiring past that
    pair would drop the activation; the kept layer gets it back, in float, and the planted
    small channel survives."""
    rng = np.random.default_rng(1)
    w1 = rng.normal(0, 1, (CH, CH, 1, 1)).astype(np.float32)
    w1[SMALL] *= 1e-5
    b1 = np.full(CH, 0.5, np.float32)
    b1[SMALL] = 0.003  # positive and far under one step of the clamped range (6 / 255)
    wdw = rng.normal(0, 1, (CH, 1, 3, 3)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(wdw, "wdw"),
    ]
    bounds = []
    if act == "Clip":
        inits += [
            numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
            numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
        ]
        bounds = ["lo", "hi"]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1"),
        helper.make_node(act, ["c1", *bounds], ["r1"], name="act1"),
        helper.make_node("Conv", ["r1", "wdw"], ["y"], name="dw", group=CH, pads=[1] * 4),
    ]
    graph = helper.make_graph(
        nodes,
        "folded",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CH, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, CH, 8, 8])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    src = tmp_path / "folded.onnx"
    onnx.save(m, str(src))
    xs = [rng.uniform(-50, 50, (1, CH, 8, 8)).astype(np.float32) for _ in range(16)]

    def small_error(q: Path) -> float:
        s_f = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
        s_q = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])
        f = s_f.run(None, {"x": xs[0]})[0][0, SMALL]
        g = s_q.run(None, {"x": xs[0]})[0][0, SMALL]
        return float(np.abs(f - g).mean() / np.abs(f).mean())

    plain = quantize_qdq(src, tmp_path / "plain.onnx", xs, options=OrtQuantOptions(exclude=("dw",)))
    assert small_error(plain) > 0.5  # erased behind the per-tensor scale
    q = quantize_qdq(
        src,
        tmp_path / "kept.onnx",
        xs,
        options=OrtQuantOptions(exclude=("dw",), float_inputs=("dw",)),
    )
    g, producer = _producers(q)
    dw = next(n for n in g.node if n.name == "dw")
    restored = producer[dw.input[0]]
    assert restored.op_type == act and restored.name == "act1_float"
    assert producer[restored.input[0]].name == "conv1"  # the conv's raw output, in float
    onnx.checker.check_model(onnx.load(str(q)))
    assert small_error(q) < 0.05  # the activation still acts, and the channel survives
