"""The images a compressed model learns from: the user's, with or without labels.

Detection images are cached at the student's input size by the zoo's training set
(:class:`cvdeploy.zoo.trainset.YoloTrainSet`: letterboxed, mosaic/affine/flip/HSV
augmentation); labels are read through the Ultralytics images->labels convention when the
dataset has them and ``labels`` allows it. Classification images are a class-folder tree
(labelled) or any folder of images (unlabelled).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch

from cvdeploy.data import list_images, read_image
from cvdeploy.errors import DatasetError, InputError, LabelError, UsageError
from cvdeploy.spec import Preprocess
from cvdeploy.zoo.train import CLOSE_MOSAIC, WARM_SCALE, WARM_UNTIL
from cvdeploy.zoo.trainset import AugmentConfig, YoloTrainSet, read_data_yaml

__all__ = [
    "DISTILL_AUGMENT",
    "MIN_IMAGES",
    "RECOMMENDED_IMAGES",
    "TrainImages",
    "load_train_images",
]

MIN_IMAGES = 8
"""Fewer images than this are refused: nothing useful can be learnt from them."""
RECOMMENDED_IMAGES = 100
"""Fewer images than this work, with a warning that the result may overfit them."""
DISTILL_AUGMENT = AugmentConfig(mosaic=0.5, scale=0.3)
"""Augmentation of the distillation images (the zoo's short-budget strengths); the teacher
sees the same augmented image as the student."""


@dataclass
class TrainImages:
    """Training images of one task, in memory.

    Attributes:
        task: ``detect`` or ``classify``.
        source: What was read (for messages and the record).
        n: Number of images.
        labelled: Whether labels are used.
        imgsz: Side of the student's square input.
        detect: The detection set (``task == "detect"``).
        images: Classification images ``[n, s, s, 3]`` uint8 RGB (``task == "classify"``).
        labels: Classification labels ``[n]`` (``-1``: unlabelled).
    """

    task: str
    source: str
    n: int
    labelled: bool
    imgsz: int
    detect: YoloTrainSet | None = None
    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    warm: YoloTrainSet | None = None
    """The detection set at a smaller size, used until ``warm_until`` (the zoo recipe's
    progressive resizing; ``None``: always ``imgsz``)."""
    warm_until: float = 0.0
    close_mosaic: float = 1.0
    """Training progress after which mosaic is switched off (1: never)."""

    def use_zoo_schedule(
        self,
        *,
        warm_scale: float = WARM_SCALE,
        warm_until: float = WARM_UNTIL,
        close_mosaic: float = CLOSE_MOSAIC,
    ) -> None:
        """Train detection images the way :func:`cvdeploy.zoo.train.train_detector` does:
        at ``imgsz * warm_scale`` (a multiple of 32) until ``warm_until`` of the schedule,
        and without mosaic after ``close_mosaic``. Call it once the labels are final (the
        smaller copy takes the labels of that moment)."""
        if self.detect is None:
            raise UsageError("the zoo schedule is for detection images")
        warm_imgsz = max(32, round(self.imgsz * warm_scale / 32) * 32)
        self.warm = self.detect.resized(warm_imgsz) if warm_imgsz != self.imgsz else None
        self.warm_until, self.close_mosaic = warm_until, close_mosaic

    def batch(
        self,
        idx: list[int],
        *,
        rng: np.random.Generator | None,
        augment: bool = True,
        progress: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(x [B, 3, s, s] float in 0..1 RGB, targets or None)``.

        Detection targets are ``[B, M, 5]`` ``(cls, x1, y1, x2, y2)`` pixels (padding rows
        ``cls == -1``), classification targets ``[B]`` class indices; ``None`` unlabelled.
        ``progress`` (0..1, the training's) picks the size and mosaic of a zoo schedule
        (:meth:`use_zoo_schedule`); ``s`` is then the warm size early on.
        """
        if self.detect is not None:
            aug = DISTILL_AUGMENT if augment and rng is not None else None
            source = self.warm if self.warm is not None and progress < self.warm_until else None
            mosaic = aug is not None and progress < self.close_mosaic
            x, targets = (source or self.detect).batch(idx, rng=rng, aug=aug, mosaic=mosaic)
            return x, targets if self.labelled else None
        assert self.images is not None and self.labels is not None
        imgs = self.images[idx]
        if augment and rng is not None:
            imgs = np.stack([_augment_classify(im, rng) for im in imgs])
        x = torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).float().div_(255.0)
        return x, torch.from_numpy(self.labels[idx]) if self.labelled else None


