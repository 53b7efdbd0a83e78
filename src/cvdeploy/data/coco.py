"""COCO detection datasets: an annotation json plus a folder of images.

Class names are the json's categories in category-id order, and ``category_ids`` keeps
their ids (COCO's are 1..90 with gaps). Crowd annotations are kept as they are: COCO
evaluation ignores detections matched to them. Image ids are kept, unless some are below 1
(Roboflow and others export ids from 0): then all images are renumbered 1..N in id order.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, TypeGuard

from cvdeploy.data.base import BoxAnnotation, DetectionDataset, ImageItem
from cvdeploy.data.io import image_size
from cvdeploy.errors import DatasetError

__all__ = ["find_coco_images_dir", "load_coco_dataset"]

_MAX_LISTED = 5


def load_coco_dataset(
    json_path: Path | str, *, images: Path | str | None = None, check_sizes: bool = True
) -> DetectionDataset:
    """Read a COCO annotation json and locate its images.

    Args:
        json_path: The annotation file, e.g. ``annotations/instances_val2017.json``.
        images: The folder the json's ``file_name`` entries are relative to; found with
            :func:`find_coco_images_dir` when omitted.
        check_sizes: Compare each image's size on disk (as :func:`cvdeploy.data.read_image`
            returns it) with the json's width/height; a mismatch would silently misplace
            every box.

    Returns:
        The dataset, items sorted by image id.

    Raises:
        DatasetError: The json is malformed or inconsistent, the images folder cannot be
            found, listed images are missing or have another size, or it lists no image.
    """
    json_path = Path(json_path).expanduser()
    data = _read_json(json_path)
    names, category_ids = _categories(data, json_path)
    records = _image_records(data, json_path)
    if not records:
        raise DatasetError(
            f"{json_path} lists no images", hint="check that this is a detection annotation file"
        )
    known_categories = set(category_ids)
    remap = {old: new for new, old in enumerate(sorted(records), start=1)}
    if all(old >= 1 for old in records):
        remap = {old: old for old in records}
    annotations = _annotations(data, json_path, remap=remap, categories=known_categories)

    first_name = records[min(records)]["file_name"]
    images_dir = (
        Path(images).expanduser()
        if images is not None
        else find_coco_images_dir(json_path, first_file=first_name)
    )
    if not images_dir.is_dir():
        raise DatasetError(
            f"images folder {images_dir} does not exist",
            hint="pass the folder holding the json's images with --images",
        )
    items = _items(
        records, images_dir=images_dir, remap=remap, json_path=json_path, check_sizes=check_sizes
    )
    return DetectionDataset(
        name=_dataset_name(json_path),
        root=images_dir,
        split=json_path.stem.rsplit("_", 1)[-1],
        names=names,
        items=items,
        category_ids=category_ids,
        annotations=annotations,
        source_format="coco",
        source_files=[json_path],
    )


def find_coco_images_dir(json_path: Path, *, first_file: str) -> Path:
    """Find the images folder of a COCO json laid out in one of the usual ways.

    Tried in order: ``<json folder>/../images/<split>`` where ``<split>`` is the json stem
    after its last underscore (``instances_val2017`` -> ``images/val2017``), then
    ``<json folder>/images``, then the json's folder. The first holding ``first_file``
    wins.

    Args:
        json_path: The annotation file.
        first_file: A ``file_name`` from the json, to recognise the right folder.

    Returns:
        The images folder.

    Raises:
        DatasetError: None of the candidates holds ``first_file``.
    """
    split = json_path.stem.rsplit("_", 1)[-1]
    candidates = [
        json_path.parent.parent / "images" / split,
        json_path.parent / "images",
        json_path.parent,
    ]
    for candidate in candidates:
        if (candidate / first_file).is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise DatasetError(
        f"cannot find the images of {json_path} (looked for {first_file} in: {tried})",
        hint="pass the folder holding the json's images with --images",
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"COCO annotation file {path} does not exist", hint="check the path")
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{path}:{exc.lineno}: invalid JSON: {exc.msg}",
            hint="the file is damaged or not JSON; re-export it",
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}", hint="check the file") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(
            f"{path} is not a COCO annotation file (no 'images' list)",
            hint="pass an instances_*.json with images, annotations and categories",
        )
    return data


def _categories(data: dict[str, Any], path: Path) -> tuple[list[str], list[int]]:
    raw = data.get("categories")
    if not isinstance(raw, list) or not raw:
        raise DatasetError(
            f"{path} has no 'categories' list",
            hint="a detection json lists its categories with id and name",
        )
    by_id: dict[int, str] = {}
    for index, cat in enumerate(raw):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or "name" not in cat:
            raise DatasetError(
                f"{path}: categories[{index}] lacks an integer id or a name",
                hint='each category is {"id": int, "name": str}',
            )
        cid = int(cat["id"])
        if cid in by_id:
            raise DatasetError(
                f"{path}: category id {cid} appears twice", hint="give every category its own id"
            )
        by_id[cid] = str(cat["name"])
    ids = sorted(by_id)
    return [by_id[i] for i in ids], ids


def _image_records(data: dict[str, Any], path: Path) -> dict[int, dict[str, Any]]:
    records: dict[int, dict[str, Any]] = {}
    for index, img in enumerate(data["images"]):
        if (
            not isinstance(img, dict)
            or not _is_int(img.get("id"))
            or not isinstance(img.get("file_name"), str)
        ):
            raise DatasetError(
                f"{path}: images[{index}] lacks an integer id or a file_name",
                hint='each image is {"id": int, "file_name": str, ...}',
            )
        image_id = int(img["id"])
        if image_id in records:
            raise DatasetError(
                f"{path}: image id {image_id} appears twice", hint="give every image its own id"
            )
        records[image_id] = img
    return records


def _annotations(
    data: dict[str, Any], path: Path, *, remap: dict[int, int], categories: set[int]
) -> list[BoxAnnotation]:
    raw = data.get("annotations", [])
    if not isinstance(raw, list):
        raise DatasetError(f"{path}: 'annotations' is not a list", hint="re-export the json")
    out: list[BoxAnnotation] = []
    for index, ann in enumerate(raw):
        where = f"{path}: annotations[{index}]"
        if not isinstance(ann, dict):
            raise DatasetError(f"{where} is not an object", hint="re-export the json")
        if ann.get("image_id") not in remap:
            raise DatasetError(
                f"{where} refers to image id {ann.get('image_id')!r}, which is not in 'images'",
                hint="fix or remove it",
            )
        if ann.get("category_id") not in categories:
            raise DatasetError(
                f"{where} refers to category id {ann.get('category_id')!r}, "
                "which is not in 'categories'",
                hint="fix or remove it",
            )
        bbox = ann.get("bbox")
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
            or bbox[2] < 0
            or bbox[3] < 0
        ):
            raise DatasetError(
                f"{where} has bbox {bbox!r}; expected [x, y, w, h] with "
                "finite numbers and w, h >= 0",
                hint="fix or remove it",
            )
        x, y, w, h = (float(v) for v in bbox)
        area = ann.get("area")
        out.append(
            BoxAnnotation(
                image_id=remap[ann["image_id"]],
                category_id=int(ann["category_id"]),
                bbox=(x, y, w, h),
                area=float(area) if isinstance(area, (int, float)) else w * h,
                iscrowd=bool(ann.get("iscrowd", 0)),
            )
        )
    return out


def _items(
    records: dict[int, dict[str, Any]],
    *,
    images_dir: Path,
    remap: dict[int, int],
    json_path: Path,
    check_sizes: bool,
) -> list[ImageItem]:
    missing: list[str] = []
    wrong_size: list[str] = []
    items: list[ImageItem] = []
    for old_id in sorted(records):
        record = records[old_id]
        file = images_dir / record["file_name"]
        if not file.is_file():
            missing.append(record["file_name"])
            continue
        json_w, json_h = record.get("width"), record.get("height")
        json_size = (int(json_w), int(json_h)) if _is_int(json_w) and _is_int(json_h) else None
        size = json_size
        if check_sizes or size is None:
            size = image_size(file)
            if json_size is not None and json_size != size:
                wrong_size.append(
                    f"{record['file_name']} ({json_size[0]}x{json_size[1]} in the json, "
                    f"{size[0]}x{size[1]} on disk)"
                )
        items.append(ImageItem(path=file, image_id=remap[old_id], width=size[0], height=size[1]))
    if missing:
        raise DatasetError(
            f"{len(missing)} of the {len(records)} images listed in {json_path} are not in "
            f"{images_dir}: "
            + ", ".join(missing[:_MAX_LISTED])
            + (" ..." if len(missing) > _MAX_LISTED else ""),
            hint="pass the right folder with --images, or fetch the missing images",
        )
    if wrong_size:
        raise DatasetError(
            f"{len(wrong_size)} images in {images_dir} do not have the size {json_path} "
            "gives: "
            + "; ".join(wrong_size[:_MAX_LISTED])
            + (" ..." if len(wrong_size) > _MAX_LISTED else ""),
            hint="the images were resized or re-encoded after annotation, or carry an EXIF "
            "rotation the annotations ignore; use the original images",
        )
    return items


def _dataset_name(json_path: Path) -> str:
    """``coco128`` for ``coco128/annotations/x.json``, else the json's stem."""
    folder = json_path.resolve().parent
    if folder.name == "annotations" and folder.parent.name:
        return folder.parent.name
    return json_path.stem


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
