"""Which reader a dataset path needs: an Ultralytics data yaml (or its folder), or a COCO json.

The dispatcher sits above the readers (``yolo.py``, ``coco.py``), which build on ``base.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cvdeploy.data.base import DetectionDataset
from cvdeploy.data.coco import load_coco_dataset
from cvdeploy.data.folder import list_images
from cvdeploy.data.io import is_image_file
from cvdeploy.data.yolo import load_yolo_dataset
from cvdeploy.errors import DatasetError, InputError, UsageError


def load_detection_dataset(
    path: Path | str, *, split: str = "val", images: Path | str | None = None
) -> DetectionDataset:
    """Load a detection dataset from an Ultralytics data yaml, its folder, or a COCO json.

    Args:
        path: One of: an Ultralytics data yaml (``.yaml``/``.yml``); a folder holding
            exactly one such yaml; a COCO annotation json.
        split: The yaml's split to read (``train``, ``val``, ``test``). Ignored for a COCO
            json, which is one split.
        images: The images folder of a COCO json (found next to the json when omitted,
            see :func:`cvdeploy.data.coco.load_coco_dataset`). Only for a COCO json.

    Returns:
        The dataset, with class indices in the dataset's own order; call
        :func:`cvdeploy.data.base.align_to_model` to follow a model's class order.

    Raises:
        DatasetError: The path is missing, ambiguous or malformed, or holds no images.
        UsageError: ``images`` was given for a yaml dataset.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(
            f"dataset {path} does not exist",
            hint="pass an Ultralytics data yaml, a folder holding one, or a COCO json",
        )
    if path.is_dir():
        yamls = sorted(p for p in path.iterdir() if p.suffix.lower() in {".yaml", ".yml"})
        if not yamls:
            raise DatasetError(
                f"dataset folder {path} holds no data yaml",
                hint="pass the Ultralytics data yaml or a COCO annotation json directly",
            )
        if len(yamls) > 1:
            listed = ", ".join(p.name for p in yamls)
            raise DatasetError(
                f"dataset folder {path} holds several yaml files: {listed}",
                hint="pass the data yaml you mean, e.g. " + str(yamls[0]),
            )
        path = yamls[0]
    suffix = path.suffix.lower()
    if suffix in {".yaml", ".yml"}:
        if images is not None:
            raise UsageError(
                "an images folder is only used with a COCO json dataset",
                hint=f"drop --images; {path.name} says where its images are",
            )
        return load_yolo_dataset(path, split=split)
    if suffix == ".json":
        return load_coco_dataset(path, images=images)
    raise DatasetError(
        f"dataset {path} is neither a data yaml nor a COCO json",
        hint="pass an Ultralytics data yaml (.yaml) or a COCO annotation file (.json)",
    )


def image_paths(
    data: Path | str | Sequence[Path | str], *, splits: Sequence[str] = ("val",), what: str = "data"
) -> list[Path]:
    """The images ``--data`` names, whatever it is: a dataset yaml (or a folder holding one),
    a COCO json, a folder of images (searched recursively), image files, or several of these.

    Args:
        data: The path(s) given on the command line.
        splits: Splits of a dataset yaml to try, in order (the first that has images wins).
        what: What the images are for, for the messages (``--data``, ``--calib``).

    Raises:
        DatasetError: A path does not exist or holds no image.
    """
    items = [data] if isinstance(data, str | Path) else list(data)
    out: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if not p.exists():
            raise DatasetError(
                f"{what} {p} does not exist",
                hint="give a dataset yaml, a COCO json, a folder of images or image files",
            )
        if p.is_file() and is_image_file(p):
            out.append(p)
        elif p.suffix.lower() in (".yaml", ".yml", ".json") or (
            p.is_dir() and any(p.glob("*.y*ml"))
        ):
            errors: list[str] = []
            for split in splits:
                try:
                    out.extend(it.path for it in load_detection_dataset(p, split=split).items)
                    break
                except DatasetError as exc:
                    errors.append(str(exc).splitlines()[0])
            else:
                raise DatasetError(f"no images in {p}: {'; '.join(errors)}")
        else:
            try:
                out.extend(list_images(p))
            except InputError as exc:
                raise DatasetError(exc.message, hint=exc.hint) from None
    if not out:
        raise DatasetError(f"{what}: no images found", hint="give real images with --data")
    return list(dict.fromkeys(out))
