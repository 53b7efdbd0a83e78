"""Layer-wise localisation: taps, isolated errors, the first jump, keep-float suggestions."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cvdeploy.bundle import Bundle
from cvdeploy.diagnose import TappedModel, compare_layers, float_source
from cvdeploy.errors import UsageError
from tests.diagnose.conftest import add_onnx_artifact, conv_stack_onnx, conv_stack_weights


def _images(root: Path, n: int = 4) -> list[np.ndarray]:
    return [cv2.imread(str(p)) for p in sorted((root / "images").glob("*.jpg"))[:n]]


def test_taps_expose_every_compute_layer_with_its_inputs(stack: Path) -> None:
    tm = TappedModel(Bundle.load(stack), "onnx-fp32")
    assert [p.key for p in tm.points] == ["conv1", "conv2", "conv3"]
    assert [p.inputs for p in tm.points] == [(), ("conv1",), ("conv2",)]
    x = np.zeros((1, 3, 64, 64), np.float32)
    with tm:
        outs, taps = tm.run_all(x)
    assert outs[0].shape == (1, 7, 256) and taps["conv2"].shape == (1, 8, 16, 16)


@pytest.mark.parametrize("layer", ["conv1", "conv2", "conv3"])
def test_perturbed_weights_are_localised_to_their_layer(
    stack: Path, stack_root: Path, tmp_path: Path, layer: str
) -> None:
    w = conv_stack_weights()
    key = {"conv1": "w1", "conv2": "w2", "conv3": "w3"}[layer]
    w[key] = w[key] * 1.3 + np.random.default_rng(5).normal(0, 0.05, w[key].shape).astype(
        np.float32
    )
    add_onnx_artifact(
        stack,
        "onnx-bad",
        conv_stack_onnx(tmp_path / "bad.onnx", weights=w),
        precision="fp32",
        source="onnx-fp32",
    )
    rep = compare_layers(Bundle.load(stack), "onnx-bad", _images(stack_root))
    assert rep.source == "onnx-fp32" and rep.first_jump == layer
    st = rep.layer(layer)
    assert st is not None and st.local_db < 40
    for other in rep.layers:
        if other.layer != layer:
            assert other.local_db > 100  # fed the float activations, the others are exact
    assert not rep.keep_float  # an fp32 artifact: nothing to keep in float


def _qdq(src: Path, dst: Path, images: list[np.ndarray]) -> Path:
    """A Q/DQ INT8 copy of the model (ONNX Runtime quantize_static, per-channel)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(
                [
                    {
                        "images": (
                            cv2.resize(im, (64, 64))[None].transpose(0, 3, 1, 2) / 255
                        ).astype(np.float32)
                    }
                    for im in images
                ]
            )

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.it, None)

    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        nodes_to_exclude=["sigmoid", "concat", "slice_box", "slice_cls", "reshape", "grid_add"],
    )
    return dst


def test_an_int8_artifact_with_one_perturbed_scale_is_localised(
    stack: Path, stack_root: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime.quantization")
    imgs = _images(stack_root, 8)
    q = _qdq(stack_root / "stack.onnx", tmp_path / "q.onnx", imgs)
    add_onnx_artifact(stack, "onnx-int8", q, precision="int8", source="onnx-fp32")
    clean = compare_layers(Bundle.load(stack), "onnx-int8", imgs[:4])
    assert clean.first_jump is None, [(s.layer, s.local_db) for s in clean.layers]
    assert clean.keep_float and set(clean.keep_float) <= {"conv1", "conv2", "conv3"}
    # the activation scale feeding conv2 made 12x too small: its input is clipped
    m = onnx.load(str(q))
    node = next(n for n in m.graph.node if n.op_type == "Conv" and n.name == "conv2")
    dq = next(n for n in m.graph.node if n.output[0] == node.input[0])
    qn = next(n for n in m.graph.node if n.output[0] == dq.input[0])
    for name in {dq.input[1], qn.input[1]}:
        init = next(i for i in m.graph.initializer if i.name == name)
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) / 12, name))
    onnx.save(m, str(tmp_path / "q_bad.onnx"))
    add_onnx_artifact(
        stack, "onnx-int8-bad", tmp_path / "q_bad.onnx", precision="int8", source="onnx-fp32"
    )
    rep = compare_layers(Bundle.load(stack), "onnx-int8-bad", imgs[:4])
    assert rep.first_jump == "conv2", [(s.layer, s.local_db) for s in rep.layers]
    assert rep.keep_float[0] == "conv2"


def _branched(root: Path, imgs: list[np.ndarray]) -> tuple[Path, Path]:
    """A bundle of the branched stack (conv1's activation read by conv2 and conv2b) and a
    Q/DQ INT8 copy of its model."""
    from cvdeploy.export import ImportOverrides, import_model
    from tests.diagnose.conftest import IMGSZ, NAMES

    src = conv_stack_onnx(root / "branched.onnx", branch=True)
    bundle = root / "bundle"
    import_model(
        src,
        out=bundle,
        overrides=ImportOverrides(decoder="yolov8", names=NAMES, imgsz=(IMGSZ, IMGSZ)),
    )
    return bundle, _qdq(src, root / "q.onnx", imgs)


