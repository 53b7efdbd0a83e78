"""Bundles for the bench tests, built from the tiny ONNX detector (no downloads)."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest

from cvdeploy.bundle import Bundle, Provenance
from cvdeploy.export.importer import ImportOverrides, import_model, read_model_facts
from tests.tiny_models import NC, tiny_detector_onnx, write_image


def _dynamic_size(path: Path) -> Path:
    """Make the tiny detector's height, width and anchor count dynamic."""
    m = onnx.load(str(path))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "h", "w"
    m.graph.output[0].type.tensor_type.shape.dim[2].dim_param = "anchors"
    onnx.save(m, str(path))
    return path


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    """Six small real image files of different sizes."""
    return [
        write_image(tmp_path / "imgs" / f"{i}.jpg", h=40 + 8 * i, w=90 - 6 * i, seed=i)
        for i in range(6)
    ]


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Bundle:
    """A bundle with three artifacts of the tiny detector.

    ``onnx-fp32``: dynamic batch and size; ``onnx-b1``: fixed batch 1 and 64x64;
    ``openvino-fp32``: the same ONNX file run by OpenVINO (dynamic batch, fixed size).
    """
    src = _dynamic_size(tiny_detector_onnx(tmp_path / "dyn.onnx"))
    b, _ = import_model(
        src,
        out=tmp_path / "bundle",
        overrides=ImportOverrides(
            decoder="yolov8", names=tuple(f"c{i}" for i in range(NC)), imgsz=(64, 64)
        ),
    )
    fixed = tiny_detector_onnx(tmp_path / "b1.onnx", batch=1)
    dynb = tiny_detector_onnx(tmp_path / "dynb.onnx")
    with b.edit(action="test-setup") as edit:
        for art_id, fmt, f in (("onnx-b1", "onnx", fixed), ("openvino-fp32", "openvino", dynb)):
            d = edit.artifact_dir(art_id)
            shutil.copyfile(f, d / "model.onnx")
            edit.add_artifact(
                artifact_id=art_id,
                format=fmt,
                precision="fp32",
                io=read_model_facts(f).io,
                produced_by=Provenance(tool="test"),
            )
    return b
