"""Export targets beyond ONNX: OpenVINO, TFLite, TensorRT; formats, precisions, shapes, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from cvdeploy.bundle import Bundle
from cvdeploy.cli.main import app
from cvdeploy.errors import BackendUnavailable, UsageError
from cvdeploy.export import EXPORTERS, ExportOptions, export_model, parse_targets
from cvdeploy.export.importer import import_model
from cvdeploy.export.tensorrt import MAX_DYNAMIC_BATCH, profile_ranges
from cvdeploy.export.tflite import SAMPLE_COUNT, sample_array
from cvdeploy.runtime import RUNTIMES, create_runner
from cvdeploy.runtime.tensorrt import nvidia_gpu_count
from tests.cpu import native
from tests.tiny_models import IMGSZ, NC, tiny_detector_onnx, write_image

NO_GPU = nvidia_gpu_count() == 0


def _ultra_onnx(path: Path, *, batch: int | str = 1) -> Path:
    """The tiny detector with Ultralytics metadata, so it imports without flags."""
    m = onnx.load(str(tiny_detector_onnx(path, batch=batch)))
    meta = {
        "author": "Ultralytics",
        "task": "detect",
        "stride": "32",
        "imgsz": f"[{IMGSZ}, {IMGSZ}]",
        "names": "{0: 'a', 1: 'b', 2: 'c'}",
    }
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(m, str(path))
    return path


def _images(root: Path, n: int = 4) -> Path:
    for i in range(n):
        write_image(root / f"{i}.jpg", h=56 + 8 * i, w=80, seed=i)
    return root


@pytest.fixture()
def onnx_bundle(tmp_path: Path) -> Path:
    """A bundle imported from the tiny ONNX detector (fixed batch 1), with sample images."""
    imgs = sorted(_images(tmp_path / "imgs").iterdir())
    import_model(_ultra_onnx(tmp_path / "m.onnx"), out=tmp_path / "b", samples=imgs)
    return tmp_path / "b"


def _cli(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(app, args)
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.output


# --- formats and precisions ------------------------------------------------------------


def test_parse_targets() -> None:
    assert parse_targets(["onnx", "openvino:fp16"], ExportOptions()) == [
        ("onnx", "fp32"),
        ("openvino", "fp16"),
    ]
    assert parse_targets(["tflite", "openvino"], ExportOptions(half=True)) == [
        ("tflite", "fp16"),
        ("openvino", "fp16"),
    ]
    with pytest.raises(UsageError, match="tflite cannot be exported as int8"):
        parse_targets(["tflite:int8"], ExportOptions())
    with pytest.raises(UsageError, match="onnx cannot be exported as fp16"):
        parse_targets(["onnx"], ExportOptions(half=True))
    with pytest.raises(UsageError, match="unknown exporter"):
        parse_targets(["coreml"], ExportOptions())
    with pytest.raises(UsageError, match="no --format"):
        parse_targets([" "], ExportOptions())


# --- OpenVINO --------------------------------------------------------------------------


def test_openvino_fp32_and_fp16_from_onnx_bundle(onnx_bundle: Path) -> None:
    if "f16" not in native():  # FP16 compute is refused where the CPU has no FP16 arithmetic
        _unchanged(onnx_bundle, ["--format", "openvino,openvino:fp16"], "no native FP16")
        rep = export_model(onnx_bundle, formats=["openvino"])
        assert rep.ok and Bundle.load(onnx_bundle).artifact("openvino-fp32").precision == "fp32"
        return
    rep = export_model(onnx_bundle, formats=["openvino", "openvino:fp16"])
    assert rep.ok, [o.message for o in rep.outcomes]
    b = Bundle.load(onnx_bundle)
    fp32, fp16 = b.artifact("openvino-fp32"), b.artifact("openvino-fp16")
    assert (fp32.precision, fp16.precision) == ("fp32", "fp16")
    assert (fp32.inference_precision, fp16.inference_precision) == ("f32", "f16")
    for art in (fp32, fp16):
        assert art.produced_by.source == "onnx-fp32"
        assert art.io.input.shape == (1, 3, IMGSZ, IMGSZ)
        par = art.latest("parity")
        assert par is not None and par.passed
        assert par.data["precision"] == art.precision
        assert par.data["inference_precision"] == art.inference_precision
        assert [f.path.rsplit("/", 1)[-1] for f in art.files] == ["model.xml", "model.bin"]
    assert fp16.files[1].size < fp32.files[1].size  # FP16 weights
    code, out = _cli(["info", str(onnx_bundle)])
    assert code == 0 and "openvino-fp16" in out and "openvino-fp32" in out


def test_openvino_bf16_is_its_own_gated_artifact(onnx_bundle: Path) -> None:
    if "bf16" not in native():
        _unchanged(onnx_bundle, ["--format", "openvino:bf16"], "no native bf16 arithmetic")
        return
    rep = export_model(onnx_bundle, formats=["openvino:bf16"])
    assert rep.ok, [o.message for o in rep.outcomes]
    art = Bundle.load(onnx_bundle).artifact("openvino-bf16")
    assert (art.precision, art.inference_precision) == ("bf16", "bf16")
    par = art.latest("parity")
    assert par is not None and par.passed and par.data["inference_precision"] == "bf16"
    assert par.data["source_inference_precision"] == "f32"
    assert par.data["tolerance"]["cosine_min"] == 0.995  # its own tolerance
    with create_runner("openvino", Bundle.load(onnx_bundle).model_file(art), art.io) as r:
        assert r.effective_precision == "f32"  # a runner made without the record pins f32
    from cvdeploy.pipeline.predictor import Predictor

    with Predictor.from_bundle(Bundle.load(onnx_bundle), "openvino-bf16") as p:
        assert p.runner.effective_precision == "bf16"  # from the manifest


def test_reduced_precision_refused_on_a_plain_cpu(onnx_bundle: Path, plain_cpu: None) -> None:
    _unchanged(onnx_bundle, ["--format", "openvino:bf16"], "no native bf16 arithmetic")
    _unchanged(onnx_bundle, ["--format", "openvino,openvino:fp16"], "no native FP16")
    _unchanged(onnx_bundle, ["--format", "openvino", "--half"], "no native FP16")
    # TFLite FP16 is FP16 weights computed in FP32: allowed everywhere
    assert parse_targets(["tflite:fp16"], ExportOptions()) == [("tflite", "fp16")]


def test_export_from_external_onnx_file_with_dynamic_batch(tmp_path: Path) -> None:
    src = _ultra_onnx(tmp_path / "dyn.onnx", batch="batch")
    rep = export_model(
        src,
        formats=["openvino"],
        out=tmp_path / "b",
        data=_images(tmp_path / "imgs"),
        options=ExportOptions(dynamic=True),
    )
    assert rep.ok and rep.source == "onnx-fp32"
    b = Bundle.load(tmp_path / "b")
    assert {a.id for a in b.manifest.artifacts} == {"onnx-fp32", "openvino-fp32"}
    art = b.artifact("openvino-fp32")
    assert art.io.input.shape == (-1, 3, IMGSZ, IMGSZ)
    with create_runner("openvino", b.model_file(art), art.io) as r:
        (out,) = r.run(np.zeros((3, 3, IMGSZ, IMGSZ), np.float32))
    assert out.shape == (3, 4 + NC, (IMGSZ // 8) ** 2)


def test_external_onnx_without_metadata_fails_cleanly(tmp_path: Path) -> None:
    src = tiny_detector_onnx(tmp_path / "plain.onnx", batch=1)
    code, out = _cli(["export", str(src), "--format", "openvino", "--out", str(tmp_path / "b")])
    assert code == 2 and "preset" in out.lower()
    assert not (tmp_path / "b").exists()


# --- bad requests leave the bundle as it was -------------------------------------------


def _unchanged(bundle: Path, args: list[str], expect: str) -> None:
    before = (bundle / "bundle.json").read_bytes()
    files = sorted(p.name for p in bundle.iterdir())
    code, out = _cli(["export", str(bundle), *args])
    assert code == 2, out
    assert expect in " ".join(out.split()), out
    assert (bundle / "bundle.json").read_bytes() == before
    assert sorted(p.name for p in bundle.iterdir()) == files


def test_missing_package_is_exit_2(onnx_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def fake(name: str, *a: object, **k: object) -> object:
        return None if name == "onnx2tf" else real(name, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    assert not EXPORTERS.availability("tflite").available
    _unchanged(
        onnx_bundle,
        ["--format", "openvino,tflite"],
        "pip install 'cvdeploy[tflite]' (missing onnx2tf)",
    )


def test_unsupported_combinations_are_exit_2(onnx_bundle: Path) -> None:
    _unchanged(onnx_bundle, ["--format", "tflite:int8"], "tflite cannot be exported as int8")
    _unchanged(onnx_bundle, ["--format", "onnx", "--half"], "onnx cannot be exported as fp16")
    # the source ONNX has a fixed batch of 1: no dynamic batch, no batch 2, no other size
    _unchanged(onnx_bundle, ["--format", "openvino", "--dynamic"], "fixed batch of 1")
    _unchanged(onnx_bundle, ["--format", "tflite", "--dynamic"], "fixed batch of 1")
    _unchanged(onnx_bundle, ["--format", "openvino", "--batch", "2"], "fixed batch of 1")
    _unchanged(onnx_bundle, ["--format", "tflite", "--imgsz", "128"], "fixed input size")


@pytest.mark.skipif(not NO_GPU, reason="this machine has an NVIDIA GPU")
def test_tensorrt_without_gpu(onnx_bundle: Path) -> None:
    av = EXPORTERS.availability("tensorrt")
    assert not av.available
    assert av.reason == "unavailable: needs an NVIDIA GPU with CUDA (found none)"
    assert not RUNTIMES.availability("tensorrt").available
    _unchanged(onnx_bundle, ["--format", "tensorrt"], "needs an NVIDIA GPU with CUDA")
    _unchanged(onnx_bundle, ["--format", "tensorrt:int8"], "needs an NVIDIA GPU with CUDA")
    with pytest.raises(BackendUnavailable, match="NVIDIA GPU"):
        create_runner(
            "tensorrt", onnx_bundle / "x.engine", Bundle.load(onnx_bundle).artifact("onnx-fp32").io
        )
    code, out = _cli(["runtimes"])
    assert code == 0 and "needs an NVIDIA GPU" in " ".join(out.split())


def test_tensorrt_profile_ranges() -> None:
    mn, opt, mx = profile_ranges((-1, 3, 640, 640), (640, 640))
    assert mn == (1, 3, 640, 640) and opt == (1, 3, 640, 640)
    assert mx == (MAX_DYNAMIC_BATCH, 3, 640, 640)
    mn, opt, mx = profile_ranges((2, 3, -1, -1), (416, 480), stride=32)
    assert mn == (2, 3, 32, 32) and opt == (2, 3, 416, 480) and mx == (2, 3, 832, 960)


# --- TFLite ----------------------------------------------------------------------------


def test_onnx2tf_sample_file_content() -> None:
    imgs = [np.full((30, 50, 3), (10, 20, 255), np.uint8), np.zeros((8, 8), np.uint8)]
    arr = sample_array(imgs)
    assert arr.shape == (SAMPLE_COUNT, 128, 128, 3) and arr.dtype == np.float32
    np.testing.assert_allclose(arr[0, 0, 0], [1.0, 20 / 255, 10 / 255], rtol=1e-6)  # RGB
    assert arr.min() >= 0 and arr.max() <= 1


@pytest.mark.slow
def test_tflite_fp32_fp16_from_onnx_bundle(tmp_path: Path) -> None:
    """Dynamic-batch ONNX source -> TFLite FP32 (dynamic batch) and FP16, NHWC."""
    src = _ultra_onnx(tmp_path / "dyn.onnx", batch="batch")
    rep = export_model(
        src,
        formats=["tflite", "tflite:fp16"],
        out=tmp_path / "b",
        data=_images(tmp_path / "imgs"),
        options=ExportOptions(dynamic=True),
    )
    assert rep.ok, [o.message for o in rep.outcomes]
    b = Bundle.load(tmp_path / "b")
    for aid, prec in (("tflite-fp32", "fp32"), ("tflite-fp16", "fp16")):
        art = b.artifact(aid)
        assert art.precision == prec and art.io.layout == "NHWC"
        assert art.io.input.shape == (-1, IMGSZ, IMGSZ, 3)
        par = art.latest("parity")
        assert par is not None and par.passed
        assert art.produced_by.options["converter"].startswith("onnx2tf")
    art = b.artifact("tflite-fp32")
    x = np.random.default_rng(0).random((2, IMGSZ, IMGSZ, 3), dtype=np.float32)
    with create_runner("tflite", b.model_file(art), art.io) as r:
        (out,) = r.run(x)
    with create_runner("onnx", b.model_file("onnx-fp32"), b.artifact("onnx-fp32").io) as r:
        (ref,) = r.run(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)
    info = json.loads(_cli(["info", str(tmp_path / "b"), "--json"])[1])
    assert {"tflite-fp32", "tflite-fp16"} <= {a["id"] for a in info["artifacts"]}
    # FP16 weights, FP32 compute (tests/runtime/test_precision.py measures it)
    assert b.artifact("tflite-fp16").inference_precision == "f32"


def _ultralytics_style_dynamic_onnx(path: Path) -> Path:
    """The zoo detector (C2f + DFL head, anchor grid built from the feature maps' shapes)
    exported with dynamic batch, height and width axes, as ``yolo export dynamic=True`` does,
    with Ultralytics metadata."""
    import torch

    from cvdeploy.zoo.registry import load_zoo_model

    model, entry = load_zoo_model("detector-n")
    torch.onnx.export(
        model.eval(),
        torch.zeros(1, 3, 256, 256),
        str(path),
        input_names=["images"],
        output_names=["output0"],
        opset_version=17,
        dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch"}},
        dynamo=False,
    )
    m = onnx.load(str(path))
    meta = {"author": "Ultralytics", "task": "detect", "stride": "32", "imgsz": "[256, 256]"}
    meta["names"] = str(dict(enumerate(entry.names)))
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(m, str(path))
    return path


@pytest.mark.slow
def test_tflite_from_onnx_with_dynamic_batch_height_width(tmp_path: Path) -> None:
    """onnx2tf cannot follow dynamic height/width through such a graph; the source is
    converted with its input fixed to the bundle's size (and constant-folded)."""
    src = _ultralytics_style_dynamic_onnx(tmp_path / "dyn.onnx")
    rep = export_model(src, formats=["tflite"], out=tmp_path / "b", data=_images(tmp_path / "imgs"))
    assert rep.ok, [o.message for o in rep.outcomes]
    art = Bundle.load(tmp_path / "b").artifact("tflite-fp32")
    assert art.io.input.shape == (1, 256, 256, 3)
    assert art.produced_by.options["input_fixed_to"] == [1, 3, 256, 256]
    par = art.latest("parity")
    assert par is not None and par.passed and par.data["match_fraction"] >= 0.97


def test_int8_needs_an_explicitly_quantized_source(onnx_bundle: Path) -> None:
    from cvdeploy.export.run import _source_artifact

    arts = Bundle.load(onnx_bundle).manifest.artifacts
    with pytest.raises(UsageError, match=r"explicitly quantized \(Q/DQ\) INT8 ONNX") as exc:
        _source_artifact(arts, "int8", "tensorrt")
    assert "onnx-fp32" in str(exc.value) and "cvdeploy quantize" in str(exc.value)
    assert _source_artifact(arts, "fp16", "tflite").id == "onnx-fp32"


def test_openvino_from_torch_source_dynamic_batch(tmp_path: Path) -> None:
    import yaml

    from tests.tiny_models import tiny_spec_dict

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec_dict()))
    ids = ["openvino-fp32"] + (["openvino-fp16"] if "f16" in native() else [])
    rep = export_model(
        "tests.tiny_models:tiny_detector_torch",
        formats=[i.replace("-", ":") for i in ids],
        out=tmp_path / "b",
        spec_file=spec,
        data=_images(tmp_path / "imgs"),
        options=ExportOptions(dynamic=True),
    )
    assert rep.ok, [o.message for o in rep.outcomes]
    b = Bundle.load(tmp_path / "b")
    for aid in ids:
        art = b.artifact(aid)
        assert art.produced_by.source == "torch-fp32"
        assert art.produced_by.options["from"] == "torch"
        assert art.io.input.shape == (-1, 3, IMGSZ, IMGSZ)
        assert art.io.input.name == "images"


