"""Plain image folders: listing images, and ImageNet-style classification folders.

Hidden files and folders (names starting with ``.``, e.g. macOS ``._x.jpg`` or
``.ipynb_checkpoints``) are skipped everywhere. Symbolic links to folders are followed,
each real folder visited once.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from cvdeploy.data.base import ClassificationDataset, ClassificationItem
from cvdeploy.data.io import IMAGE_SUFFIXES, is_image_file
from cvdeploy.errors import DatasetError, InputError

__all__ = [
    "align_classification",
    "list_images",
    "load_classification_dataset",
    "scan_images",
]

_SPLIT_NAMES = ("train", "val", "valid", "validation", "test")


def scan_images(folder: Path, *, recursive: bool = True) -> list[Path]:
    """Return the image files in ``folder``, sorted; an empty list when there are none.

    Args:
        folder: An existing folder.
        recursive: Also look in sub-folders.
    """
    found: list[Path] = []
    if not recursive:
        found = [p for p in folder.iterdir() if p.is_file() and _visible_image(p.name)]
        return sorted(found)
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:  # a link cycle or a second link to the same folder
            dirnames.clear()
            continue
        visited.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath) / name for name in filenames if _visible_image(name))
    return sorted(found)


def list_images(path: Path | str | Sequence[Path | str], *, recursive: bool = True) -> list[Path]:
    """List the images named by a file, a folder, or several of them.

    Files without an image suffix are ignored.

    Args:
        path: An image file, a folder, or a sequence of files and folders.
        recursive: Look inside sub-folders of the folders given.

    Returns:
        The image paths, sorted and without duplicates.

    Raises:
        InputError: A path does not exist, or no image was found at all.
    """
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    found: set[Path] = set()
    for entry in paths:
        if entry.is_dir():
            found.update(scan_images(entry, recursive=recursive))
        elif entry.is_file():
            if is_image_file(entry):
                found.add(entry)
        else:
            raise InputError(f"{entry} does not exist", hint="check the path")
    if not found:
        where = ", ".join(str(p) for p in paths) or "(no path given)"
        raise InputError(
            f"no images found in {where}",
            hint="image files end in "
            + ", ".join(sorted(IMAGE_SUFFIXES))
            + ("" if recursive else "; sub-folders were not searched"),
        )
    return sorted(found)


def load_classification_dataset(path: Path | str, *, split: str = "val") -> ClassificationDataset:
    """Load an ImageNet-style classification folder.

    Layouts: ``root/<split>/<class name>/*.jpg`` or, when the root has no split folders,
    ``root/<class name>/*.jpg``. Class names are the class folders' names sorted
    alphabetically (as torchvision's ``ImageFolder``), including class folders that hold no
    image for this split, so indices stay the same across splits.

    Args:
        path: The dataset folder.
        split: The split folder to read, when the root has split folders.

    Returns:
        The dataset, items sorted by class then path.

    Raises:
        DatasetError: The folder is missing, has no class folders or no images, or lacks
            the requested split.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"classification dataset {root} is not a folder",
            hint="pass a folder holding one sub-folder per class (optionally per split)",
        )
    split_dir = root / split
    used_split = split
    if not split_dir.is_dir():
        splits = [name for name in _SPLIT_NAMES if (root / name).is_dir()]
        if splits:
            raise DatasetError(
                f"classification dataset {root} has no {split!r} split folder "
                f"(it has: {', '.join(splits)})",
                hint=f"choose one of the splits: {', '.join(splits)}",
            )
        split_dir, used_split = root, ""
    class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(
            f"classification dataset folder {split_dir} has no class sub-folders",
            hint="put each class's images in a folder named after the class",
        )
    items = [
        ClassificationItem(path=image, label=label)
        for label, class_dir in enumerate(class_dirs)
        for image in scan_images(class_dir, recursive=True)
    ]
    if not items:
        raise DatasetError(
            f"classification dataset folder {split_dir} holds no images",
            hint="image files end in " + ", ".join(sorted(IMAGE_SUFFIXES)),
        )
    return ClassificationDataset(
        name=root.resolve().name,
        root=root,
        split=used_split,
        names=[p.name for p in class_dirs],
        items=items,
    )


def align_classification(
    dataset: ClassificationDataset, model_names: Sequence[str]
) -> ClassificationDataset:
    """Return the dataset with labels following the model's class order, matched by name.

    Model classes absent from the dataset are allowed (they have no images).

    Args:
        dataset: A dataset from :func:`load_classification_dataset`.
        model_names: The model's class names in output index order.

    Returns:
        ``dataset`` itself when the names are equal, else a relabelled copy.

    Raises:
        DatasetError: A dataset class is not among the model's names, or the model's
            names repeat.
    """
    model = [str(name) for name in model_names]
    if list(dataset.names) == model:
        return dataset
    index = {name: i for i, name in enumerate(model)}
    if len(index) != len(model):
        raise DatasetError(
            "the model's class names repeat; classes cannot be matched by name",
            hint="give the model unique class names",
        )
    unknown = [name for name in dataset.names if name not in index]
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:10])
        raise DatasetError(
            f"dataset {dataset.name} has class folders the model does not know: {shown}"
            + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""),
            hint="rename the class folders to the model's class names (e.g. "
            + ", ".join(repr(n) for n in model[:3])
            + ")",
        )
    new_label = [index[name] for name in dataset.names]
    items = [
        ClassificationItem(path=item.path, label=new_label[item.label]) for item in dataset.items
    ]
    return dataclasses.replace(dataset, names=model, items=items)


def _visible_image(name: str) -> bool:
    return not name.startswith(".") and is_image_file(name)
