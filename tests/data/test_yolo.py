"""Tests for Ultralytics (YOLO) datasets and the dataset entry point."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from cvdeploy.data import (
    DetectionDataset,
    align_to_model,
    label_path_for,
    load_detection_dataset,
    load_yolo_dataset,
)
from cvdeploy.errors import DatasetError, UsageError

NAMES = ["cat", "dog", "bird"]


def _image(path: Path, width: int = 100, height: int = 50) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buffer = cv2.imencode(path.suffix, np.full((height, width, 3), 90, np.uint8))
    assert ok
    path.write_bytes(buffer.tobytes())
    return path


def _label(image: Path, text: str) -> Path:
    label = label_path_for(image)
    label.parent.mkdir(parents=True, exist_ok=True)
    label.write_text(text, encoding="utf-8")
    return label


def _yaml(file: Path, /, **config: object) -> Path:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return file


def _dataset(root: Path, *, names: object = NAMES, **extra: object) -> Path:
    """Two val images (one labelled, one background) and one train image."""
    labelled = _image(root / "images" / "val" / "b.jpg")
    _image(root / "images" / "val" / "a.png", width=64, height=32)  # background: no label
    _label(labelled, "1 0.5 0.5 0.2 0.4\n0 0.25 0.5 0.5 1.0\n")
    _image(root / "images" / "train" / "t.jpg")
    config: dict[str, object] = {"train": "images/train", "val": "images/val", "names": names}
    config.update(extra)
    return _yaml(root / "data.yaml", **config)


def test_label_path_convention() -> None:
    assert label_path_for(Path("/d/images/val/x.jpg")) == Path("/d/labels/val/x.txt")
    # the last "images" folder is the one replaced
    assert label_path_for(Path("/images/d/images/v/x.png")) == Path("/images/d/labels/v/x.txt")
    # a file called images is not a folder
    assert label_path_for(Path("/d/imgs/images.jpg")) == Path("/d/imgs/images.txt")


def test_yaml_with_names_list(tmp_path: Path) -> None:
    dataset = load_detection_dataset(_dataset(tmp_path), split="val")
    assert isinstance(dataset, DetectionDataset)
    assert dataset.name == "data"
    assert dataset.split == "val"
    assert dataset.names == NAMES
    assert dataset.category_ids == [1, 2, 3]
    assert [item.path.name for item in dataset.items] == ["a.png", "b.jpg"]  # sorted by path
    assert [item.image_id for item in dataset.items] == [1, 2]
    assert [(item.width, item.height) for item in dataset.items] == [(64, 32), (100, 50)]
    assert len(dataset) == 2
    assert dataset.n_instances == 2
    assert "images=2" in repr(dataset)


def test_coco_gt_boxes_in_pixels(tmp_path: Path) -> None:
    gt = load_detection_dataset(_dataset(tmp_path)).coco_gt()
    assert gt["images"] == [
        {"id": 1, "file_name": "images/val/a.png", "width": 64, "height": 32},
        {"id": 2, "file_name": "images/val/b.jpg", "width": 100, "height": 50},
    ]
    assert gt["categories"] == [
        {"id": 1, "name": "cat"},
        {"id": 2, "name": "dog"},
        {"id": 3, "name": "bird"},
    ]
    # "1 0.5 0.5 0.2 0.4" on 100x50: x = (0.5 - 0.1) * 100, y = (0.5 - 0.2) * 50, w = 20, h = 20
    # "0 0.25 0.5 0.5 1.0": x = 0, y = 0, w = 50, h = 50
    anns = gt["annotations"]
    assert [a["id"] for a in anns] == [1, 2]
    assert [(a["image_id"], a["category_id"], a["iscrowd"]) for a in anns] == [
        (2, 2, 0),
        (2, 1, 0),
    ]
    np.testing.assert_allclose(anns[0]["bbox"], [40.0, 15.0, 20.0, 20.0])
    np.testing.assert_allclose(anns[1]["bbox"], [0.0, 0.0, 50.0, 50.0])
    assert anns[0]["area"] == pytest.approx(400.0)


def test_ground_truth_per_image(tmp_path: Path) -> None:
    dataset = load_detection_dataset(_dataset(tmp_path))
    boxes, classes = dataset.ground_truth(2)
    np.testing.assert_allclose(boxes, [[40, 15, 60, 35], [0, 0, 50, 50]])
    assert classes.tolist() == [1, 0]
    empty_boxes, empty_classes = dataset.ground_truth(1)
    assert empty_boxes.shape == (0, 4) and empty_classes.shape == (0,)


def test_names_as_dict_and_folder_input(tmp_path: Path) -> None:
    _dataset(tmp_path, names={0: "cat", 2: "bird", 1: "dog"})
    dataset = load_detection_dataset(tmp_path)  # a folder with one yaml
    assert dataset.names == NAMES


def test_names_dict_with_gap(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"missing: \[1\]"):
        load_detection_dataset(_dataset(tmp_path, names={0: "cat", 2: "bird"}))


def test_nc_must_agree(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nc is 4"):
        load_detection_dataset(_dataset(tmp_path, nc=4))


def test_relative_and_absolute_path_key(tmp_path: Path) -> None:
    root = tmp_path / "datasets" / "mine"
    _dataset(root)
    relative = _yaml(
        tmp_path / "configs" / "mine.yaml",
        path="../datasets/mine",
        val="images/val",
        names=NAMES,
    )
    dataset = load_detection_dataset(relative)
    assert len(dataset) == 2
    assert dataset.root == tmp_path / "configs" / "../datasets/mine"
    absolute = _yaml(tmp_path / "abs.yaml", path=str(root), val="images/val", names=NAMES)
    assert len(load_detection_dataset(absolute)) == 2
    missing = _yaml(tmp_path / "bad.yaml", path="nowhere", val="images/val", names=NAMES)
    with pytest.raises(DatasetError, match="nowhere"):
        load_detection_dataset(missing)


def test_list_of_folders_and_txt_list(tmp_path: Path) -> None:
    _dataset(tmp_path)
    listed = _yaml(tmp_path / "list.yaml", val=["images/val", "images/train"], names=NAMES)
    assert len(load_detection_dataset(listed)) == 3
    (tmp_path / "val.txt").write_text(
        "./images/val/b.jpg\n\nimages/train/t.jpg\n", encoding="utf-8"
    )
    txt = _yaml(tmp_path / "txt.yaml", val="val.txt", names=NAMES)
    dataset = load_detection_dataset(txt)
    assert [item.path.name for item in dataset.items] == ["t.jpg", "b.jpg"]  # path order
    assert dataset.n_instances == 2


def test_txt_list_with_missing_image(tmp_path: Path) -> None:
    _dataset(tmp_path)
    (tmp_path / "val.txt").write_text("images/val/b.jpg\nimages/val/gone.jpg\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"val\.txt:2: images/val/gone\.jpg"):
        load_detection_dataset(_yaml(tmp_path / "txt.yaml", val="val.txt", names=NAMES))


def test_empty_label_file_is_background(tmp_path: Path) -> None:
    _dataset(tmp_path)
    _label(tmp_path / "images" / "val" / "a.png", "\n  \n")
    dataset = load_detection_dataset(tmp_path / "data.yaml")
    assert dataset.n_instances == 2
    assert len(dataset.source_files) == 2


def test_class_id_outside_names(tmp_path: Path) -> None:
    yaml_path = _dataset(tmp_path)
    label = _label(
        tmp_path / "images" / "val" / "b.jpg", "0 0.5 0.5 0.1 0.1\n\n3 0.5 0.5 0.1 0.1\n"
    )
    with pytest.raises(DatasetError) as info:
        load_detection_dataset(yaml_path)
    message = str(info.value)
    assert f"{label}:3" in message
    assert "class id 3" in message
    assert "3 names" in message
    assert "0..2" in message


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ("0 0.5 0.5 0.1", "4 values; expected 5"),
        ("0 0.5 abc 0.1 0.1", "'abc' is not a number"),
        ("0.5 0.5 0.5 0.1 0.1", "not an integer"),
        ("0 0.5 0.5 1.5 0.1", r"coordinate 1.5 is not within \[0, 1\]"),
        ("0 320 240 50 60", "not within"),
        ("0 0.5 0.5 nan 0.1", "not within"),
        ("0 0.1 0.1 0.2 0.2 0.3", "6 values"),
    ],
)
def test_malformed_label_lines(tmp_path: Path, line: str, pattern: str) -> None:
    yaml_path = _dataset(tmp_path)
    label = _label(tmp_path / "images" / "val" / "b.jpg", f"1 0.5 0.5 0.2 0.2\n{line}\n")
    with pytest.raises(DatasetError, match=pattern) as info:
        load_detection_dataset(yaml_path)
    assert f"{label}:2" in str(info.value)


def test_segment_labels_become_their_bounding_box(tmp_path: Path) -> None:
    yaml_path = _dataset(tmp_path)
    # triangle (0.1, 0.2), (0.5, 0.2), (0.3, 0.6) on 100x50 -> x 10..50, y 10..30
    _label(tmp_path / "images" / "val" / "b.jpg", "2 0.1 0.2 0.5 0.2 0.3 0.6\n")
    gt = load_detection_dataset(yaml_path).coco_gt()
    (ann,) = gt["annotations"]
    assert ann["category_id"] == 3
    np.testing.assert_allclose(ann["bbox"], [10.0, 10.0, 40.0, 20.0])


def test_pose_labels_use_the_box(tmp_path: Path) -> None:
    yaml_path = _dataset(tmp_path, kpt_shape=[2, 3])
    _label(tmp_path / "images" / "val" / "b.jpg", "0 0.5 0.5 0.2 0.4 0.1 0.1 2 0.2 0.2 2\n")
    (ann,) = load_detection_dataset(yaml_path).coco_gt()["annotations"]
    np.testing.assert_allclose(ann["bbox"], [40.0, 15.0, 20.0, 20.0])


def test_small_overshoot_is_clipped_and_duplicates_dropped(tmp_path: Path) -> None:
    yaml_path = _dataset(tmp_path)
    _label(
        tmp_path / "images" / "val" / "b.jpg",
        "0 0.9 0.5 0.2 1.0005\n0 0.9 0.5 0.2 1.0005\n",
    )
    (ann,) = load_detection_dataset(yaml_path).coco_gt()["annotations"]
    # x 80..100 (the box would reach 100 only), y clipped to the image
    np.testing.assert_allclose(ann["bbox"], [80.0, 0.0, 20.0, 50.0])


def test_missing_split(tmp_path: Path) -> None:
    yaml_path = _dataset(tmp_path)
    with pytest.raises(DatasetError, match=r"no 'test' split \(it has: train, val\)"):
        load_detection_dataset(yaml_path, split="test")
    gone = _yaml(tmp_path / "gone.yaml", val="images/nothing", names=NAMES)
    with pytest.raises(DatasetError, match="does not exist"):
        load_detection_dataset(gone)


def test_empty_split(tmp_path: Path) -> None:
    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "images" / "val" / "notes.txt").write_text("x", encoding="utf-8")
    yaml_path = _yaml(tmp_path / "data.yaml", val="images/val", names=NAMES)
    with pytest.raises(DatasetError, match="holds no images"):
        load_detection_dataset(yaml_path)


def test_bad_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("names: [a, b\nval: x\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_detection_dataset(bad)
    no_names = _yaml(tmp_path / "nonames.yaml", val="images")
    with pytest.raises(DatasetError, match="no 'names'"):
        load_detection_dataset(no_names)


def test_unicode_paths(tmp_path: Path) -> None:
    root = tmp_path / "jeu de données" / "数据"
    yaml_path = _dataset(root, names=["chat", "chien", "oiseau"])
    dataset = load_detection_dataset(yaml_path)
    assert dataset.n_instances == 2
    assert dataset.items[1].width == 100


def test_entry_point_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_detection_dataset(tmp_path / "missing.yaml")
    with pytest.raises(DatasetError, match="no data yaml"):
        load_detection_dataset(tmp_path)
    _yaml(tmp_path / "a.yaml", val="x", names=NAMES)
    _yaml(tmp_path / "b.yml", val="x", names=NAMES)
    with pytest.raises(DatasetError, match=r"several yaml files: a\.yaml, b\.yml"):
        load_detection_dataset(tmp_path)
    other = tmp_path / "x.csv"
    other.write_text("", encoding="utf-8")
    with pytest.raises(DatasetError, match="neither"):
        load_detection_dataset(other)
    with pytest.raises(UsageError, match="only used with a COCO json"):
        load_detection_dataset(tmp_path / "a.yaml", images=tmp_path)


def test_source_hash_tracks_the_file_list(tmp_path: Path) -> None:
    yaml_path = _dataset(tmp_path)
    first = load_detection_dataset(yaml_path).source_hash()
    assert first == load_detection_dataset(yaml_path).source_hash()
    assert len(first) == 64
    _image(tmp_path / "images" / "val" / "c.jpg")
    assert load_detection_dataset(yaml_path).source_hash() != first


def test_align_yolo_requires_same_names(tmp_path: Path) -> None:
    dataset = load_yolo_dataset(_dataset(tmp_path))
    assert align_to_model(dataset, NAMES) is dataset
    with pytest.raises(DatasetError, match="class 1 is 'dog' in the dataset but 'wolf'"):
        align_to_model(dataset, ["cat", "wolf", "bird"])
    with pytest.raises(DatasetError, match="3 names and the model 4"):
        align_to_model(dataset, [*NAMES, "fish"])
