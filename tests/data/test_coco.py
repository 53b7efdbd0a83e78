"""Tests for COCO json datasets, name alignment, and the coco128 real-world check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from cvdeploy.data import (
    align_to_model,
    load_coco_dataset,
    load_detection_dataset,
)
from cvdeploy.errors import DatasetError


def _image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buffer = cv2.imencode(path.suffix, np.zeros((height, width, 3), np.uint8))
    assert ok
    path.write_bytes(buffer.tobytes())


def _coco(
    root: Path,
    *,
    split: str = "val2017",
    images_dir: Path | None = None,
    write_images: bool = True,
    **overrides: Any,
) -> Path:
    """A COCO layout: root/annotations/instances_<split>.json + root/images/<split>/."""
    data: dict[str, Any] = {
        "images": [
            {"id": 42, "file_name": "b.jpg", "width": 80, "height": 60},
            {"id": 7, "file_name": "a.jpg", "width": 40, "height": 30},
        ],
        "categories": [
            {"id": 18, "name": "dog"},
            {"id": 1, "name": "person"},
            {"id": 90, "name": "toothbrush"},
        ],
        "annotations": [
            {
                "id": 5,
                "image_id": 42,
                "category_id": 18,
                "bbox": [1, 2, 10, 20],
                "area": 150.5,
                "iscrowd": 0,
            },
            {
                "id": 6,
                "image_id": 42,
                "category_id": 1,
                "bbox": [0, 0, 40, 30],
                "area": 1200,
                "iscrowd": 1,
            },
            {"id": 9, "image_id": 7, "category_id": 1, "bbox": [5, 5, 10, 10]},
        ],
    }
    data.update(overrides)
    json_path = root / "annotations" / f"instances_{split}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data), encoding="utf-8")
    if write_images:
        folder = images_dir or root / "images" / split
        for img in data["images"]:
            _image(folder / img["file_name"], img["width"], img["height"])
    return json_path


def test_reads_non_contiguous_categories(tmp_path: Path) -> None:
    dataset = load_detection_dataset(_coco(tmp_path / "mycoco"))
    assert dataset.source_format == "coco"
    assert dataset.name == "mycoco"
    assert dataset.split == "val2017"
    assert dataset.root == tmp_path / "mycoco" / "images" / "val2017"
    assert dataset.names == ["person", "dog", "toothbrush"]  # category-id order
    assert dataset.category_ids == [1, 18, 90]
    assert [item.image_id for item in dataset.items] == [7, 42]  # sorted by id
    assert [(i.width, i.height) for i in dataset.items] == [(40, 30), (80, 60)]
    assert dataset.n_instances == 2
    gt = dataset.coco_gt()
    assert [a["id"] for a in gt["annotations"]] == [1, 2, 3]
    crowd = [a for a in gt["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["category_id"] == 1
    dog = next(a for a in gt["annotations"] if a["category_id"] == 18)
    assert dog["bbox"] == [1.0, 2.0, 10.0, 20.0]
    assert dog["area"] == 150.5  # the json's (mask) area is kept
    no_area = next(a for a in gt["annotations"] if a["image_id"] == 7)
    assert no_area["area"] == 100.0
    assert {c["id"]: c["name"] for c in gt["categories"]} == {
        1: "person",
        18: "dog",
        90: "toothbrush",
    }
    boxes, classes = dataset.ground_truth(42)  # crowd excluded
    np.testing.assert_allclose(boxes, [[1, 2, 11, 22]])
    assert classes.tolist() == [1]


def test_images_folder_discovery(tmp_path: Path) -> None:
    # <json folder>/images
    flat = _coco(tmp_path / "flat", images_dir=tmp_path / "flat" / "annotations" / "images")
    assert load_coco_dataset(flat).root == flat.parent / "images"
    # the json's own folder
    beside = _coco(tmp_path / "beside", images_dir=tmp_path / "beside" / "annotations")
    assert load_coco_dataset(beside).root == beside.parent
    # nowhere: ask for --images
    lost = _coco(tmp_path / "lost", images_dir=tmp_path / "elsewhere")
    with pytest.raises(DatasetError, match="cannot find the images") as info:
        load_coco_dataset(lost)
    assert "--images" in str(info.value)
    # given explicitly
    dataset = load_detection_dataset(lost, images=tmp_path / "elsewhere")
    assert len(dataset) == 2


def test_missing_images_are_listed(tmp_path: Path) -> None:
    json_path = _coco(tmp_path)
    (tmp_path / "images" / "val2017" / "b.jpg").unlink()
    with pytest.raises(DatasetError, match=r"1 of the 2 images .* b\.jpg"):
        load_coco_dataset(json_path, images=tmp_path / "images" / "val2017")


def test_size_mismatch_is_reported(tmp_path: Path) -> None:
    json_path = _coco(tmp_path)
    _image(tmp_path / "images" / "val2017" / "b.jpg", 60, 80)
    with pytest.raises(DatasetError, match=r"b\.jpg \(80x60 in the json, 60x80 on disk\)"):
        load_coco_dataset(json_path)
    assert len(load_coco_dataset(json_path, check_sizes=False)) == 2


def test_zero_based_image_ids_are_renumbered(tmp_path: Path) -> None:
    images = [
        {"id": 0, "file_name": "a.jpg", "width": 40, "height": 30},
        {"id": 1, "file_name": "b.jpg", "width": 80, "height": 60},
    ]
    annotations = [{"id": 0, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}]
    dataset = load_coco_dataset(_coco(tmp_path, images=images, annotations=annotations))
    assert [(i.path.name, i.image_id) for i in dataset.items] == [("a.jpg", 1), ("b.jpg", 2)]
    assert dataset.coco_gt()["annotations"][0]["image_id"] == 2


def test_missing_width_height_read_from_disk(tmp_path: Path) -> None:
    images = [{"id": 3, "file_name": "a.jpg"}]
    _image(tmp_path / "images" / "val2017" / "a.jpg", 33, 22)
    json_path = _coco(tmp_path, images=images, annotations=[], write_images=False)
    (item,) = load_coco_dataset(json_path).items
    assert (item.width, item.height) == (33, 22)


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (
            {"annotations": [{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1]}]},
            r"annotations\[0\] refers to image id 99",
        ),
        (
            {"annotations": [{"image_id": 7, "category_id": 2, "bbox": [0, 0, 1, 1]}]},
            r"annotations\[0\] refers to category id 2",
        ),
        ({"annotations": [{"image_id": 7, "category_id": 1, "bbox": [0, 0, -1, 1]}]}, "w, h >= 0"),
        ({"annotations": [{"image_id": 7, "category_id": 1, "bbox": [0, 0, 1]}]}, "bbox"),
        ({"categories": []}, "no 'categories'"),
        ({"categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}, "appears twice"),
        ({"images": []}, "lists no images"),
    ],
)
def test_malformed_json(tmp_path: Path, overrides: dict[str, Any], pattern: str) -> None:
    json_path = _coco(tmp_path, write_images=False, **overrides)
    with pytest.raises(DatasetError, match=pattern):
        load_coco_dataset(json_path, images=tmp_path)


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "instances_x.json"
    bad.write_text('{\n"images": [\n}', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"instances_x\.json:3: invalid JSON"):
        load_coco_dataset(bad)
    not_coco = tmp_path / "other.json"
    not_coco.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(DatasetError, match="not a COCO annotation file"):
        load_coco_dataset(not_coco)


# -- align_to_model -----------------------------------------------------------------------


def test_align_maps_model_classes_by_name(tmp_path: Path) -> None:
    dataset = load_coco_dataset(_coco(tmp_path))
    assert align_to_model(dataset, ["person", "dog", "toothbrush"]) is dataset
    aligned = align_to_model(dataset, ["dog", "cat", "person"])
    assert aligned.names == ["dog", "cat", "person"]
    assert aligned.category_ids[0] == 18 and aligned.category_ids[2] == 1
    assert aligned.category_ids[1] not in (1, 18, 90)  # a fresh id: no ground truth
    gt = aligned.coco_gt()
    assert [c["name"] for c in gt["categories"]] == ["dog", "cat", "person"]
    assert len(gt["annotations"]) == 3
    _, classes = aligned.ground_truth(42)
    assert classes.tolist() == [0]  # the dog is model class 0 now


def test_align_rejects_categories_with_boxes_but_no_model_class(tmp_path: Path) -> None:
    dataset = load_coco_dataset(_coco(tmp_path))
    with pytest.raises(DatasetError, match=r"'dog' \(id 18, 1 boxes\)"):
        align_to_model(dataset, ["person", "cat"])
    # toothbrush has no boxes, so a model without it is fine
    assert align_to_model(dataset, ["person", "dog"]).category_ids == [1, 18]


def test_align_without_common_names(tmp_path: Path) -> None:
    dataset = load_coco_dataset(_coco(tmp_path))
    with pytest.raises(DatasetError, match="share no class name") as info:
        align_to_model(dataset, ["0", "1", "2"])
    assert "'person'" in str(info.value) and "'0'" in str(info.value)


def test_align_rejects_repeated_model_names(tmp_path: Path) -> None:
    dataset = load_coco_dataset(_coco(tmp_path))
    with pytest.raises(DatasetError, match="repeat"):
        align_to_model(dataset, ["person", "dog", "dog"])


# -- real data ----------------------------------------------------------------------------


@pytest.mark.realworld
def test_coco128_yaml_and_json_agree(realworld: Path) -> None:
    root = realworld / "datasets" / "coco128"
    yolo = load_detection_dataset(root / "coco128.yaml", split="val")
    coco = load_detection_dataset(root / "annotations" / "instances_train2017.json")

    assert len(yolo) == len(coco) == 128
    assert yolo.names == coco.names and len(yolo.names) == 80
    assert coco.category_ids[:12] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13]
    assert align_to_model(coco, yolo.names) is coco
    assert len(coco.annotations) == 939
    assert sum(a.iscrowd for a in coco.annotations) == 10
    assert yolo.n_instances == coco.n_instances == 929
    backgrounds = [i.path.name for i in yolo.items if yolo.ground_truth(i.image_id)[0].size == 0]
    assert backgrounds == ["000000000250.jpg", "000000000508.jpg"]
    # the same image files with the same sizes
    by_name = {item.path.name: item for item in coco.items}
    assert set(by_name) == {item.path.name for item in yolo.items}
    for item in yolo.items:
        other = by_name[item.path.name]
        assert (item.width, item.height) == (other.width, other.height)
        # boxes agree within 1e-3 of the normalised coordinates, class by class
        boxes, classes = yolo.ground_truth(item.image_id)
        json_boxes, json_classes = coco.ground_truth(other.image_id)
        assert sorted(classes.tolist()) == sorted(json_classes.tolist())
        scale = np.array([item.width, item.height, item.width, item.height], np.float32)
        for box, cls in zip(boxes, classes, strict=True):
            candidates = json_boxes[json_classes == cls]
            error = np.abs(candidates - box) / scale
            assert error.max(axis=1).min() < 1e-3, (item.path.name, box)


@pytest.mark.realworld
def test_coco8_splits(realworld: Path) -> None:
    root = realworld / "datasets" / "coco8"
    for split in ("train", "val"):
        dataset = load_detection_dataset(root, split=split)
        assert len(dataset) == 4
        assert dataset.n_instances > 0