def _scale(m: onnx.ModelProto, names: set[str], factor: float) -> None:
    for name in names:
        init = next(i for i in m.graph.initializer if i.name == name)
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * factor, name))


def test_a_perturbed_quantizer_shared_by_two_layers_is_named_with_both(
    stack_root: Path, tmp_path: Path
) -> None:
    """The zoo detector's miss: one FakeQuantize fed three convolutions, the benchmark scaled
    it "in front of" the last, and the report named the first. A quantizer's fault shows in
    every layer reading it: the report names the quantizer and all of them."""
    pytest.importorskip("onnxruntime.quantization")
    imgs = _images(stack_root, 8)
    bundle, q = _branched(tmp_path, imgs)
    m = onnx.load(str(q))
    convs = {n.name: n for n in m.graph.node if n.op_type == "Conv"}
    producer = {o: n for n in m.graph.node for o in n.output}
    dq = {k: producer[convs[k].input[0]] for k in ("conv2", "conv2b")}
    qn = {k: producer[d.input[0]] for k, d in dq.items()}
    assert qn["conv2"].name == qn["conv2b"].name  # one quantizer, two readers
    add_onnx_artifact(bundle, "onnx-int8", q, precision="int8", source="onnx-fp32")
    clean = compare_layers(Bundle.load(bundle), "onnx-int8", imgs[:4], attribute=0)
    assert clean.first_jump is None and clean.jump_layers == [], [
        (s.layer, s.local_db) for s in clean.layers
    ]
    assert {s.layer: s.quantizer for s in clean.layers}["conv2b"] == qn["conv2"].name
    # its scale made 12x too small "in front of conv2b": conv2 reads the same clipped tensor
    bad = onnx.load(str(q))
    _scale(bad, {dq["conv2b"].input[1], qn["conv2b"].input[1]}, 1 / 12)
    onnx.save(bad, str(tmp_path / "q_act.onnx"))
    add_onnx_artifact(
        bundle, "onnx-int8-act", tmp_path / "q_act.onnx", precision="int8", source="onnx-fp32"
    )
    rep = compare_layers(Bundle.load(bundle), "onnx-int8-act", imgs[:4], attribute=0)
    detail = [(s.layer, s.local_db, s.quantizer) for s in rep.layers]
    assert rep.first_jump == "conv2", detail  # the first reader, in topological order
    assert rep.jump_quantizer == qn["conv2"].name, detail
    assert rep.jump_layers == ["conv2", "conv2b"], detail
    # one reader's weights perturbed: that layer alone, not the quantizer
    wbad = onnx.load(str(q))
    wdq = producer[convs["conv2b"].input[1]]
    _scale(wbad, {wdq.input[1]}, 2.0)
    onnx.save(wbad, str(tmp_path / "q_w.onnx"))
    add_onnx_artifact(
        bundle, "onnx-int8-w", tmp_path / "q_w.onnx", precision="int8", source="onnx-fp32"
    )
    rep = compare_layers(Bundle.load(bundle), "onnx-int8-w", imgs[:4], attribute=0)
    detail = [(s.layer, s.local_db, s.quantizer) for s in rep.layers]
    assert rep.first_jump == "conv2b", detail
    assert rep.jump_quantizer is None and rep.jump_layers == ["conv2b"], detail


def test_the_jump_group_needs_every_reader_of_the_quantizer_to_jump() -> None:
    from cvdeploy.diagnose.layerwise import LayerStat, jump_group

    def st(name: str, order: int, db: float, q: str | None) -> LayerStat:
        return LayerStat(name, name, "Conv", order, 1.0, 40.0, local_db=db, quantizer=q)

    layers = [st("a", 0, 30, None), st("b", 1, 3, "fq"), st("c", 2, 35, "fq"), st("d", 3, 4, "fq")]
    assert jump_group(layers, "b", 12.0) == (None, ["b"])  # c reads fq and is healthy
    layers[2].local_db = 5.0
    assert jump_group(layers, "b", 12.0) == ("fq", ["b", "c", "d"])
    assert jump_group(layers, None, 12.0) == (None, [])
    assert jump_group([st("x", 0, 3, None)], "x", 12.0) == (None, ["x"])
    assert jump_group([st("x", 0, 3, "q1")], "x", 12.0) == (None, ["x"])  # one reader


def test_no_float_source_is_a_clear_error(stack: Path, tmp_path: Path) -> None:
    b = Bundle.load(stack)
    with pytest.raises(UsageError, match="cannot be compared with itself"):
        compare_layers(b, "onnx-fp32", [np.zeros((64, 64, 3), np.uint8)], source="onnx-fp32")
    with pytest.raises(UsageError, match="at least one image"):
        compare_layers(b, "onnx-fp32", [])
    # an INT8 model imported on its own: nothing to compare it with
    only = tmp_path / "only"
    shutil.copytree(stack, only)
    from tests.diagnose.conftest import edit_manifest

    def int8(d: dict) -> None:
        d["artifacts"][0]["precision"] = "int8"

    edit_manifest(only, int8)
    with pytest.raises(UsageError, match="no float source"):
        float_source(Bundle.load(only), "onnx-fp32")


