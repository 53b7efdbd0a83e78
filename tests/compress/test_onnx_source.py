"""An imported ONNX model as a compression source: the input fold, the head conversion, the
rebuild from a checkpoint, the refusals, and `cvdeploy qat` of an imported model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from cvdeploy.bundle import Bundle
from cvdeploy.cli.main import app
from cvdeploy.compress.measure import write_torch_bundle
from cvdeploy.compress.onnx_module import OnnxModule
from cvdeploy.compress.onnx_source import build_onnx_source, onnx_graph_bytes, onnx_source
from cvdeploy.compress.sources import resolve_source
from cvdeploy.errors import CvdeployError, ModelLoadError, UsageError
from cvdeploy.export import ImportOverrides, import_model
from cvdeploy.pipeline import Predictor, Thresholds
from cvdeploy.pipeline.decode import yolox_grid
from cvdeploy.runtime.torch import load_checkpoint

BIG = 2**63 - 1
NAMES = ("cat", "dog")


def _save(nodes: list, inits: dict[str, np.ndarray], path: Path, in_shape, out_shape) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def tiny_yolox(path: Path, *, imgsz: int = 64, nc: int = 2, obj_bias: float = 0.0) -> Path:
    """A YOLOX-layout detector taking BGR 0..255: a Focus stem (four space-to-depth Slices,
    a channel Concat), Conv + SiLU, strided convolutions to strides 8/16/32, a 1x1 head per
    stride with sigmoid objectness and classes, ``[1, N, 5 + nc]``."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    c = 8
    inits: dict[str, np.ndarray] = {
        "ax": np.array([2, 3], np.int64),
        "st": np.array([2, 2], np.int64),
        "end": np.array([BIG, BIG], np.int64),
        "w0": (rng.normal(0, 0.3, (c, 12, 3, 3)) / 255).astype(f32),
        "b0": rng.normal(0, 0.1, c).astype(f32),
        "shape": np.array([1, 5 + nc, -1], np.int64),
        "c0": np.array([0], np.int64),
        "c4": np.array([4], np.int64),
        "cbig": np.array([BIG], np.int64),
        "c1": np.array([1], np.int64),
    }
    nodes = []
    for name, start in (("tl", [0, 0]), ("bl", [1, 0]), ("tr", [0, 1]), ("br", [1, 1])):
        inits[f"s_{name}"] = np.array(start, np.int64)
        nodes.append(helper.make_node("Slice", ["images", f"s_{name}", "end", "ax", "st"], [name]))
    nodes += [
        helper.make_node("Concat", ["tl", "bl", "tr", "br"], ["focus"], axis=1),
        helper.make_node("Conv", ["focus", "w0", "b0"], ["x0"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["x0"], ["g0"]),
        helper.make_node("Mul", ["x0", "g0"], ["f2"]),
    ]
    prev, heads = "f2", []
    for i, s in enumerate((4, 8, 16, 32)):
        inits[f"w{s}"] = rng.normal(0, 0.3, (c, c, 3, 3)).astype(f32)
        inits[f"b{s}"] = rng.normal(0, 0.1, c).astype(f32)
        nodes += [
            helper.make_node(
                "Conv", [prev, f"w{s}", f"b{s}"], [f"y{s}"], pads=[1, 1, 1, 1], strides=[2, 2]
            ),
            helper.make_node("Relu", [f"y{s}"], [f"f{s}"]),
        ]
        prev = f"f{s}"
        if i == 0:
            continue
        inits[f"hw{s}"] = rng.normal(0, 0.1, (5 + nc, c, 1, 1)).astype(f32)
        hb = rng.normal(0, 0.1, 5 + nc).astype(f32)
        hb[4] += obj_bias
        inits[f"hb{s}"] = hb
        nodes += [
            helper.make_node("Conv", [prev, f"hw{s}", f"hb{s}"], [f"h{s}"]),
            helper.make_node("Slice", [f"h{s}", "c0", "c4", "c1"], [f"reg{s}"]),
            helper.make_node("Slice", [f"h{s}", "c4", "cbig", "c1"], [f"oc{s}"]),
            helper.make_node("Sigmoid", [f"oc{s}"], [f"p{s}"]),
            helper.make_node("Concat", [f"reg{s}", f"p{s}"], [f"hc{s}"], axis=1),
            helper.make_node("Reshape", [f"hc{s}", "shape"], [f"r{s}"]),
        ]
        heads.append(f"r{s}")
    n = sum((imgsz // s) ** 2 for s in (8, 16, 32))
    nodes += [
        helper.make_node("Concat", heads, ["cat"], axis=2),
        helper.make_node("Transpose", ["cat"], ["output"], perm=[0, 2, 1]),
    ]
    return _save(nodes, inits, path, [1, 3, imgsz, imgsz], [1, n, 5 + nc])


def tiny_classifier(path: Path, *, pad: int, nc: int = 2, first: str = "Conv") -> Path:
    """Conv (padded or not) -> Relu -> GlobalAveragePool -> Flatten -> Gemm logits, for
    ImageNet-normalised input; ``first="Mul"`` puts an in-graph scale before the Conv."""
    rng = np.random.default_rng(1)
    f32 = np.float32
    inits = {
        "w": rng.normal(0, 0.3, (8, 3, 3, 3)).astype(f32),
        "b": rng.normal(0, 0.1, 8).astype(f32),
        "fw": rng.normal(0, 0.5, (nc, 8)).astype(f32),
        "fb": rng.normal(0, 0.1, nc).astype(f32),
        "k": np.array(2.0, f32),
    }
    head = "images"
    nodes = []
    if first == "Mul":
        nodes.append(helper.make_node("Mul", ["images", "k"], ["scaled"]))
        head = "scaled"
    nodes += [
        helper.make_node("Conv", [head, "w", "b"], ["c"], pads=[pad] * 4),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["gp"]),
        helper.make_node("Flatten", ["gp"], ["fl"]),
        helper.make_node("Gemm", ["fl", "fw", "fb"], ["output"], transB=1),
    ]
    return _save(nodes, inits, path, [1, 3, 32, 32], [1, nc])


YOLOX_FLAGS = ImportOverrides(preset="yolox", names=NAMES)
IMAGENET = ImportOverrides(
    task="classify", names=NAMES, scale=1 / 255, mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)  # fmt: skip


def _import(model: Path, out: Path, flags: ImportOverrides) -> Path:
    import_model(model, out=out, overrides=flags, overwrite=True)
    return out


def _images(n: int = 3, size: tuple[int, int] = (48, 80)) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture()
def yolox_bundle(tmp_path: Path) -> Path:
    return _import(tiny_yolox(tmp_path / "yolox.onnx"), tmp_path / "imported", YOLOX_FLAGS)


def test_imported_yolox_resolves_to_the_yolov8_layout_with_rgb_01_input(yolox_bundle: Path) -> None:
    src = resolve_source(str(yolox_bundle))
    assert src.from_onnx and src.builder.startswith("onnx:") and src.name == "yolox"
    pp, dec = src.spec.preprocess, src.spec.decoder
    assert (pp.color, pp.scale, pp.mean, pp.std) == ("rgb", 1 / 255, (0, 0, 0), (1, 1, 1))
    assert (pp.resize, pp.align, pp.pad_value) == ("letterbox", "top-left", 114)  # kept
    assert dec.kind == "yolov8" and dec.iou == 0.65 and dec.strides == (8, 16, 32)
    assert any("BGR" in n and "0..255" in n for n in src.notes)
    assert any("YOLOX head" in n for n in src.notes)
    # raw arrays: the module on RGB 0..1 is the graph on BGR 0..255, decoded with the
    # pipeline's own anchor grid
    import onnxruntime as ort

    file = Bundle.load(yolox_bundle).path / "onnx-fp32" / "model.onnx"
    x = np.random.default_rng(3).uniform(0, 1, (2, 3, 64, 64)).astype(np.float32)
    sess = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    raw = np.concatenate(
        [sess.run(None, {"images": x[i : i + 1, ::-1] * 255})[0] for i in range(2)]
    )
    grid, stride = yolox_grid((64, 64), (8, 16, 32))
    want = np.concatenate(
        [
            (raw[..., :2] + grid) * stride[:, None],
            np.exp(raw[..., 2:4]) * stride[:, None],
            raw[..., 4:5] * raw[..., 5:],
        ],
        -1,
    ).transpose(0, 2, 1)
    with torch.no_grad():
        got = src.module(torch.from_numpy(x)).numpy()
    assert got.shape == (2, 4 + 2, 84)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_the_fold_is_exact(tmp_path: Path) -> None:
    """The scale and colour order moved into the first convolution's weights: its output on
    RGB 0..1 is the original convolution's on BGR 0..255 (float rounding only)."""
    file = tiny_yolox(tmp_path / "m.onnx")
    spec = Bundle.load(_import(file, tmp_path / "b", YOLOX_FLAGS)).spec
    folded = onnx_source(onnx_graph_bytes(file), spec).module.raw  # type: ignore[union-attr]
    original = OnnxModule(file).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a = folded(x)
        b = original(torch.flip(x, [1]) * 255)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.equal(folded.first_conv_weight(), original.first_conv_weight())


def _same_results(a: list, b: list) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert len(ra) == len(rb)
        np.testing.assert_array_equal(ra.class_ids, rb.class_ids)
        np.testing.assert_allclose(ra.scores, rb.scores, atol=1e-5)
        np.testing.assert_allclose(ra.boxes, rb.boxes, atol=1e-3)


@pytest.mark.parametrize("decoder", ["yolox", "yolov5"])
def test_the_torch_checkpoint_predicts_what_the_imported_onnx_predicts(
    tmp_path: Path, decoder: str
) -> None:
    """Through the whole pipeline (each with its own spec: preprocessing, decoder, NMS):
    the original ONNX on ONNX Runtime, and the converted module saved as a torch
    checkpoint and rebuilt from its builder data (no original file)."""
    flags = ImportOverrides(
        preset="yolox", names=NAMES, **({"decoder": "yolov5"} if decoder == "yolov5" else {})
    )
    file = tiny_yolox(tmp_path / "m.onnx")
    bundle = _import(file, tmp_path / "b", flags)
    src = resolve_source(str(bundle))
    tb = write_torch_bundle(
        src.module, out=tmp_path / "t", name=src.name, spec=src.spec, builder=src.builder,
        samples=[], tool="test", options={}, pruned=False, builder_data=src.builder_data,
    )  # fmt: skip
    file.unlink()  # the checkpoint needs nothing outside itself
    th = Thresholds(conf=0.1)
    images = _images()
    with Predictor.from_bundle(Bundle.load(bundle), "onnx-fp32", thresholds=th) as p:
        want = p.predict(images)[0]
    with Predictor.from_bundle(tb, "torch-fp32", thresholds=th) as p:
        got = p.predict(images)[0]
    assert sum(len(r) for r in want) > 0
    _same_results(want, got)
    _, ckpt = load_checkpoint(tb.model_file(tb.artifact("torch-fp32")))
    assert ckpt["builder"] == src.builder


def test_a_classifier_with_a_mean_folds_it_into_an_unpadded_first_convolution(
    tmp_path: Path,
) -> None:
    bundle = _import(tiny_classifier(tmp_path / "c.onnx", pad=0), tmp_path / "b", IMAGENET)
    src = resolve_source(str(bundle))
    assert src.spec.decoder.kind == "logits" and src.spec.preprocess.mean == (0, 0, 0)
    assert any("mean" in n for n in src.notes)
    images = _images(size=(40, 40))
    with Predictor.from_bundle(Bundle.load(bundle), "onnx-fp32") as p:  # ImageNet-normalised
        want = np.concatenate([p.infer(p.preprocess([im])[0])[0] for im in images])
    pp = src.spec.preprocess
    from cvdeploy.pipeline.preprocess import resize_image, to_tensor

    resized = [resize_image(im, (32, 32), mode=pp.resize)[0] for im in images]
    x01 = to_tensor(resized, color="rgb", scale=pp.scale)
    with torch.no_grad():
        got = src.module(torch.from_numpy(x01)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("pad", "first", "flags", "needle"),
    [
        (1, "Conv", IMAGENET, "mean"),  # zero padding: the border would change
        (0, "Mul", ImportOverrides(task="classify", names=NAMES, scale=1.0), "Mul"),
    ],
)
def test_an_input_that_cannot_be_folded_is_refused(
    tmp_path: Path, pad: int, first: str, flags: ImportOverrides, needle: str
) -> None:
    bundle = _import(
        tiny_classifier(tmp_path / "c.onnx", pad=pad, first=first), tmp_path / "b", flags
    )
    with pytest.raises(UsageError, match=needle):
        resolve_source(str(bundle))


def test_an_input_that_needs_no_fold_is_not_traced(tmp_path: Path) -> None:
    """RGB 0..1 models pass as they are, whatever reads their input (here a Mul)."""
    flags = ImportOverrides(task="classify", names=NAMES, scale=1 / 255)
    file = tiny_classifier(tmp_path / "c.onnx", pad=1, first="Mul")
    src = resolve_source(str(_import(file, tmp_path / "b", flags)))
    assert src.notes == []
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(src.module(x), OnnxModule(file)(x))


def test_unconvertible_models_are_refused_by_name(tmp_path: Path, yolox_bundle: Path) -> None:
    spec = Bundle.load(yolox_bundle).spec
    graph = onnx_graph_bytes(yolox_bundle / "onnx-fp32" / "model.onnx")
    odd = spec.model_copy(update={"decoder": spec.decoder.model_copy(update={"kind": "ssd"})})
    with pytest.raises(UsageError, match="decoder 'ssd'"):
        onnx_source(graph, odd)
    wrong = spec.model_copy(
        update={"decoder": spec.decoder.model_copy(update={"strides": (8, 16)})}
    )
    with pytest.raises(UsageError, match=r"not the yolox layout \[B, 80, 7\]"):
        onnx_source(graph, wrong)
    # a classifier that emits probabilities
    cls = Bundle.load(
        _import(tiny_classifier(tmp_path / "c.onnx", pad=0), tmp_path / "c", IMAGENET)
    ).spec
    probs = cls.model_copy(update={"decoder": cls.decoder.model_copy(update={"softmax": False})})
    with pytest.raises(UsageError, match="probabilities"):
        onnx_source(onnx_graph_bytes(tmp_path / "c.onnx"), probs)
    # an operator OnnxModule cannot run
    m = onnx.load(str(yolox_bundle / "onnx-fp32" / "model.onnx"))
    for node in m.graph.node:
        if node.op_type == "Relu":
            node.op_type = "Erf"
    with pytest.raises(UsageError, match="Erf"):
        onnx_source(m.SerializeToString(), spec)


def test_bundles_and_files_that_are_not_fp32_onnx_sources(
    tmp_path: Path, yolox_bundle: Path
) -> None:
    # an .onnx file needs its spec; with it, it is converted like the imported bundle
    file = yolox_bundle / "onnx-fp32" / "model.onnx"
    with pytest.raises(UsageError, match="--spec"):
        resolve_source(str(file))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(Bundle.load(yolox_bundle).spec.model_dump(mode="json")))
    src = resolve_source(str(file), spec_file=spec)
    assert src.builder == resolve_source(str(yolox_bundle)).builder
    with pytest.raises(CvdeployError, match="does not exist"):
        resolve_source(str(tmp_path / "nope.onnx"), spec_file=spec)
    # a bundle whose only model is INT8
    b = Bundle.load(yolox_bundle)
    with b.edit(action="test") as edit:
        art = edit.manifest.artifacts[0]
        edit.manifest = edit.manifest.model_copy(
            update={"artifacts": (art.model_copy(update={"precision": "int8"}),)}
        )
    with pytest.raises(UsageError, match="neither a torch nor an FP32 ONNX artifact"):
        resolve_source(str(yolox_bundle))


def test_the_builder_refuses_a_graph_that_is_not_its_own(yolox_bundle: Path) -> None:
    src = resolve_source(str(yolox_bundle))
    rest = src.builder.split(":", 1)[1]
    assert src.builder_data is not None
    with pytest.raises(ModelLoadError, match="graph and spec"):
        build_onnx_source(rest, num_classes=2)
    data = dict(src.builder_data)
    data["graph"] = data["graph"].clone()
    data["graph"][-1] ^= 1
    with pytest.raises(ModelLoadError, match="is not onnx:"):
        build_onnx_source(rest, num_classes=2, data=data)
    rebuilt = build_onnx_source(rest, num_classes=2, data=src.builder_data)
    rebuilt.load_state_dict(src.module.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), src.module(x))


