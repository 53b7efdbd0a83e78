"""The harness on a real detector: the Ultralytics YOLOv8n INT8 OpenVINO IR on coco128."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvdeploy.bench import BenchConfig, bench_artifact
from cvdeploy.data.folder import list_images
from cvdeploy.export.importer import import_model


@pytest.mark.realworld
def test_yolov8n_int8_openvino(realworld: Path, tmp_path: Path) -> None:
    b, _ = import_model(realworld / "models/yolov8n_int8_openvino_model", out=tmp_path / "b")
    images = list_images(realworld / "datasets/coco128/images")[:8]
    r = bench_artifact(
        b,
        "openvino-int8",
        images,
        config=BenchConfig(warmup=1, iters=4),
        profile=True,
        profile_runs=2,
    )
    assert r.imgsz == (640, 640) and r.precision == "int8" and r.e2e_ms.n == 4
    assert r.profile is not None and r.profile["source"] == "openvino performance counters"
    assert any(o["op_type"] == "Convolution" for o in r.profile["by_type"])
