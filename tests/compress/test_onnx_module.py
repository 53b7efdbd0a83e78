"""OnnxModule: an ONNX graph run as a trainable torch module (QAT of models without code)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from cvdeploy.compress.onnx_module import OnnxModule
from cvdeploy.errors import UsageError


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(arr, name)


def _tiny_detector_onnx(path: Path) -> Path:
    """A batch-1 graph with the operators of YOLOX-like detectors: a space-to-depth Slice,
    Conv + x*Sigmoid(x) (SiLU as exported), an asymmetric-padded strided Conv, MaxPool,
    Concat, nearest Resize, a Reshape to a leading 1 and a Transpose."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    nodes = [
        helper.make_node("Slice", ["images", "s0", "e0", "ax", "st"], ["s_a"]),
        helper.make_node("Slice", ["images", "s1", "e0", "ax", "st"], ["s_b"]),
        helper.make_node("Concat", ["s_a", "s_b"], ["focus"], axis=1),
        helper.make_node("Conv", ["focus", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c1"], ["sg1"]),
        helper.make_node("Mul", ["c1", "sg1"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], pads=[0, 0, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["a2"]),
        helper.make_node("MaxPool", ["a2"], ["mp"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["a2", "mp"], ["cat"], axis=1),
        helper.make_node("Resize", ["cat", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Conv", ["up", "w3"], ["c3"], group=2),
        helper.make_node("Reshape", ["c3", "shape"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["output"], perm=[0, 2, 1]),
    ]
    inits = [
        _init("s0", np.array([0, 0], np.int64)),
        _init("s1", np.array([1, 1], np.int64)),
        _init("e0", np.array([2**63 - 1, 2**63 - 1], np.int64)),
        _init("ax", np.array([2, 3], np.int64)),
        _init("st", np.array([2, 2], np.int64)),
        _init("w1", rng.normal(0, 0.3, (8, 6, 3, 3)).astype(f32)),
        _init("b1", rng.normal(0, 0.1, 8).astype(f32)),
        _init("w2", rng.normal(0, 0.3, (8, 8, 3, 3)).astype(f32)),
        _init("b2", rng.normal(0, 0.1, 8).astype(f32)),
        _init("scales", np.array([1, 1, 2, 2], f32)),
        _init("w3", rng.normal(0, 0.3, (4, 8, 1, 1)).astype(f32)),
        _init("shape", np.array([1, 4, -1], np.int64)),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 256, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    return _tiny_detector_onnx(tmp_path / "tiny.onnx")


def test_it_computes_what_onnx_runtime_computes_at_any_batch(tiny: Path) -> None:
    import onnxruntime as ort

    m = OnnxModule(tiny).eval()
    x = np.random.default_rng(1).uniform(0, 1, (3, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(str(tiny), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {"images": x[i : i + 1]})[0] for i in range(3)])
    with torch.no_grad():
        out = m(torch.from_numpy(x)).numpy()
    assert out.shape == ref.shape == (3, 16 * 16, 4)  # the batch-1 Reshape kept the batch
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-4)


def test_silu_is_one_node_and_convolutions_are_trainable_modules(tiny: Path) -> None:
    m = OnnxModule(tiny)
    ops = [n.op_type for n, _ in m._nodes]
    assert "SiLU" in ops and "Sigmoid" not in ops and "Mul" not in ops
    convs = [c for c in m.modules() if isinstance(c, torch.nn.Conv2d)]
    assert len(convs) == 3 and convs[2].groups == 2
    x = torch.rand(2, 3, 32, 32)
    m(x).square().mean().backward()
    assert all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in convs)
    w = m.first_conv_weight()
    assert w is convs[0].weight


def test_qat_quantizes_every_convolution_of_an_onnx_graph(tiny: Path, tmp_path: Path) -> None:
    """torchao's quantizer finds convolutions by module: all of them get Q/DQ inputs and
    weights (with functional convolutions it found none), and SiLU adds no quantizers."""
    from cvdeploy.compress.qdq import export_qdq_onnx, freeze_ranges, prepare_qat, qdq_structure

    p = prepare_qat(OnnxModule(tiny).eval(), torch.rand(2, 3, 32, 32), per_channel=True)
    with torch.no_grad():
        p(torch.rand(4, 3, 32, 32))
    freeze_ranges(p)
    out = tmp_path / "q.onnx"
    export_qdq_onnx(p, out, imgsz=32)
    st = qdq_structure(out)
    assert st["convs"] == st["convs_quantized"] == 3
    assert not st["decomposed"] and st["head_qdq"] == 0


def test_unsupported_operators_are_named(tmp_path: Path) -> None:
    node = helper.make_node("Erf", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    f = tmp_path / "erf.onnx"
    onnx.save(helper.make_model(graph), f)
    with pytest.raises(UsageError, match="Erf"):
        OnnxModule(f)


def test_a_file_that_is_not_onnx_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "model.onnx"
    f.write_bytes(b"not a model")
    with pytest.raises(UsageError, match="not a readable ONNX model"):
        OnnxModule(f)


def test_the_zoo_detectors_own_onnx_export_runs_as_torch(onnx_teacher: Path) -> None:
    """A real exported graph (Split, ReduceSum, Softmax of the DFL decoding) gives what ONNX
    Runtime gives."""
    import onnxruntime as ort

    from cvdeploy.bundle import Bundle

    b = Bundle.load(onnx_teacher)
    f = b.model_file(b.artifact("onnx-fp32"))
    x = np.random.default_rng(2).uniform(0, 1, (2, 3, 64, 64)).astype(np.float32)
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    ref = np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(2)])
    with torch.no_grad():
        out = OnnxModule(f).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_qat_of_a_model_that_exists_only_as_onnx(
    tmp_path: Path, onnx_teacher: Path, det64: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cvdeploy qat module:factory` where the factory wraps an ONNX file in OnnxModule: the
    Q/DQ export quantizes every convolution and the INT8 artifacts land in the bundle."""
    import yaml

    from cvdeploy.bundle import Bundle
    from cvdeploy.compress import QatOptions, qat_model

    b = Bundle.load(onnx_teacher)
    f = b.model_file(b.artifact("onnx-fp32"))
    (tmp_path / "onnx_factory.py").write_text(
        "from cvdeploy.compress import OnnxModule\n\n"
        f"def build():\n    return OnnxModule({str(f)!r})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(b.spec.model_dump(mode="json")))
    out = tmp_path / "q"
    rep = qat_model(
        "onnx_factory:build", det64.parent / "images" / "train", out, spec_file=spec,
        options=QatOptions(minutes=None, iters=4, calib_size=16, progress=False,
                           latency_rounds=1),
    )  # fmt: skip
    assert rep.training[0]["iterations"] == 4
    q = Bundle.load(out)
    for art_id in ("onnx-int8-ptq", "onnx-int8-qat"):
        st = q.artifact(art_id).produced_by.options["qdq"]
        assert st["convs_quantized"] == st["convs"] == 63 and st["head_qdq"] == 0
