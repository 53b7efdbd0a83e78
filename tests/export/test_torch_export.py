"""Export from PyTorch to ONNX through the gate (module:factory sources, tiny model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from cvdeploy.bundle import Bundle
from cvdeploy.errors import UsageError
from cvdeploy.export import ExportOptions, export_model
from cvdeploy.runtime import create_runner
from tests.tiny_models import IMGSZ, tiny_spec_dict, write_image

SOURCE = "tests.tiny_models:tiny_detector_torch"


@pytest.fixture()
def spec_and_images(tmp_path: Path) -> tuple[Path, Path]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec_dict()))
    for i in range(4):
        write_image(tmp_path / "imgs" / f"{i}.jpg", seed=i)
    return spec, tmp_path / "imgs"


def test_dynamic_batch_export(tmp_path: Path, spec_and_images: tuple[Path, Path]) -> None:
    spec, imgs = spec_and_images
    rep = export_model(
        SOURCE,
        formats=["onnx"],
        out=tmp_path / "b",
        spec_file=spec,
        data=imgs,
        options=ExportOptions(dynamic=True),
    )
    assert rep.ok
    b = Bundle.load(tmp_path / "b")
    art = b.artifact("onnx-fp32")
    assert art.io.input.shape == (-1, 3, IMGSZ, IMGSZ)
    assert art.latest("parity").passed  # type: ignore[union-attr]
    assert art.produced_by.source == "torch-fp32"
    assert "packages" in art.environment
    assert len(b.manifest.samples) == 4
    with create_runner("onnx", b.model_file(art), art.io) as r:
        (out,) = r.run(np.zeros((3, 3, IMGSZ, IMGSZ), np.float32))
    assert out.shape[0] == 3


def test_fixed_batch_and_reexport_into_bundle(
    tmp_path: Path, spec_and_images: tuple[Path, Path]
) -> None:
    spec, imgs = spec_and_images
    export_model(
        SOURCE,
        formats=["onnx"],
        out=tmp_path / "b",
        spec_file=spec,
        data=imgs,
        options=ExportOptions(batch=2),
    )
    b = Bundle.load(tmp_path / "b")
    assert b.artifact("onnx-fp32").io.input.shape[0] == 2
    before = (tmp_path / "b" / "bundle.json").read_bytes()
    with pytest.raises(UsageError, match="--overwrite"):
        export_model(tmp_path / "b", formats=["onnx"])  # exists, no --overwrite
    assert (tmp_path / "b" / "bundle.json").read_bytes() == before
    rep = export_model(
        tmp_path / "b", formats=["onnx"], overwrite=True, options=ExportOptions(dynamic=True)
    )
    assert rep.ok
    assert Bundle.load(tmp_path / "b").artifact("onnx-fp32").io.input.shape[0] == -1


def test_bad_options(tmp_path: Path, spec_and_images: tuple[Path, Path]) -> None:
    spec, _ = spec_and_images
    with pytest.raises(UsageError, match="exclude each other"):
        export_model(
            SOURCE,
            formats=["onnx"],
            out=tmp_path / "b",
            spec_file=spec,
            options=ExportOptions(dynamic=True, batch=4),
        )
    with pytest.raises(UsageError, match="unknown exporter"):
        export_model(SOURCE, formats=["coreml"], out=tmp_path / "b", spec_file=spec)
    with pytest.raises(UsageError, match="needs --spec"):
        export_model(SOURCE, formats=["onnx"], out=tmp_path / "b")
    assert not (tmp_path / "b").exists()
