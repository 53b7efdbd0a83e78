"""Ultralytics (YOLO) detection datasets: a data yaml plus one label ``.txt`` per image.

The data yaml::

    path: ../datasets/coco128   # dataset root; relative to the yaml's folder; default: it
    train: images/train2017     # a folder, a list of folders, or a .txt listing images
    val: images/train2017
    names: {0: person, 1: bicycle}   # or a list

Split entries are relative to ``path``. Image paths inside a ``.txt`` list are relative to
the list's folder (Ultralytics resolves ``./``-prefixed lines that way). Folders are
searched recursively.

Each image's labels are at the Ultralytics location: the last ``images`` folder of the
image path replaced with ``labels`` and the suffix with ``.txt`` (next to the image when the
path has no ``images`` folder). A missing or empty label file means a background image.

A label line is ``class cx cy w h``, coordinates normalised to ``[0, 1]`` by the image
width and height (values up to 1e-3 outside are clipped). A line with more values is a
segment, ``class x1 y1 x2 y2 ...`` (at least three points), and its box is the polygon's
bounding box; when the yaml has ``kpt_shape`` (pose labels) the first four values after the
class are the box and the keypoints are ignored. Exact duplicate lines are counted once (as
Ultralytics does). Boxes are converted to pixels with the image size and clipped to the
image.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cvdeploy.data.base import BoxAnnotation, DetectionDataset, ImageItem
from cvdeploy.data.folder import scan_images
from cvdeploy.data.io import image_size, is_image_file
from cvdeploy.errors import DatasetError

__all__ = ["label_path_for", "load_yolo_dataset", "read_yolo_labels"]

COORD_TOLERANCE = 1e-3
"""How far outside ``[0, 1]`` a normalised coordinate may be (it is then clipped)."""

_MAX_LISTED = 5


def load_yolo_dataset(yaml_path: Path | str, *, split: str = "val") -> DetectionDataset:
    """Read one split of an Ultralytics detection dataset.

    Images get ids 1..N in path order; class ``i`` gets COCO category id ``i + 1``.

    Args:
        yaml_path: The data yaml.
        split: The yaml key of the split (``train``, ``val``, ``test``).

    Returns:
        The dataset with pixel ground truth boxes.

    Raises:
        DatasetError: The yaml, a split entry or a label line is malformed (the message
            names the file and line), or the split holds no image.
    """
    yaml_path = Path(yaml_path)
    config = _read_yaml(yaml_path)
    names = _parse_names(config, yaml_path)
    root = _dataset_root(config, yaml_path)
    entry = config.get(split)
    if entry is None or entry == "" or entry == []:
        available = [k for k in ("train", "val", "test") if config.get(k) not in (None, "", [])]
        raise DatasetError(
            f"{yaml_path} has no {split!r} split"
            + (f" (it has: {', '.join(available)})" if available else ""),
            hint=f"choose a split the yaml defines, or add '{split}: <images folder>' to it",
        )
    images = _split_images(entry, root=root, yaml_path=yaml_path, split=split)
    if not images:
        raise DatasetError(
            f"split {split!r} of {yaml_path} holds no images (looked in: {entry})",
            hint="check the split's folder and the yaml's 'path'",
        )
    keypoints = config.get("kpt_shape") is not None
    items: list[ImageItem] = []
    annotations: list[BoxAnnotation] = []
    label_files: list[Path] = []
    for image_id, image in enumerate(images, start=1):
        width, height = image_size(image)
        items.append(ImageItem(path=image, image_id=image_id, width=width, height=height))
        label_file = label_path_for(image)
        if not label_file.is_file():
            continue
        label_files.append(label_file)
        rows = read_yolo_labels(
            label_file, num_classes=len(names), keypoints=keypoints, names_source=yaml_path
        )
        annotations.extend(_to_pixels(rows, image_id=image_id, width=width, height=height))
    return DetectionDataset(
        name=yaml_path.stem,
        root=root,
        split=split,
        names=names,
        items=items,
        category_ids=list(range(1, len(names) + 1)),
        annotations=annotations,
        source_format="yolo",
        source_files=label_files,
    )


def label_path_for(image: Path) -> Path:
    """Return where Ultralytics looks for an image's label file.

    The last ``images`` folder in the path becomes ``labels`` and the suffix ``.txt``:
    ``data/images/val/a.jpg`` -> ``data/labels/val/a.txt``. Without an ``images`` folder
    the label file sits next to the image.

    Args:
        image: The image path.
    """
    parts = list(image.parts)
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] == "images":
            parts[index] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def read_yolo_labels(
    path: Path,
    *,
    num_classes: int,
    keypoints: bool = False,
    names_source: Path | str = "the data yaml",
) -> np.ndarray:
    """Read and validate one YOLO label file.

    Args:
        path: The label ``.txt`` file.
        num_classes: Number of class names; class ids must be in ``0..num_classes-1``.
        keypoints: Pose labels: the box is the first four values after the class.
        names_source: Where the names come from, for error messages.

    Returns:
        ``float64`` array ``(n, 5)``: class, cx, cy, w, h (normalised, clipped to [0, 1]),
        duplicate lines removed, in file order.

    Raises:
        DatasetError: A line is malformed; the message names ``file:line``.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(
            f"cannot read label file {path}: {exc}",
            hint="label files are UTF-8 text, one 'class cx cy w h' per line",
        ) from exc
    rows: list[tuple[float, ...]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            rows.append(
                _parse_line(
                    line,
                    where=f"{path}:{number}",
                    num_classes=num_classes,
                    keypoints=keypoints,
                    names_source=names_source,
                )
            )
    if not rows:
        return np.zeros((0, 5), dtype=np.float64)
    array = np.array(rows, dtype=np.float64)
    _, first = np.unique(array, axis=0, return_index=True)
    return array[np.sort(first)]


def _parse_line(
    line: str, *, where: str, num_classes: int, keypoints: bool, names_source: Path | str
) -> tuple[float, float, float, float, float]:
    fmt_hint = "a label line is 'class cx cy w h' with coordinates normalised to [0, 1]"
    values: list[float] = []
    for token in line.split():
        try:
            values.append(float(token))
        except ValueError:
            raise DatasetError(f"{where}: {token!r} is not a number", hint=fmt_hint) from None
    if len(values) < 5:
        raise DatasetError(
            f"{where}: {len(values)} values; expected 5 (class cx cy w h)", hint=fmt_hint
        )
    cls = values[0]
    if not math.isfinite(cls) or not cls.is_integer():
        raise DatasetError(
            f"{where}: class id {line.split()[0]!r} is not an integer", hint=fmt_hint
        )
    if not 0 <= cls < num_classes:
        raise DatasetError(
            f"{where}: class id {int(cls)} is outside the {num_classes} names of "
            f"{names_source} (valid ids: 0..{num_classes - 1})",
            hint="fix the label, or add the missing class names to the yaml's 'names'",
        )
    coords = values[1:5] if keypoints else values[1:]  # keypoints are not validated
    for value in coords:
        if not math.isfinite(value) or not -COORD_TOLERANCE <= value <= 1 + COORD_TOLERANCE:
            raise DatasetError(
                f"{where}: coordinate {value} is not within [0, 1]",
                hint="YOLO coordinates are normalised by the image size; divide pixel "
                "values by the image width (x) and height (y)",
            )
    coords = [min(max(v, 0.0), 1.0) for v in coords]
    if len(values) == 5 or keypoints:
        cx, cy, w, h = coords[:4]
    elif len(coords) % 2 == 0 and len(coords) >= 6:
        xs, ys = coords[0::2], coords[1::2]
        w, h = max(xs) - min(xs), max(ys) - min(ys)
        cx, cy = min(xs) + w / 2, min(ys) + h / 2
    else:
        raise DatasetError(
            f"{where}: {len(values)} values; expected 5 (class cx cy w h) or a class "
            "followed by an even number (>= 6) of polygon coordinates",
            hint=fmt_hint + "; pose labels need 'kpt_shape' in the yaml",
        )
    return cls, cx, cy, w, h


def _to_pixels(rows: np.ndarray, *, image_id: int, width: int, height: int) -> list[BoxAnnotation]:
    out: list[BoxAnnotation] = []
    for cls, cx, cy, w, h in rows.tolist():
        x1 = max((cx - w / 2) * width, 0.0)
        y1 = max((cy - h / 2) * height, 0.0)
        x2 = min((cx + w / 2) * width, float(width))
        y2 = min((cy + h / 2) * height, float(height))
        bw, bh = max(x2 - x1, 0.0), max(y2 - y1, 0.0)
        out.append(
            BoxAnnotation(
                image_id=image_id,
                category_id=int(cls) + 1,
                bbox=(x1, y1, bw, bh),
                area=bw * bh,
            )
        )
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"data yaml {path} does not exist", hint="check the path")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or exc
        raise DatasetError(f"{where}: invalid YAML: {problem}", hint="fix the yaml syntax") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read data yaml {path}: {exc}", hint="check the file") from exc
    if not isinstance(config, dict):
        raise DatasetError(
            f"data yaml {path} is not a mapping",
            hint="a data yaml has keys path, train, val and names",
        )
    return config


