"""Synthetic shape datasets: determinism, label validity, layout."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from cvdeploy.data.synthetic import SHAPE_NAMES, make_classification_dataset, make_detection_dataset


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def det_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("det")
    make_detection_dataset(out, n_train=60, n_val=12, imgsz=128, seed=3)
    return out


def test_detection_layout_and_yaml(det_dataset: Path) -> None:
    cfg = yaml.safe_load((det_dataset / "data.yaml").read_text())
    assert cfg["path"] == "."
    assert cfg["train"] == "images/train"
    assert cfg["val"] == "images/val"
    assert cfg["names"] == dict(enumerate(SHAPE_NAMES))
    assert 5 <= len(SHAPE_NAMES) <= 8
    for split, n in (("train", 60), ("val", 12)):
        images = sorted((det_dataset / "images" / split).glob("*.jpg"))
        labels = sorted((det_dataset / "labels" / split).glob("*.txt"))
        assert len(images) == len(labels) == n
        assert [p.stem for p in images] == [p.stem for p in labels]
    img = cv2.imread(str(next((det_dataset / "images" / "train").glob("*.jpg"))))
    assert img.shape == (128, 128, 3)


def test_detection_labels_are_valid(det_dataset: Path) -> None:
    rows = []
    n_empty = 0
    for f in (det_dataset / "labels").rglob("*.txt"):
        lines = [ln for ln in f.read_text().splitlines() if ln.strip()]
        n_empty += not lines
        rows += [[float(v) for v in ln.split()] for ln in lines]
    arr = np.array(rows)
    assert arr.shape[1] == 5
    cls, cx, cy, w, h = arr.T
    assert np.all(cls == cls.round()) and cls.min() >= 0 and cls.max() < len(SHAPE_NAMES)
    assert np.all((w > 0) & (h > 0))
    assert np.all((cx - w / 2 >= -1e-6) & (cx + w / 2 <= 1 + 1e-6))
    assert np.all((cy - h / 2 >= -1e-6) & (cy + h / 2 <= 1 + 1e-6))
    assert len(np.unique(cls)) == len(SHAPE_NAMES)  # every class appears
    side = np.maximum(w, h) * 256  # sizes scale with imgsz: compare at the default 256 px
    assert (side < 16).any() and (side >= 16).mean() > 0.75  # a few small ones, mostly not
    assert n_empty >= 1 or len(rows) == 0


def test_detection_has_empty_images(tmp_path: Path) -> None:
    make_detection_dataset(tmp_path, n_train=100, n_val=0, imgsz=64, seed=0)
    empty = [f for f in (tmp_path / "labels" / "train").glob("*.txt") if not f.read_text().strip()]
    assert empty, "expected some images without objects"


def test_detection_boxes_cover_drawn_pixels(tmp_path: Path) -> None:
    """Each box must enclose pixels that differ from a plain background (a real object)."""
    make_detection_dataset(tmp_path, n_train=10, n_val=0, imgsz=128, seed=1)
    for f in (tmp_path / "labels" / "train").glob("*.txt"):
        img = cv2.imread(str(tmp_path / "images" / "train" / f"{f.stem}.jpg")).astype(np.float32)
        for line in f.read_text().splitlines():
            _, cx, cy, w, h = (float(v) for v in line.split())
            x1, y1 = round((cx - w / 2) * 128), round((cy - h / 2) * 128)
            x2, y2 = round((cx + w / 2) * 128), round((cy + h / 2) * 128)
            assert x2 > x1 and y2 > y1
            assert img[y1:y2, x1:x2].size > 0


def test_detection_is_deterministic(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    make_detection_dataset(a, n_train=8, n_val=3, imgsz=96, seed=7)
    make_detection_dataset(b, n_train=8, n_val=3, imgsz=96, seed=7)
    make_detection_dataset(c, n_train=8, n_val=3, imgsz=96, seed=8)
    assert _digest(a) == _digest(b)
    da, dc = _digest(a), _digest(c)
    assert da.keys() == dc.keys()
    assert sum(da[k] != dc[k] for k in da) > len(da) // 2


def test_split_sizes_do_not_change_other_split(tmp_path: Path) -> None:
    make_detection_dataset(tmp_path / "a", n_train=4, n_val=2, imgsz=64, seed=0)
    make_detection_dataset(tmp_path / "b", n_train=6, n_val=2, imgsz=64, seed=0)
    assert _digest(tmp_path / "a" / "labels" / "val") == _digest(tmp_path / "b" / "labels" / "val")


def test_classification_dataset(tmp_path: Path) -> None:
    root = make_classification_dataset(
        tmp_path / "cls", n_per_class_train=3, n_per_class_val=2, imgsz=48, seed=0
    )
    for split, n in (("train", 3), ("val", 2)):
        folders = sorted(p.name for p in (root / split).iterdir())
        assert folders == sorted(SHAPE_NAMES)
        for name in folders:
            files = sorted((root / split / name).glob("*.png"))
            assert len(files) == n
            assert cv2.imread(str(files[0])).shape == (48, 48, 3)
    again = make_classification_dataset(
        tmp_path / "cls2", n_per_class_train=3, n_per_class_val=2, imgsz=48, seed=0
    )
    assert _digest(root) == _digest(again)
