"""Serving real detectors from ../shared/realworld: YOLOv8n INT8 OpenVINO and YOLOX-Nano."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvdeploy.export.importer import ImportOverrides, import_model
from tests.serve.conftest import serving


@pytest.mark.realworld
@pytest.mark.parametrize(
    ("model", "preset"),
    [
        pytest.param("yolov8n_int8_openvino_model", None, marks=pytest.mark.slow),
        ("yolox_nano.onnx", "yolox"),
    ],
)
def test_real_detector_serves_bus(
    realworld: Path, tmp_path: Path, model: str, preset: str | None
) -> None:
    pytest.importorskip("openvino" if preset is None else "onnxruntime")
    bundle, _ = import_model(
        realworld / "models" / model, out=tmp_path / "b", overrides=ImportOverrides(preset=preset)
    )
    bus = (realworld / "images" / "bus.jpg").read_bytes()
    with serving(bundle.path, max_batch=4) as c:
        r = c.post(
            f"/v1/models/{bundle.name}/predict", content=bus, headers={"content-type": "image/jpeg"}
        )
        assert r.status_code == 200, r.text
        res = r.json()["results"][0]
        assert (res["width"], res["height"]) == (810, 1080)
        names = {d["class_name"] for d in res["detections"] if d["score"] > 0.5}
        assert {"bus", "person"} <= names, res["detections"][:5]
        for d in res["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert -2 <= x1 < x2 <= 812 and -2 <= y1 < y2 <= 1082
        info = c.get(f"/v1/models/{bundle.name}").json()
        assert info["batch"] == 1  # fixed-batch artifact: served image by image


@pytest.mark.realworld
def test_real_classifier_serves_top_classes(realworld: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import cv2
    import numpy as np

    bundle, _ = import_model(
        realworld / "models" / "mnist_cnn.onnx",
        out=tmp_path / "b",
        overrides=ImportOverrides(
            task="classify",
            color="gray",
            names=tuple(str(i) for i in range(10)),
            decoder="logits",
            scale=1 / 255,
            mean=(0.5,),
            std=(0.5,),
        ),
    )
    img = np.zeros((28, 28, 3), np.uint8)
    png = cv2.imencode(".png", img)[1].tobytes()
    with serving(bundle.path) as c:
        url = f"/v1/models/{bundle.name}/predict"
        files = [("f", (f"{i}.png", png, "image/png")) for i in range(3)]
        r = c.post(url, files=files)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == 3 and all(len(x["classes"]) == 5 for x in results)
        scores = [x["score"] for x in results[0]["classes"]]
        assert scores == sorted(scores, reverse=True) and 0 <= scores[-1] <= scores[0] <= 1
        r = c.post(url, content=png, headers={"content-type": "image/png"}, params={"draw": 1})
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert "cvdeploy_predicted_class_total{" in c.get("/metrics").text


@pytest.mark.realworld
def test_reduced_decode_finds_the_same_objects(realworld: Path, tmp_path: Path) -> None:
    """A large photo decoded at 1/2 scale gives YOLOX the same detections as a full decode."""
    pytest.importorskip("onnxruntime")
    import cv2
    import numpy as np

    bundle, _ = import_model(
        realworld / "models" / "yolox_nano.onnx",
        out=tmp_path / "b",
        overrides=ImportOverrides(preset="yolox"),
    )
    bus = cv2.imread(str(realworld / "images" / "bus.jpg"))
    big = cv2.resize(bus, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)  # 1620 x 2160
    data = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
    found = {}
    for reduced in (True, False):
        with serving(bundle.path, reduced_decode=reduced) as c:
            r = c.post(
                f"/v1/models/{bundle.name}/predict",
                content=data,
                headers={"content-type": "image/jpeg"},
            )
            assert r.status_code == 200, r.text
            res = r.json()["results"][0]
            assert (res["width"], res["height"]) == (1620, 2160)
            found[reduced] = sorted(
                (d for d in res["detections"] if d["score"] > 0.5),
                key=lambda d: (d["class_name"], d["box"][0]),
            )
    fast, exact = found[True], found[False]
    assert [d["class_name"] for d in fast] == [d["class_name"] for d in exact], (fast, exact)
    assert {"bus", "person"} <= {d["class_name"] for d in exact}
    for a, b in zip(fast, exact, strict=True):
        assert np.abs(np.array(a["box"]) - np.array(b["box"])).max() < 12, (a, b)  # 0.5 %
        assert abs(a["score"] - b["score"]) < 0.05, (a, b)
