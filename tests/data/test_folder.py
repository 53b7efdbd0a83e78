"""Tests for plain image folders and ImageNet-style classification folders."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from cvdeploy.data import align_classification, list_images, load_classification_dataset
from cvdeploy.errors import DatasetError, InputError


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buffer = cv2.imencode(path.suffix, np.zeros((8, 8, 3), np.uint8))
    assert ok
    path.write_bytes(buffer.tobytes())
    return path


def test_list_images_file_folder_and_several(tmp_path: Path) -> None:
    a = _image(tmp_path / "b" / "a.PNG")
    z = _image(tmp_path / "z.jpg")
    deep = _image(tmp_path / "b" / "sub" / "deep.webp")
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    _image(tmp_path / ".hidden.jpg")
    _image(tmp_path / ".cache" / "x.jpg")
    assert list_images(tmp_path) == sorted([a, z, deep])
    assert list_images(tmp_path, recursive=False) == [z]
    assert list_images(z) == [z]
    assert list_images([z, tmp_path / "b", a]) == sorted([a, deep, z])  # no duplicates
    assert list_images(str(tmp_path / "b")) == [a, deep]


def test_list_images_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        list_images(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    with pytest.raises(InputError, match="no images found") as info:
        list_images(tmp_path)
    assert ".jpg" in str(info.value)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_list_images_follows_links_without_looping(tmp_path: Path) -> None:
    real = _image(tmp_path / "real" / "a.jpg")
    (tmp_path / "real" / "loop").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "view").mkdir()
    (tmp_path / "view" / "linked").symlink_to(tmp_path / "real", target_is_directory=True)
    assert list_images(tmp_path / "real") == [real]
    assert list_images(tmp_path / "view") == [tmp_path / "view" / "linked" / "a.jpg"]


def test_classification_with_split(tmp_path: Path) -> None:
    for name in ("dog/1.jpg", "dog/2.jpg", "cat/x.png", "cat/more/y.png"):
        _image(tmp_path / "val" / name)
    (tmp_path / "val" / "emu").mkdir()  # a class without val images keeps its index
    _image(tmp_path / "train" / "ant" / "a.jpg")
    dataset = load_classification_dataset(tmp_path)
    assert dataset.split == "val"
    assert dataset.names == ["cat", "dog", "emu"]
    # sorted by class, then path ("cat/more/y.png" < "cat/x.png")
    assert [(i.path.name, i.label) for i in dataset.items] == [
        ("y.png", 0),
        ("x.png", 0),
        ("1.jpg", 1),
        ("2.jpg", 1),
    ]
    assert dataset.labels().tolist() == [0, 0, 1, 1]
    assert len(dataset) == 4
    assert len(dataset.source_hash()) == 64
    with pytest.raises(DatasetError, match=r"no 'test' split folder \(it has: train, val\)"):
        load_classification_dataset(tmp_path, split="test")


def test_classification_without_split(tmp_path: Path) -> None:
    _image(tmp_path / "b" / "1.jpg")
    _image(tmp_path / "a" / "1.jpg")
    dataset = load_classification_dataset(tmp_path, split="val")
    assert dataset.split == ""
    assert dataset.names == ["a", "b"]
    assert dataset.labels().tolist() == [0, 1]


def test_classification_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a folder"):
        load_classification_dataset(tmp_path / "missing")
    _image(tmp_path / "loose.jpg")
    with pytest.raises(DatasetError, match="no class sub-folders"):
        load_classification_dataset(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        load_classification_dataset(tmp_path)


def test_align_classification(tmp_path: Path) -> None:
    _image(tmp_path / "cat" / "1.jpg")
    _image(tmp_path / "dog" / "1.jpg")
    dataset = load_classification_dataset(tmp_path)
    assert align_classification(dataset, ["cat", "dog"]) is dataset
    aligned = align_classification(dataset, ["dog", "bird", "cat"])
    assert aligned.names == ["dog", "bird", "cat"]
    assert aligned.labels().tolist() == [2, 0]
    with pytest.raises(DatasetError, match="'dog'"):
        align_classification(dataset, ["cat", "bird"])