def _parse_names(config: dict[str, Any], yaml_path: Path) -> list[str]:
    raw = config.get("names")
    if isinstance(raw, dict):
        try:
            keys = sorted(int(k) for k in raw)
        except (TypeError, ValueError):
            raise DatasetError(
                f"{yaml_path}: 'names' keys must be class ids 0, 1, 2, ...",
                hint="write names as a list, or as {0: name0, 1: name1, ...}",
            ) from None
        if keys != list(range(len(keys))):
            missing = sorted(set(range(max(keys, default=-1) + 1)) - set(keys))
            raise DatasetError(
                f"{yaml_path}: 'names' ids must run 0..{len(keys) - 1} without gaps"
                + (f"; missing: {missing[:10]}" if missing else ""),
                hint="number the classes consecutively from 0",
            )
        by_id = {int(k): v for k, v in raw.items()}
        names = [str(by_id[k]) for k in keys]
    elif isinstance(raw, list):
        names = [str(n) for n in raw]
    else:
        raise DatasetError(
            f"{yaml_path} has no 'names' list or mapping",
            hint="add names: [class0, class1, ...] to the yaml",
        )
    if not names:
        raise DatasetError(f"{yaml_path}: 'names' is empty", hint="list the class names")
    nc = config.get("nc")
    if nc is not None and nc != len(names):
        raise DatasetError(
            f"{yaml_path}: nc is {nc} but 'names' lists {len(names)} classes",
            hint="make nc equal to the number of names, or remove nc",
        )
    return names


