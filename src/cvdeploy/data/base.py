"""Dataset types shared by the readers, and the entry point that picks a reader.

A :class:`DetectionDataset` is what evaluation needs: the images (path, id, size), the class
names in the *model's* index order, the COCO category id of each class index, and the
ground truth boxes in pixels, which :meth:`DetectionDataset.coco_gt` turns into a COCO
ground truth dict for pycocotools.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cvdeploy.errors import DatasetError

__all__ = [
    "BoxAnnotation",
    "ClassificationDataset",
    "ClassificationItem",
    "DetectionDataset",
    "ImageItem",
    "align_to_model",
]

SourceFormat = Literal["yolo", "coco"]


@dataclass(frozen=True, slots=True)
class ImageItem:
    """One image of a dataset.

    Attributes:
        path: The image file.
        image_id: Id used in the COCO ground truth and in predictions (>= 1).
        width: Width in pixels of the image as :func:`cvdeploy.data.read_image` returns it.
        height: Height in pixels, likewise.
    """

    path: Path
    image_id: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.image_id < 1:
            raise DatasetError(
                f"image {self.path} has id {self.image_id}; image ids must be >= 1",
                hint="renumber the images starting at 1",
            )
        if self.width < 1 or self.height < 1:
            raise DatasetError(
                f"image {self.path} has size {self.width}x{self.height}",
                hint="check the image file and the annotation's width/height",
            )


@dataclass(frozen=True, slots=True)
class BoxAnnotation:
    """One ground truth box, in the pixel coordinates of its image.

    Attributes:
        image_id: The :attr:`ImageItem.image_id` it belongs to.
        category_id: COCO category id (see :attr:`DetectionDataset.category_ids`).
        bbox: ``(x, y, w, h)`` in pixels, top-left corner plus size (COCO convention).
        area: Area used by COCO's small/medium/large split (the mask area for a COCO json,
            the box area for YOLO labels).
        iscrowd: A COCO crowd region: matches are ignored, never counted as misses.
    """

    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    area: float
    iscrowd: bool = False


@dataclass(frozen=True, repr=False)
class DetectionDataset:
    """A detection dataset ready for evaluation.

    Attributes:
        name: Short name (the yaml's stem, or the COCO dataset's folder name).
        root: Folder the image paths are reported relative to.
        split: Split name (``val``, ``train2017``, ...).
        names: Class names in model class index order.
        items: Images, in a deterministic order (sorted by path, or by COCO image id).
        category_ids: COCO category id of each class index (``len(names)`` entries, unique).
        annotations: Ground truth boxes of all images.
        source_format: ``"yolo"`` (an Ultralytics data yaml) or ``"coco"`` (a COCO json).
        source_files: Annotation files read (label ``.txt`` files or the json), for
            :meth:`source_hash`.
    """

    name: str
    root: Path
    split: str
    names: list[str]
    items: list[ImageItem]
    category_ids: list[int]
    annotations: list[BoxAnnotation] = field(default_factory=list, repr=False)
    source_format: SourceFormat = "yolo"
    source_files: list[Path] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if len(self.names) != len(self.category_ids):
            raise DatasetError(
                f"dataset {self.name}: {len(self.names)} names but "
                f"{len(self.category_ids)} category ids",
                hint="give one category id per class name",
            )
        if len(set(self.category_ids)) != len(self.category_ids):
            raise DatasetError(
                f"dataset {self.name}: category ids {self.category_ids} are not unique",
                hint="give every class its own category id",
            )
        ids = [item.image_id for item in self.items]
        if len(set(ids)) != len(ids):
            raise DatasetError(
                f"dataset {self.name}: image ids are not unique",
                hint="give every image its own id",
            )

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return (
            f"DetectionDataset(name={self.name!r}, split={self.split!r}, "
            f"format={self.source_format!r}, images={len(self.items)}, "
            f"classes={len(self.names)}, boxes={len(self.annotations)}, root='{self.root}')"
        )

    @property
    def n_instances(self) -> int:
        """Number of ground truth boxes that count for recall (crowd regions excluded)."""
        return sum(1 for ann in self.annotations if not ann.iscrowd)

    def coco_gt(self) -> dict[str, Any]:
        """Return the ground truth as a COCO dict (a fresh one per call).

        Annotation ids start at 1 (pycocotools uses 0 to mean "unmatched"); boxes are
        ``[x, y, w, h]`` in pixels; ``categories`` has one entry per class index, named
        after :attr:`names`. Image ``file_name`` is relative to :attr:`root` when the image
        lies under it.
        """
        images = [
            {
                "id": item.image_id,
                "file_name": _relative(item.path, self.root),
                "width": item.width,
                "height": item.height,
            }
            for item in self.items
        ]
        annotations = [
            {
                "id": index,
                "image_id": ann.image_id,
                "category_id": ann.category_id,
                "bbox": [float(v) for v in ann.bbox],
                "area": float(ann.area),
                "iscrowd": int(ann.iscrowd),
            }
            for index, ann in enumerate(self.annotations, start=1)
        ]
        categories = [
            {"id": cid, "name": name}
            for cid, name in zip(self.category_ids, self.names, strict=True)
        ]
        return {
            "info": {"description": f"{self.name} {self.split} (cvdeploy)"},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }

    def ground_truth(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Return one image's non-crowd boxes as ``(xyxy float32 (n, 4), class index (n,))``.

        Boxes of categories that no class index maps to are left out.

        Args:
            image_id: An :attr:`ImageItem.image_id`.
        """
        index_of = {cid: i for i, cid in enumerate(self.category_ids)}
        rows = [
            (ann.bbox, index_of[ann.category_id])
            for ann in self._annotations_by_image.get(image_id, ())
            if not ann.iscrowd and ann.category_id in index_of
        ]
        boxes = np.array(
            [[x, y, x + w, y + h] for (x, y, w, h), _ in rows], dtype=np.float32
        ).reshape(-1, 4)
        classes = np.array([c for _, c in rows], dtype=np.int64)
        return boxes, classes

    @functools.cached_property
    def _annotations_by_image(self) -> dict[int, list[BoxAnnotation]]:
        by_image: dict[int, list[BoxAnnotation]] = {}
        for ann in self.annotations:
            by_image.setdefault(ann.image_id, []).append(ann)
        return by_image

    def source_hash(self) -> str:
        """Return the sha256 (hex) of the sorted list of files the dataset was read from.

        The list holds the image paths and the annotation files, relative to :attr:`root`
        when under it (absolute otherwise), one per line; it identifies *which* files were
        used (for provenance records), not their content.
        """
        files = [item.path for item in self.items] + list(self.source_files)
        return _hash_file_list(files, self.root)