def _cli(args: list[str]) -> tuple[int, str]:
    r = CliRunner().invoke(app, args)
    return r.exit_code, r.output


def test_prune_and_a_distill_student_refuse_an_imported_model_and_point_to_qat(
    tmp_path: Path, yolox_bundle: Path, det64: Path
) -> None:
    images = str(det64.parent / "images" / "train")
    code, out = _cli(["prune", str(yolox_bundle), "--data", images, "--out", str(tmp_path / "p")])
    assert code == 2 and "imported ONNX model" in out and "cvdeploy qat" in out, out
    code, out = _cli(
        ["distill", "--teacher", str(yolox_bundle), "--student", str(yolox_bundle), "--data",
         images, "--out", str(tmp_path / "d")]
    )  # fmt: skip
    assert code == 2 and "cvdeploy qat" in out, out
    assert "Traceback" not in out


def test_help_names_the_new_source_kind() -> None:
    code, out = _cli(["qat", "--help"])
    text = " ".join(out.replace("│", " ").split())  # rich wraps the help in a box
    assert code == 0 and "a bundle of an FP32 ONNX model" in text and "cvdeploy import" in text


@pytest.mark.slow
def test_cvdeploy_qat_of_an_imported_onnx_model(tmp_path: Path, det64: Path) -> None:
    """`cvdeploy import` a YOLOX-layout ONNX (BGR 0..255), then `cvdeploy qat BUNDLE`: the
    FP32 export, PTQ and QAT artifacts are the yolov8 layout taking RGB 0..1, every
    convolution quantized, and the bundle's torch artifact rebuilds from its checkpoint."""
    model = tiny_yolox(tmp_path / "m.onnx", obj_bias=-3.0)
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    bundle = tmp_path / "imported"
    code, out = _cli(
        ["import", str(model), "--out", str(bundle), "--preset", "yolox", "--names", str(names)]
    )
    assert code == 0, out
    images = tmp_path / "images"  # without det64's labels (other classes than the model's)
    shutil.copytree(det64.parent / "images" / "train", images)
    q = tmp_path / "q"
    code, out = _cli(
        ["qat", str(bundle), "--data", str(images), "--out", str(q),
         "--iters", "2", "--calib-size", "8", "--json"]
    )  # fmt: skip
    assert code == 0, out
    assert "folded into the convolution reading the input" in out
    b = Bundle.load(q)
    assert b.spec.decoder.kind == "yolov8" and b.spec.preprocess.color == "rgb"
    for art_id in ("onnx-int8-ptq", "onnx-int8-qat"):
        st = b.artifact(art_id).produced_by.options["qdq"]
        assert st["convs_quantized"] == st["convs"] == 8 and st["head_qdq"] == 0
    module, ckpt = load_checkpoint(b.model_file(b.artifact("torch-fp32")))
    assert str(ckpt["builder"]).startswith("onnx:")
    with torch.no_grad():
        assert module(torch.rand(1, 3, 64, 64)).shape == (1, 4 + 2, 84)
    # the QAT bundle is a torch source again (its torch artifact, already converted)
    again = resolve_source(str(q))
    assert again.from_onnx and again.spec == b.spec


