"""Fixtures of the optimize tests: a bundle around the tiny ONNX detector, image folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvdeploy.bundle import Bundle, Provenance
from cvdeploy.spec import IOSpec, ModelSpec, TensorSpec
from tests.tiny_models import IMGSZ, N_ANCHORS, NC, tiny_detector_onnx, tiny_spec_dict, write_image

IO = IOSpec(
    inputs=(TensorSpec(name="images", shape=(-1, 3, IMGSZ, IMGSZ)),),
    outputs=(TensorSpec(name="output0", shape=(-1, 4 + NC, N_ANCHORS)),),
)


def image_folder(root: Path, n: int) -> Path:
    """A folder of ``n`` small random images."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_image(root / f"{i:04d}.png", h=40 + (i % 5) * 8, w=72, seed=i)
    return root


def make_bundle(root: Path, *, extra_onnx: dict[str, tuple[Path, str]] | None = None) -> Path:
    """A bundle with the tiny detector as ``onnx-fp32`` (and optional extra ONNX artifacts)."""
    model = tiny_detector_onnx(root / "src.onnx")
    out = root / "bundle"
    spec = ModelSpec.model_validate(tiny_spec_dict())
    with Bundle.create(out, name="tiny", spec=spec) as edit:
        arts = {"onnx-fp32": (model, "fp32"), **(extra_onnx or {})}
        for art_id, (path, precision) in arts.items():
            d = edit.artifact_dir(art_id)
            (d / "model.onnx").write_bytes(path.read_bytes())
            edit.add_artifact(
                artifact_id=art_id,
                format="onnx",
                precision=precision,
                io=IO,
                main_file="model.onnx",
                produced_by=Provenance(
                    tool="test", source=None if precision == "fp32" else "onnx-fp32"
                ),
            )
        edit.add_samples(
            [write_image(root / "samples" / f"{i}.png", seed=100 + i) for i in range(4)]
        )
    return out


@pytest.fixture(scope="session")
def calib_120(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 calibration images (enough to pass, few enough to warn)."""
    return image_folder(tmp_path_factory.mktemp("calib120"), 120)


@pytest.fixture()
def tiny_bundle(tmp_path: Path) -> Path:
    """A fresh bundle with the tiny detector."""
    return make_bundle(tmp_path)