def _augment_classify(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    s = img.shape[0]
    scale = float(rng.uniform(0.85, 1.15))
    tx, ty = (float(v) for v in rng.uniform(-0.08, 0.08, 2) * s)
    m = np.array([[scale, 0, (1 - scale) * s / 2 + tx], [0, scale, (1 - scale) * s / 2 + ty]])
    out = cv2.warpAffine(img, m, (s, s), borderMode=cv2.BORDER_REFLECT)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def _check_size(n: int, source: str, warn: list[str]) -> None:
    if n < MIN_IMAGES:
        raise DatasetError(
            f"{source} has {n} image(s): too few to learn from (at least {MIN_IMAGES}, "
            f"{RECOMMENDED_IMAGES}+ recommended)",
            hint="pass --data with a folder of images from your deployment site",
        )
    if n < RECOMMENDED_IMAGES:
        warn.append(
            f"only {n} training images in {source}: the result may fit them and not "
            f"generalise ({RECOMMENDED_IMAGES}+ recommended)"
        )


def load_train_images(
    data: Path,
    *,
    task: str,
    names: tuple[str, ...],
    imgsz: int,
    labels: bool | None = None,
    warnings: list[str] | None = None,
    preprocess: Preprocess | None = None,
) -> TrainImages:
    """Read the training images.

    Args:
        data: A folder of images (searched recursively), a YOLO ``data.yaml`` (its train
            split), or for classifiers a class-folder tree (``[train/]<class>/*``).
        task: ``detect`` or ``classify``.
        names: The model's class names (labels are read in this order).
        imgsz: The student's input side.
        labels: Use labels: ``True`` requires them, ``False`` ignores them (the label
            files are not read), ``None`` uses them when the dataset has any and the model
            can use them (label files of other classes are skipped with a warning).
        warnings: Collects a warning when the set is small.
        preprocess: The model's preprocessing (its spec's; default: the zoo's): detection
            images are letterboxed (aligned, padded) or stretched the way the model will see
            them; a ``crop`` spec's are letterboxed (a crop would cut labelled objects out),
            with a warning.

    Raises:
        DatasetError: Missing, empty or too small data, or labels required but absent.
    """
    warn = warnings if warnings is not None else []
    data = Path(data)
    if not data.exists():
        raise InputError(f"{data} does not exist", hint="pass --data with a folder of images")
    if task == "classify":
        return _classify_images(data, names=names, imgsz=imgsz, labels=labels, warn=warn)
    if data.is_file() or (data.is_dir() and (data / "data.yaml").is_file()):
        splits, yaml_names = read_data_yaml(data)
        if "train" not in splits:
            raise DatasetError(f"{data} has no train split")
        folders = splits["train"]
        if labels is not False and tuple(yaml_names) != tuple(names):
            if labels:
                raise DatasetError(
                    f"the labels of {data} name classes {yaml_names}, the model {list(names)}",
                    hint="use a dataset with the model's classes, or --no-labels",
                )
            warn.append(f"{data} names other classes than the model: its labels are not used")
            labels = False
    else:
        folders = [data]
    pre = preprocess or Preprocess()
    if pre.resize == "crop":
        warn.append(
            "the spec crops its input: the detection images are letterboxed instead (a crop "
            "would cut labelled objects out)"
        )
    read = partial(
        YoloTrainSet,
        folders,
        names=list(names),
        imgsz=imgsz,
        align=pre.align,
        pad_value=pre.pad_value,
        resize="stretch" if pre.resize == "stretch" else "letterbox",
    )
    try:
        try:
            ts = read(read_labels=labels is not False)
        except LabelError as exc:
            if labels:
                raise
            warn.append(f"{exc.message}: the labels are not used")
            labels = False
            ts = read(read_labels=False)
    except DatasetError as exc:
        raise DatasetError(
            f"no usable images in {data}: {exc.message}",
            hint="pass --data with a folder of images (jpg, png, ...)",
        ) from exc
    _check_size(len(ts), str(data), warn)
    has_labels = any(len(lab) for lab in ts.labels)
    if labels and not has_labels:
        raise DatasetError(f"{data} has no labels", hint="drop --labels to learn without them")
    use = has_labels if labels is None else bool(labels)
    return TrainImages("detect", str(data), len(ts), use, imgsz, detect=ts)


def _classify_images(
    data: Path, *, names: tuple[str, ...], imgsz: int, labels: bool | None, warn: list[str]
) -> TrainImages:
    root = data / "train" if (data / "train").is_dir() else data
    class_dirs = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    tree = bool(class_dirs) and class_dirs <= set(names)
    paths = list_images(root if tree else data)
    images, labs = [], []
    index = {n: i for i, n in enumerate(names)}
    for p in paths:
        img = read_image(p)
        images.append(cv2.resize(img, (imgsz, imgsz), interpolation=cv2.INTER_AREA)[..., ::-1])
        labs.append(index[p.parent.name] if tree and p.parent.name in index else -1)
    _check_size(len(images), str(data), warn)
    has_labels = tree and all(v >= 0 for v in labs)
    if labels and not has_labels:
        raise DatasetError(
            f"{data} is not a class-folder tree of the model's classes",
            hint=f"expected [train/]<class>/*.jpg with classes {', '.join(names)}; or drop "
            "--labels",
        )
    use = has_labels if labels is None else bool(labels)
    return TrainImages(
        "classify",
        str(data),
        len(images),
        use,
        imgsz,
        images=np.stack(images),
        labels=np.array(labs, np.int64),
    )
