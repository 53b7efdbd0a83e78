"""Fixtures of the compress tests: small synthetic image sets and an ONNX teacher bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvdeploy.data.synthetic import make_classification_dataset, make_detection_dataset


@pytest.fixture(scope="session")
def det64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64 px synthetic detection set (24 train, 12 val images): its data.yaml."""
    root = tmp_path_factory.mktemp("det64")
    return make_detection_dataset(root, n_train=24, n_val=12, imgsz=64, seed=7)


@pytest.fixture(scope="session")
def det256(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 256 px synthetic detection set (16 train, 12 val images): its data.yaml."""
    root = tmp_path_factory.mktemp("det256")
    return make_detection_dataset(root, n_train=16, n_val=12, imgsz=256, seed=8)


@pytest.fixture(scope="session")
def cls64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64 px synthetic classification set (4 train, 3 val images per class)."""
    root = tmp_path_factory.mktemp("cls64")
    return make_classification_dataset(root, n_per_class_train=4, n_per_class_val=3, seed=9)


@pytest.fixture(scope="session")
def onnx_teacher(tmp_path_factory: pytest.TempPathFactory, det64: Path) -> Path:
    """detector-n exported to ONNX at 64 px: a teacher that is an ONNX Runtime bundle."""
    from cvdeploy.export import ExportOptions, export_model

    out = tmp_path_factory.mktemp("teacher") / "t"
    export_model(
        "detector-n",
        formats=["onnx"],
        out=out,
        options=ExportOptions(imgsz=(64, 64)),
        data=det64.parent / "images" / "train",
    )
    return out