@pytest.mark.slow
@pytest.mark.realworld
def test_yolox_nano_to_openvino_fp32_fp16(realworld: Path, tmp_path: Path) -> None:
    """The real FP32 detector: OpenVINO FP32 passes the FP32 gate on coco8 images on every
    CPU (pinned to f32), and the reduced precisions this CPU has natively pass theirs."""
    from cvdeploy.export.importer import ImportOverrides

    import_model(
        realworld / "models" / "yolox_nano.onnx",
        out=tmp_path / "b",
        overrides=ImportOverrides(preset="yolox"),
    )
    reduced = [p for p, ip in (("fp16", "f16"), ("bf16", "bf16")) if ip in native()]
    formats = ["openvino"] + [f"openvino:{p}" for p in reduced]
    rep = export_model(
        tmp_path / "b", formats=formats, data=realworld / "datasets" / "coco8" / "coco8.yaml"
    )
    assert rep.ok, [o.message for o in rep.outcomes]
    assert [o.artifact_id for o in rep.outcomes] == [f"openvino-{p}" for p in ["fp32", *reduced]]
    for o in rep.outcomes:
        assert o.parity is not None and o.parity.match_fraction >= 0.9
        # bf16 (8 mantissa bits) moves the boxes of empty anchors: its gate decides on the
        # scoring anchors (measured: 0.99957 there, 0.997 over all anchors)
        key = "cosine_scoring" if o.parity.precision == "bf16" else "cosine"
        assert min(getattr(s, key) for s in o.parity.outputs) > 0.999
    fp32 = rep.outcomes[0].parity
    assert fp32 is not None and fp32.inference_precision == "f32"
    assert fp32.tolerance.rel_max_err == 1e-3  # the FP32 gate, passed on every CPU


def test_external_onnx_export_failure_leaves_nothing(tmp_path: Path) -> None:
    src = _ultra_onnx(tmp_path / "m.onnx")
    code, out = _cli(["export", str(src), "--format", "openvino", "--out", str(tmp_path / "b")])
    assert code == 2 and "no images for the parity gate" in out
    assert not (tmp_path / "b").exists()
