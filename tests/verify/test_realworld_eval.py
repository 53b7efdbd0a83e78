"""Real detectors nobody here trained: import, evaluate on coco128, compare with an
independent evaluation of the same protocol."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvdeploy.export.importer import ImportOverrides, import_model
from cvdeploy.verify.evaluate import evaluate_bundle
from tests.verify.reference_eval import reference_map

pytestmark = [pytest.mark.realworld, pytest.mark.slow]

CASES = [
    # (model path, preset, reference kind, dataset source)
    ("models/yolov8n_int8_openvino_model", None, "yolov8", "yaml"),
    ("models/yolo11n_int8_openvino_model", None, "yolov8", "json"),
    ("models/yolov8n_int8.onnx", None, "yolov8", "json"),
    ("models/yolox_nano.onnx", "yolox", "yolox", "yaml"),
]


@pytest.mark.parametrize(("model", "preset", "kind", "source"), CASES)
def test_map_matches_independent_evaluation(
    realworld: Path, tmp_path: Path, model: str, preset: str | None, kind: str, source: str
) -> None:
    coco = realworld / "datasets" / "coco128"
    bundle, _ = import_model(
        realworld / model, out=tmp_path / "b", overrides=ImportOverrides(preset=preset)
    )
    coco_json = coco / "annotations" / "instances_train2017.json"
    rep = evaluate_bundle(bundle, coco_json, progress=False)
    assert rep.images == 128
    assert rep.inference_precision == "f32"  # pinned, on every CPU
    ours = rep.metrics["map50_95"]
    model_file = bundle.model_file(bundle.manifest.artifacts[0])
    ref = reference_map(
        model=model_file,
        kind=kind,
        size=bundle.spec.imgsz[0],
        coco_json=coco / "annotations" / "instances_train2017.json",
        images=coco / "images" / "train2017",
        names=list(bundle.spec.names),
    )
    assert ours == pytest.approx(ref, abs=0.002), (ours, ref)
    assert ours > 0.25  # a real detector, decoded correctly
    assert bundle.artifact(rep.artifact).latest("metrics") is not None
    if source == "yaml":
        # the YOLO labels lack the json's 10 crowd regions: the same model through
        # coco128.yaml may differ a little from the json figure
        rep = evaluate_bundle(bundle, coco / "coco128.yaml", progress=False)
        assert rep.metrics["map50_95"] == pytest.approx(ref, abs=0.01)


def test_predictions_on_demo_images(realworld: Path, tmp_path: Path) -> None:
    from cvdeploy.data.io import read_image
    from cvdeploy.pipeline.predictor import Predictor

    bundle, _ = import_model(realworld / "models/yolov8n_int8_openvino_model", out=tmp_path / "b")
    with Predictor.from_bundle(bundle, batch=1) as p:
        (bus,), _ = p.predict([read_image(realworld / "images/bus.jpg")])
        (zid,), _ = p.predict([read_image(realworld / "images/zidane.jpg")])
    names = bundle.spec.names
    bus_classes = [names[c] for c in bus.class_ids]
    assert bus_classes.count("person") >= 3 and "bus" in bus_classes
    assert [names[c] for c in zid.class_ids].count("person") >= 2
    big = bus.boxes[[names[c] == "bus" for c in bus.class_ids]][0]
    assert big[2] - big[0] > 600  # the bus spans most of the 810-px-wide photo