@dataclass(frozen=True, slots=True)
class ClassificationItem:
    """One labelled image of a classification dataset.

    Attributes:
        path: The image file.
        label: Class index into :attr:`ClassificationDataset.names`.
    """

    path: Path
    label: int


@dataclass(frozen=True, repr=False)
class ClassificationDataset:
    """An image classification dataset (one folder per class).

    Attributes:
        name: Short name (the root folder's name).
        root: The dataset folder.
        split: Split name (``val``; ``""`` when the root has no split folders).
        names: Class names in class index order.
        items: Images with their class index, sorted by class then path.
    """

    name: str
    root: Path
    split: str
    names: list[str]
    items: list[ClassificationItem]

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return (
            f"ClassificationDataset(name={self.name!r}, split={self.split!r}, "
            f"images={len(self.items)}, classes={len(self.names)}, root='{self.root}')"
        )

    def labels(self) -> np.ndarray:
        """Return the class index of every item, ``int64`` of shape ``(n,)``."""
        return np.array([item.label for item in self.items], dtype=np.int64)

    def source_hash(self) -> str:
        """Return the sha256 (hex) of the sorted relative image file list."""
        return _hash_file_list([item.path for item in self.items], self.root)


def align_to_model(dataset: DetectionDataset, model_names: Sequence[str]) -> DetectionDataset:
    """Return the dataset with class indices following the model's class names.

    A YOLO dataset's labels are class indices, so its names must equal the model's. A COCO
    json's categories are matched by name: model class ``i`` gets the category id of the
    category named ``model_names[i]``. Model classes without a category are allowed (they
    get fresh category ids without ground truth, so they do not count in the mean AP);
    dataset categories that have boxes but no model class are an error, because their
    boxes could never be detected.

    Args:
        dataset: A dataset from :func:`load_detection_dataset`.
        model_names: The model's class names, in its output index order.

    Returns:
        ``dataset`` itself when the names are equal, else an aligned copy.

    Raises:
        DatasetError: The names cannot be aligned (the message shows how they differ).
    """
    model = [str(name) for name in model_names]
    if list(dataset.names) == model:
        return dataset
    if dataset.source_format == "yolo":
        raise DatasetError(
            f"dataset {dataset.name} class names differ from the model's: "
            + _first_difference(dataset.names, model),
            hint="YOLO labels are class indices, so the data yaml's names must list the "
            "model's classes in the model's order; fix the yaml's names",
        )
    if len(set(model)) != len(model):
        dups = sorted({n for n in model if model.count(n) > 1})
        raise DatasetError(
            f"the model's class names repeat {dups}; categories cannot be matched by name",
            hint="give the model unique class names",
        )
    by_name: dict[str, int] = {}
    for cid, name in zip(dataset.category_ids, dataset.names, strict=True):
        if name in by_name:
            raise DatasetError(
                f"dataset {dataset.name} has two categories named {name!r} "
                f"(ids {by_name[name]} and {cid})",
                hint="give every category its own name in the json",
            )
        by_name[name] = cid
    common = set(model) & set(by_name)
    if not common:
        raise DatasetError(
            f"dataset {dataset.name} and the model share no class name: the dataset has "
            f"{_preview(dataset.names)}, the model has {_preview(model)}",
            hint="evaluate the model on a dataset labelled with its classes, or rename the "
            "json's categories to the model's class names",
        )
    boxes_per_category: dict[int, int] = {}
    for ann in dataset.annotations:
        boxes_per_category[ann.category_id] = boxes_per_category.get(ann.category_id, 0) + 1
    orphans = [
        f"{name!r} (id {cid}, {boxes_per_category[cid]} boxes)"
        for name, cid in by_name.items()
        if name not in common and cid in boxes_per_category
    ]
    if orphans:
        raise DatasetError(
            f"dataset {dataset.name} has boxes of categories the model does not know: "
            + ", ".join(orphans[:10])
            + (f" and {len(orphans) - 10} more" if len(orphans) > 10 else ""),
            hint="remove those annotations from the json, or rename the categories to the "
            "model's class names",
        )
    next_id = max(dataset.category_ids, default=0) + 1
    category_ids: list[int] = []
    for name in model:
        if name in by_name:
            category_ids.append(by_name[name])
        else:
            category_ids.append(next_id)
            next_id += 1
    kept = set(category_ids)
    return dataclasses.replace(
        dataset,
        names=model,
        category_ids=category_ids,
        annotations=[ann for ann in dataset.annotations if ann.category_id in kept],
    )


def _first_difference(ours: Sequence[str], theirs: Sequence[str]) -> str:
    """Describe the first place two name lists differ."""
    for index, (a, b) in enumerate(zip(ours, theirs, strict=False)):
        if a != b:
            return f"class {index} is {a!r} in the dataset but {b!r} in the model"
    return (
        f"the dataset has {len(ours)} names and the model {len(theirs)} "
        f"(the first {min(len(ours), len(theirs))} agree)"
    )


def _preview(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return f"[{shown}{more}]"


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` in posix form, or absolute when outside it."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _hash_file_list(paths: Iterable[Path], root: Path) -> str:
    listing = "\n".join(sorted({_relative(p, root) for p in paths}))
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()
