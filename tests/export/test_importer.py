"""Import of external ONNX / OpenVINO models into bundles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from cvdeploy.bundle import Bundle
from cvdeploy.errors import InputError, ModelLoadError, SpecError, UsageError
from cvdeploy.export.importer import ImportOverrides, import_model, read_names_file
from tests.tiny_models import NC, tiny_detector_onnx


def _with_ultralytics_metadata(path: Path) -> Path:
    m = onnx.load(str(path))
    for k, v in {
        "author": "Ultralytics",
        "task": "detect",
        "stride": "32",
        "imgsz": "[64, 64]",
        "names": "{0: 'cat', 1: 'dog', 2: 'bird'}",
    }.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(m, str(path))
    return path


def test_ultralytics_metadata_is_recognised(tmp_path: Path) -> None:
    src = _with_ultralytics_metadata(tiny_detector_onnx(tmp_path / "m.onnx", batch=1))
    b, notes = import_model(src, out=tmp_path / "b")
    assert b.spec.names == ("cat", "dog", "bird")
    assert b.spec.decoder.kind == "yolov8"
    assert b.spec.preprocess.align == "center" and b.spec.preprocess.color == "rgb"
    assert b.manifest.artifacts[0].id == "onnx-fp32"
    assert b.manifest.history[0].action == "import"
    assert notes == []


def test_flags_override_metadata(tmp_path: Path) -> None:
    src = _with_ultralytics_metadata(tiny_detector_onnx(tmp_path / "m.onnx", batch=1))
    b, _ = import_model(
        src,
        out=tmp_path / "b",
        overrides=ImportOverrides(color="bgr", names=("x", "y", "z"), pad=0),
    )
    assert b.spec.preprocess.color == "bgr" and b.spec.preprocess.pad_value == 0
    assert b.spec.names == ("x", "y", "z")


def test_unknown_model_asks_for_preset(tmp_path: Path) -> None:
    src = tiny_detector_onnx(tmp_path / "m.onnx", batch=1)
    with pytest.raises(SpecError, match="--preset"):
        import_model(src, out=tmp_path / "b")
    assert not (tmp_path / "b").exists()
    with pytest.raises(SpecError, match="--names"):
        import_model(src, out=tmp_path / "b", overrides=ImportOverrides(decoder="yolov8"))
    b, _ = import_model(
        src,
        out=tmp_path / "b",
        overrides=ImportOverrides(decoder="yolov8", names=tuple(f"n{i}" for i in range(NC))),
    )
    assert b.spec.imgsz == (64, 64)


def test_wrong_class_count_and_imgsz(tmp_path: Path) -> None:
    src = tiny_detector_onnx(tmp_path / "m.onnx", batch=1)
    with pytest.raises(SpecError, match="emits 3 classes but 2 names"):
        import_model(
            src, out=tmp_path / "b", overrides=ImportOverrides(decoder="yolov8", names=("a", "b"))
        )
    with pytest.raises(SpecError, match="fixed input"):
        import_model(
            src,
            out=tmp_path / "b",
            overrides=ImportOverrides(decoder="yolov8", names=("a", "b", "c"), imgsz=(128, 128)),
        )


def test_corrupted_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage" * 20)
    with pytest.raises(ModelLoadError, match=r"bad\.onnx"):
        import_model(bad, out=tmp_path / "b")
    with pytest.raises(InputError, match="does not exist"):
        import_model(tmp_path / "nope.onnx", out=tmp_path / "b")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InputError, match="not an ONNX"):
        import_model(tmp_path / "x.txt", out=tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_existing_bundle_needs_overwrite(tmp_path: Path) -> None:
    src = _with_ultralytics_metadata(tiny_detector_onnx(tmp_path / "m.onnx", batch=1))
    import_model(src, out=tmp_path / "b")
    with pytest.raises(UsageError, match="--overwrite"):
        import_model(src, out=tmp_path / "b")
    import_model(src, out=tmp_path / "b", overwrite=True)
    Bundle.load(tmp_path / "b")


def test_names_file_formats(tmp_path: Path) -> None:
    (tmp_path / "n.txt").write_text("a\nb\n\n")
    (tmp_path / "n.yaml").write_text("names:\n  0: a\n  1: b\n")
    (tmp_path / "n.json").write_text('["a", "b"]')
    for f in ("n.txt", "n.yaml", "n.json"):
        assert read_names_file(tmp_path / f) == ("a", "b")
    (tmp_path / "e.txt").write_text("\n")
    with pytest.raises(InputError, match="empty"):
        read_names_file(tmp_path / "e.txt")


def _caffe_style_classifier(path: Path, *, softmax: bool, nc: int = 4) -> tuple[Path, np.ndarray]:
    """Conv 1x1 -> GlobalAveragePool: output [B, nc, 1, 1], optionally through a Softmax."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(2).normal(size=(nc, 3, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["data", "w"], ["c"]),
        helper.make_node("GlobalAveragePool", ["c"], ["pool" if softmax else "prob"]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["pool"], ["prob"], axis=1))
    graph = helper.make_graph(
        nodes,
        "cls",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, nc, 1, 1])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path, w


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
@pytest.mark.parametrize("softmax", [True, False])
def test_caffe_style_classifier_outputs(tmp_path: Path, fmt: str, softmax: bool) -> None:
    """[B, nc, 1, 1] outputs are classifier scores; a final Softmax means probabilities."""
    from cvdeploy.pipeline.predictor import Predictor

    src, w = _caffe_style_classifier(tmp_path / "cls.onnx", softmax=softmax)
    if fmt == "openvino":
        ov = pytest.importorskip("openvino")
        ov.save_model(ov.convert_model(str(src)), str(tmp_path / "cls.xml"))
        src = tmp_path / "cls.xml"
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\nd\n")
    b, notes = import_model(
        src, out=tmp_path / "b", overrides=ImportOverrides(names=read_names_file(names))
    )
    assert b.spec.task == "classify" and b.spec.decoder.kind == "logits"
    assert b.spec.decoder.softmax is (not softmax)
    art = b.manifest.artifacts[0]
    assert art.produced_by.options["classifier_output"] == (
        "probabilities" if softmax else "logits"
    )
    assert any("trailing 1x1" in n for n in notes)
    assert any("probabilities" in n for n in notes) is softmax
    img = np.zeros((16, 16, 3), np.uint8)
    img[..., 2] = 255  # red (BGR): the stretch/RGB/255 input is (1, 0, 0) everywhere
    with Predictor.from_bundle(b) as p:
        (res,), _ = p.predict([img])
    logits = w[:, 0, 0, 0]
    want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(res.probs, want, rtol=1e-4, atol=1e-5)  # type: ignore[union-attr]
