"""The eval stage: run an artifact over a labelled dataset and compute COCO metrics.

Detection uses the Ultralytics validation protocol by default (square letterbox input at
the spec's size, conf 0.001, IoU 0.7, up to 300 detections, every class above conf per box)
and pycocotools for mAP. The result is recorded in the bundle as a ``metrics`` check.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvdeploy.bundle import Bundle, Check
from cvdeploy.data import align_to_model, load_detection_dataset
from cvdeploy.data.folder import load_classification_dataset
from cvdeploy.data.io import read_image
from cvdeploy.environment import fingerprint
from cvdeploy.errors import DatasetError
from cvdeploy.pipeline.predictor import Predictor, StageTimes, Thresholds
from cvdeploy.pipeline.results import Classification, Detections
from cvdeploy.progress import track
from cvdeploy.runtime import RunnerOptions
from cvdeploy.verify.metrics import evaluate_classification, evaluate_detections


@dataclass(frozen=True, slots=True)
class Protocol:
    """Evaluation protocol (Ultralytics validation defaults)."""

    conf: float = 0.001
    iou: float = 0.7
    max_det: int = 300
    imgsz: tuple[int, int] | None = None
    multi_label: bool = True


@dataclass(slots=True)
class EvalReport:
    """What ``cvdeploy eval`` prints and records."""

    artifact: str
    dataset: str
    split: str
    images: int
    metrics: dict[str, Any]
    speed_ms: dict[str, float]
    protocol: dict[str, Any] = field(default_factory=dict)
    inference_precision: str | None = None
    """What the artifact computed in during the evaluation (as its runtime reported it)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _images_with_decode_time(
    paths: Sequence[Path], batch: int
) -> Iterator[tuple[list[np.ndarray], float]]:
    buf: list[np.ndarray] = []
    t_decode = 0.0
    for p in paths:
        t0 = time.perf_counter()
        buf.append(read_image(p))
        t_decode += time.perf_counter() - t0
        if len(buf) == batch:
            yield buf, t_decode * 1e3
            buf, t_decode = [], 0.0
    if buf:
        yield buf, t_decode * 1e3


def _run(
    predictor: Predictor, paths: Sequence[Path], *, progress: bool, label: str
) -> tuple[list[Detections | Classification], StageTimes, float]:
    results: list[Detections | Classification] = []
    times = StageTimes()
    decode_ms = 0.0
    batches = _images_with_decode_time(paths, predictor.batch)
    total = -(-len(paths) // predictor.batch)
    for imgs, dms in track(batches, total=total, description=label, enabled=progress):
        r, t = predictor.predict_batch(imgs)
        results.extend(r)
        times.add(t)
        decode_ms += dms
    return results, times, decode_ms


def evaluate_bundle(
    bundle: Bundle,
    data: Path | str,
    *,
    artifact: str | None = None,
    split: str = "val",
    images: Path | None = None,
    protocol: Protocol | None = None,
    options: RunnerOptions | None = None,
    batch: int = 1,
    record: bool = True,
    progress: bool = True,
    dataset_label: str | None = None,
) -> EvalReport:
    """Evaluate an artifact on a dataset and (by default) record the result in the bundle.

    Args:
        bundle: The bundle.
        data: A YOLO data yaml (or folder holding one), a COCO json, or for classifiers an
            ImageNet-style folder.
        artifact: Artifact id (default: recommended / first runnable).
        split: Dataset split.
        images: Image folder of a COCO json (default: discovered).
        protocol: Thresholds and input size.
        options: Runner options.
        batch: Images per inference call.
        record: Record the result as a ``metrics`` check of the artifact.
        progress: Show a progress bar.
        dataset_label: Name under which the result is recorded (default: derived from data).

    Returns:
        The report.
    """
    proto = protocol or Protocol()
    thresholds = Thresholds(
        conf=proto.conf, iou=proto.iou, max_det=proto.max_det, multi_label=proto.multi_label
    )
    predictor = Predictor.from_bundle(
        bundle, artifact, options=options, thresholds=thresholds, imgsz=proto.imgsz, batch=batch
    )
    spec = bundle.spec
    with predictor:
        if spec.task == "classify":
            cds = load_classification_dataset(data, split=split)
            names_map = {n: i for i, n in enumerate(spec.names)}
            missing = [n for n in cds.names if n not in names_map]
            if missing:
                raise DatasetError(
                    f"dataset classes {missing[:5]} are not among the model's "
                    f"{len(spec.names)} names",
                    hint="the folder names must be the model's class names",
                )
            paths = [it.path for it in cds.items]
            labels = np.array([names_map[cds.names[it.label]] for it in cds.items])
            results, times, decode_ms = _run(
                predictor, paths, progress=progress, label=f"eval {predictor.artifact_id}"
            )
            probs = np.stack([r.probs for r in results if isinstance(r, Classification)])
            cm = evaluate_classification(labels, probs, list(spec.names))
            metrics: dict[str, Any] = cm.to_dict() if hasattr(cm, "to_dict") else asdict(cm)
            name, n_images = cds.name, len(paths)
        else:
            ds = align_to_model(
                load_detection_dataset(data, split=split, images=images), list(spec.names)
            )
            paths = [it.path for it in ds.items]
            results, times, decode_ms = _run(
                predictor, paths, progress=progress, label=f"eval {predictor.artifact_id}"
            )
            preds = [
                (it.image_id, r.boxes, r.scores, r.class_ids)
                for it, r in zip(ds.items, results, strict=True)
                if isinstance(r, Detections)
            ]
            dm = evaluate_detections(
                ds.coco_gt(), preds, category_ids=ds.category_ids, names=list(spec.names)
            )
            metrics = dm.to_dict()
            name, n_images = ds.name, len(ds.items)
    speed = times.per_image()
    speed["decode"] = decode_ms / max(n_images, 1)
    assert predictor.imgsz is not None
    proto_d = {
        "conf": proto.conf,
        "iou": proto.iou,
        "max_det": proto.max_det,
        "multi_label": proto.multi_label,
        "imgsz": list(predictor.imgsz),
        "batch": batch,
        "runner": predictor.runner.describe(),
    }
    label = dataset_label or f"{name}:{split}"
    report = EvalReport(
        artifact=predictor.artifact_id,
        dataset=label,
        split=split,
        images=n_images,
        metrics=metrics,
        speed_ms=speed,
        protocol=proto_d,
        inference_precision=predictor.runner.effective_precision,
    )
    if record:
        with bundle.edit(
            action="eval", details={"artifact": report.artifact, "dataset": label}
        ) as edit:
            edit.add_check(
                report.artifact,
                Check(
                    kind="metrics",
                    name=label,
                    passed=None,
                    data={
                        "metrics": metrics,
                        "speed_ms": speed,
                        "images": n_images,
                        "protocol": proto_d,
                        "inference_precision": report.inference_precision,
                        "data": str(Path(data).resolve()),
                        "environment": fingerprint(),
                    },
                ),
            )
    return report