def _dataset_root(config: dict[str, Any], yaml_path: Path) -> Path:
    raw = config.get("path")
    if raw in (None, ""):
        return yaml_path.parent
    root = Path(str(raw)).expanduser()
    if not root.is_absolute():
        root = yaml_path.parent / root
    if not root.is_dir():
        raise DatasetError(
            f"{yaml_path}: dataset root 'path: {raw}' resolves to {root}, which is not a folder",
            hint="a relative 'path' is taken relative to the yaml's folder; fix it or remove "
            "it to use the yaml's folder",
        )
    return root


def _split_images(entry: Any, *, root: Path, yaml_path: Path, split: str) -> list[Path]:
    entries = entry if isinstance(entry, list) else [entry]
    found: set[Path] = set()
    for item in entries:
        if not isinstance(item, str):
            raise DatasetError(
                f"{yaml_path}: split {split!r} entry {item!r} is not a path",
                hint="a split is a folder, a list of folders, or a .txt list of images",
            )
        path = Path(item).expanduser()
        if not path.is_absolute():
            path = root / path
        if path.is_dir():
            found.update(scan_images(path, recursive=True))
        elif path.is_file() and path.suffix.lower() == ".txt":
            found.update(_read_image_list(path))
        elif path.is_file() and is_image_file(path):
            found.add(path)
        else:
            raise DatasetError(
                f"{yaml_path}: split {split!r} entry {item!r} resolves to {path}, which "
                + ("is not a folder, image or .txt list" if path.exists() else "does not exist"),
                hint=f"entries are relative to the dataset root {root}",
            )
    return sorted(found)


def _read_image_list(path: Path) -> list[Path]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read image list {path}: {exc}", hint="check the file") from exc
    images: list[Path] = []
    missing: list[str] = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        image = Path(text).expanduser()
        if not image.is_absolute():
            image = path.parent / image
        if image.is_file():
            images.append(image)
        else:
            missing.append(f"{path}:{number}: {text}")
    if missing:
        raise DatasetError(
            f"{len(missing)} images listed in {path} do not exist: "
            + "; ".join(missing[:_MAX_LISTED])
            + (" ..." if len(missing) > _MAX_LISTED else ""),
            hint="relative paths in an image list are relative to the list's folder",
        )
    return images