def test_output_shares_name_the_layer_whose_error_reaches_the_output(
    stack: Path, stack_root: Path, tmp_path: Path
) -> None:
    imgs = _images(stack_root)
    w = conv_stack_weights()
    w["w2"] = w["w2"] * 1.3
    add_onnx_artifact(
        stack,
        "onnx-bad",
        conv_stack_onnx(tmp_path / "bad.onnx", weights=w),
        precision="fp32",
        source="onnx-fp32",
    )
    b = Bundle.load(stack)
    rep = compare_layers(b, "onnx-bad", imgs, attribute=2)
    shares = {s.layer: s.output_share for s in rep.layers}
    assert all(v is not None for v in shares.values())
    # taking conv2's own error out removes (almost) all of the output error; the others none
    assert shares["conv2"] is not None and shares["conv2"] > 0.9, shares
    assert all(abs(v or 0) < 0.05 for k, v in shares.items() if k != "conv2"), shares
    off = compare_layers(b, "onnx-bad", imgs, attribute=0)
    assert all(s.output_share is None for s in off.layers)


@pytest.mark.slow
def test_the_keep_float_trial_measures_on_a_copy(stack: Path, stack_root: Path) -> None:
    """Re-quantized with every layer kept in float, the INT8 artifact is back at the float
    source's accuracy; the bundle itself is not changed."""
    pytest.importorskip("onnxruntime.quantization")
    from cvdeploy.diagnose.layerwise import try_keep_float
    from cvdeploy.optimize import QuantizeOptions, quantize_bundle

    data = stack_root / "data" / "data.yaml"
    quantize_bundle(
        stack,
        data,
        options=QuantizeOptions(backend="onnxruntime", force=True, measure=False, progress=False),
    )
    b = Bundle.load(stack)
    art = next(a.id for a in b.manifest.artifacts if a.precision.startswith("int8"))
    before = (stack / "bundle.json").read_bytes()
    t = try_keep_float(b, art, ["conv1", "conv2", "conv3"], data, noise=1)
    assert (stack / "bundle.json").read_bytes() == before
    # the calibration-noise baseline: one more quantization, from 3/4 of the images
    assert len(t["noise_maps"]) == 1 and t["noise_sd"] >= 0, t
    assert isinstance(t["within_noise"], bool) and isinstance(t["gap_within_noise"], bool)
    assert t["keep_float"] == ["conv1", "conv2", "conv3"] and "--keep-float 'conv2'" in t["command"]
    assert t["map_keep"] == pytest.approx(t["map_fp32"], abs=0.02), t
    assert t["keep_passes_gate"] is True, t  # every re-quantization is measured; verdict kept
    assert "--force " in t["command"]  # 48 calibration images: the command says what it needs
    assert t["recovered"] is None or t["recovered"] > 0.5, t
    # the placebo: one more quantization with a healthy layer kept in float instead
    p = try_keep_float(b, art, ["conv2"], data, placebo=["conv3"])
    assert p["placebo_keep"] == ["conv3"] and isinstance(p["beyond_placebo"], bool), p
    assert p["beyond_placebo"] == (
        p["map_keep"] - p["map_int8"] > abs(p["map_placebo"] - p["map_int8"])
    )
    with pytest.raises(UsageError, match="not made by `cvdeploy quantize`"):
        try_keep_float(b, "onnx-fp32", ["conv1"], data)


def test_the_placebo_is_the_healthiest_layers_not_kept() -> None:
    from cvdeploy.diagnose.layerwise import LayerStat, placebo_layers

    layers = [
        LayerStat(k, k, "Conv", i, 1.0, 30.0, local_db=db, output_share=sh)
        for i, (k, db, sh) in enumerate(
            [("a", 20.0, 0.5), ("b", 45.0, 0.0), ("c", 45.0, 0.2), ("d", 40.0, None)]
        )
    ]
    assert placebo_layers(layers, ["a", "b"]) == ["c", "d"]
    assert placebo_layers(layers, ["a"]) == ["b"]  # equal SQNR: the smaller share first
    assert placebo_layers(layers, []) == []


def test_output_shares_of_the_likely_carriers_only(
    stack: Path, stack_root: Path, tmp_path: Path
) -> None:
    """share_top measures the layers with the largest isolated error or SQNR drop only (one
    compilation each): the perturbed layer is among them, the others stay unmeasured."""
    imgs = _images(stack_root)
    w = conv_stack_weights()
    w["w2"] = w["w2"] * 1.3
    add_onnx_artifact(
        stack,
        "onnx-bad",
        conv_stack_onnx(tmp_path / "bad.onnx", weights=w),
        precision="fp32",
        source="onnx-fp32",
    )
    rep = compare_layers(Bundle.load(stack), "onnx-bad", imgs, attribute=2, share_top=1)
    shares = {s.layer: s.output_share for s in rep.layers if s.output_share is not None}
    assert 1 <= len(shares) <= 2 < len(rep.layers), shares
    assert shares.get("conv2") is not None and shares["conv2"] > 0.9, shares
