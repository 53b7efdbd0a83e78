"""Calibration and validation data for post-training quantization.

Calibration images are preprocessed by the bundle spec's own pipeline
(:meth:`cvdeploy.pipeline.predictor.Predictor.preprocess`), never by a second
implementation, so the ranges a quantizer observes are the ranges the served model sees.
The file list's hash, the count and the method are recorded with the INT8 artifact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvdeploy.data import image_paths, read_image
from cvdeploy.errors import UsageError
from cvdeploy.pipeline.predictor import Predictor, Thresholds
from cvdeploy.pipeline.results import Classification, Detections

MIN_IMAGES = 100
"""Fewer calibration images are refused unless forced."""
RECOMMENDED_IMAGES = 300
"""Fewer calibration images give a warning."""
METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True, slots=True)
class CalibrationSet:
    """The images a quantizer calibrates on, and what is recorded about them.

    Attributes:
        paths: Image files, in the order they are fed.
        source: The ``--calib`` argument (dataset yaml, json, folder or image).
        method: Range estimation method (``minmax``, ``entropy``, ``percentile``).
        sha256: Hash of the sorted file list (which files, not their content).
        warnings: Hygiene warnings (too few images, forced below the minimum).
    """

    paths: tuple[Path, ...]
    source: str
    method: str
    sha256: str
    warnings: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        """Number of calibration images."""
        return len(self.paths)

    def record(self) -> dict[str, Any]:
        """What goes into the artifact's provenance options."""
        return {
            "calib_source": self.source,
            "calib_count": self.count,
            "calib_sha256": self.sha256,
            "calib_method": self.method,
            "calib_warnings": list(self.warnings),
        }


def list_calibration_images(data: Path | str) -> list[Path]:
    """Images named by ``data``: a YOLO data yaml (its train split, else val), COCO json,
    a folder of images, or one image file (see :func:`cvdeploy.data.image_paths`).

    Raises:
        InputError: Nothing usable was found.
    """
    return image_paths(data, splits=("train", "val"), what="calibration data")


def build_calibration_set(
    data: Path | str, *, size: int = RECOMMENDED_IMAGES, method: str = "minmax", force: bool = False
) -> CalibrationSet:
    """Pick up to ``size`` images evenly from ``data`` and check calibration hygiene.

    Args:
        data: Dataset yaml, COCO json, image folder or image.
        size: Largest number of images to use.
        method: Range estimation method.
        force: Accept fewer than :data:`MIN_IMAGES` images (with a warning).

    Returns:
        The calibration set.

    Raises:
        UsageError: Bad ``size`` or ``method``; fewer than :data:`MIN_IMAGES` images without
            ``force``.
    """
    if method not in METHODS:
        raise UsageError(f"unknown calibration method {method!r}", hint=f"use one of {METHODS}")
    if size < 1:
        raise UsageError(f"--calib-size must be >= 1, got {size}")
    paths = sorted(set(list_calibration_images(data)))
    if len(paths) > size:
        idx = np.linspace(0, len(paths) - 1, size).round().astype(int)
        paths = [paths[i] for i in idx]
    n = len(paths)
    warnings: list[str] = []
    if n < MIN_IMAGES:
        if not force:
            raise UsageError(
                f"only {n} calibration image(s) from {data}: at least {MIN_IMAGES} are needed "
                f"for stable INT8 ranges ({RECOMMENDED_IMAGES} recommended)",
                hint="give more representative images with --calib, or pass --force to "
                "quantize anyway (accuracy may suffer)",
            )
        warnings.append(
            f"only {n} calibration images (< {MIN_IMAGES}), accepted because of --force"
        )
    elif n < RECOMMENDED_IMAGES:
        warnings.append(
            f"{n} calibration images: {RECOMMENDED_IMAGES} or more are recommended for "
            "stable INT8 ranges"
        )
    listing = "\n".join(p.resolve().as_posix() for p in paths)
    digest = hashlib.sha256(listing.encode("utf-8")).hexdigest()
    return CalibrationSet(
        paths=tuple(paths), source=str(data), method=method, sha256=digest, warnings=tuple(warnings)
    )


def preprocessed(predictor: Predictor, paths: Sequence[Path]) -> Iterator[np.ndarray]:
    """Yield each image as a model input batch of one, through the spec's preprocessing."""
    for p in paths:
        x, _ = predictor.preprocess([read_image(p)])
        yield x


@dataclass(slots=True)
class EvalSet:
    """A labelled detection dataset held ready for repeated mAP evaluation of candidates.

    Used as the validation function of accuracy-controlled quantization: every candidate
    runs through the same :class:`Predictor` preprocessing and postprocessing (with the
    evaluation protocol's thresholds) and is scored by
    :func:`cvdeploy.verify.metrics.evaluate_detections` (pycocotools).
    """

    data: str
    gt: dict[str, Any]
    category_ids: list[int]
    names: list[str]
    image_ids: list[int]
    paths: list[Path]
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, data: Path | str, names: Sequence[str], *, split: str = "val") -> EvalSet:
        """Load a detection dataset aligned to the model's class names."""
        from cvdeploy.data import align_to_model, load_detection_dataset

        ds = align_to_model(load_detection_dataset(data, split=split), list(names))
        return cls(
            data=str(data),
            gt=ds.coco_gt(),
            category_ids=list(ds.category_ids),
            names=list(names),
            image_ids=[it.image_id for it in ds.items],
            paths=[it.path for it in ds.items],
        )

    def score(self, predictions: Sequence[tuple[int, Detections | Classification]]) -> float:
        """mAP50-95 of ``(image_id, detections)`` pairs, over the ground truth of those images.

        A subset of the images (as NNCF's accuracy control passes for ranking) is scored
        against that subset's ground truth only.
        """
        from cvdeploy.verify import evaluate_detections

        preds = [
            (iid, r.boxes, r.scores, r.class_ids)
            for iid, r in predictions
            if isinstance(r, Detections)
        ]
        ids = {iid for iid, _ in predictions}
        gt = self.gt
        if len(ids) < len(self.image_ids):
            gt = {
                **gt,
                "images": [im for im in gt["images"] if im["id"] in ids],
                "annotations": [a for a in gt["annotations"] if a["image_id"] in ids],
            }
        m = evaluate_detections(gt, preds, category_ids=self.category_ids, names=self.names)
        v = float(m.map50_95)
        return v if np.isfinite(v) else 0.0


EVAL_THRESHOLDS = Thresholds(conf=0.001, iou=0.7, max_det=300, multi_label=True)
"""The evaluation protocol's thresholds (as ``cvdeploy eval``'s defaults)."""


def predictor_map(predictor: Predictor, evalset: EvalSet) -> float:
    """mAP50-95 of a (loaded) predictor on an evaluation set, image by image."""
    out: list[tuple[int, Detections | Classification]] = []
    for iid, path in zip(evalset.image_ids, evalset.paths, strict=True):
        out.append((iid, predictor.run_batch([read_image(path)]).results[0]))
    return evalset.score(out)