@pytest.mark.realworld
def test_the_real_yolox_nano_imported_is_a_source_that_predicts_what_onnx_runtime_does(
    tmp_path: Path, realworld: Path
) -> None:
    """YOLOX-Nano (BGR 0..255, Focus stem, raw head) imported with the yolox preset: the
    converted torch checkpoint gives the detections ONNX Runtime gives on coco128 images."""
    from cvdeploy.data import read_image

    bundle = _import(
        realworld / "models" / "yolox_nano.onnx", tmp_path / "yx", ImportOverrides(preset="yolox")
    )
    src = resolve_source(str(bundle))
    assert src.spec.decoder.kind == "yolov8" and src.spec.preprocess.color == "rgb"
    tb = write_torch_bundle(
        src.module, out=tmp_path / "t", name=src.name, spec=src.spec, builder=src.builder,
        samples=[], tool="test", options={}, pruned=False, builder_data=src.builder_data,
    )  # fmt: skip
    files = sorted((realworld / "datasets" / "coco128" / "images" / "train2017").glob("*.jpg"))
    images = [read_image(p) for p in files[:2]]
    with Predictor.from_bundle(Bundle.load(bundle), "onnx-fp32", batch=1) as p:
        want = p.predict(images)[0]
    with Predictor.from_bundle(tb, "torch-fp32", batch=1) as p:
        got = p.predict(images)[0]
    assert sum(len(r) for r in want) >= 3
    _same_results(want, got)
