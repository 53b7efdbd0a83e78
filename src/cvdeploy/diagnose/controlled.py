"""The controlled-dataset table: every artifact evaluated with one protocol on one set.

Each artifact that can run here goes over the same labelled images with the evaluation
protocol (:class:`cvdeploy.verify.Protocol`: conf 0.001, IoU 0.7, 300 detections,
multi-label), and is scored with pycocotools (top-1 for classifiers). Against the FP32
reference artifact: the mAP delta, per-class AP deltas, and true positives, false positives
and misses at the spec's confidence threshold (IoU 0.5). The images where an artifact's
detections disagree most with the reference's are kept for a gallery.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cvdeploy.bundle import Artifact, Bundle
from cvdeploy.data.io import read_image
from cvdeploy.diagnose.labels import Labelled, agreement, detection_map, match, top1
from cvdeploy.errors import CvdeployError
from cvdeploy.pipeline import Classification, Detections, Predictor, Thresholds
from cvdeploy.progress import track

GALLERY = 6


@dataclass(slots=True)
class ArtifactEval:
    """One artifact's row.

    Attributes:
        artifact: Its id.
        precision: Its precision (``fp32``, ``int8``...).
        inference_precision: What it computed in here.
        status: ``ok``, or ``skipped`` / ``failed`` with ``reason``.
        score: mAP50-95 (top-1 for classifiers).
        score50: mAP50 (top-5 for classifiers).
        delta: ``score`` minus the reference's.
        per_class: Per-class AP50-95 (or accuracy).
        per_class_delta: Per-class change against the reference, largest drops first.
        tp, fp, fn: Counts at the spec's confidence threshold, IoU 0.5.
        agreement: Mean per-image agreement (F1) of its detections with the reference's.
    """

    artifact: str
    precision: str
    inference_precision: str | None = None
    status: str = "ok"
    reason: str = ""
    score: float | None = None
    score50: float | None = None
    delta: float | None = None
    per_class: dict[str, float] = field(default_factory=dict)
    per_class_delta: dict[str, float] = field(default_factory=dict)
    tp: int = 0
    fp: int = 0
    fn: int = 0
    agreement: float | None = None
    seconds: float = 0.0


@dataclass(slots=True)
class ControlledReport:
    """The table, its reference and the gallery of disagreements.

    Attributes:
        dataset: The labelled set's label.
        images: Images evaluated.
        reference: The FP32 reference artifact (``None`` when the bundle has none that runs).
        metric: ``map50_95`` or ``top1``.
        rows: One per artifact.
        gallery: ``{"image", "index", "artifact", "agreement"}`` of the worst disagreements.
    """

    dataset: str
    images: int
    reference: str | None
    metric: str
    rows: list[ArtifactEval]
    gallery: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, dict[int, Detections | Classification]] = field(
        default_factory=dict, repr=False
    )

    def row(self, artifact: str) -> ArtifactEval | None:
        """The row of one artifact."""
        return next((r for r in self.rows if r.artifact == artifact), None)


def reference_artifact(bundle: Bundle, runnable: list[Artifact]) -> Artifact | None:
    """The FP32 artifact the others are compared with: the root of the provenance chains
    among the runnable FP32 artifacts (the source most others were made from)."""
    fp32 = [a for a in runnable if a.precision == "fp32"]
    if not fp32:
        return None
    made_from: dict[str, int] = {}
    for a in bundle.manifest.artifacts:
        if a.produced_by.source:
            made_from[a.produced_by.source] = made_from.get(a.produced_by.source, 0) + 1
    return max(fp32, key=lambda a: (a.produced_by.source is None, made_from.get(a.id, 0)))


def evaluate_all(
    bundle: Bundle,
    lab: Labelled,
    *,
    artifacts: list[str] | None = None,
    progress: bool = False,
    threads: int | None = None,
) -> ControlledReport:
    """Evaluate every artifact (or those named) on ``lab`` with one protocol."""
    from cvdeploy.runtime import RunnerOptions
    from cvdeploy.verify import Protocol

    proto = Protocol()
    th = Thresholds(
        conf=proto.conf, iou=proto.iou, max_det=proto.max_det, multi_label=proto.multi_label
    )
    spec = bundle.spec
    conf = spec.decoder.conf
    wanted = (
        [bundle.artifact(a) for a in artifacts] if artifacts else list(bundle.manifest.artifacts)
    )
    rows: list[ArtifactEval] = []
    results: dict[str, dict[int, Detections | Classification]] = {}
    images = None
    opts = RunnerOptions(threads=threads) if threads else None
    for art in wanted:
        row = ArtifactEval(artifact=art.id, precision=art.precision)
        rows.append(row)
        t0 = time.perf_counter()
        try:
            pred = Predictor.from_bundle(bundle, art.id, batch=1, thresholds=th, options=opts)
            with pred:
                row.inference_precision = pred.runner.effective_precision
                if images is None:
                    images = [read_image(p) for p in lab.paths]
                res: dict[int, Detections | Classification] = {}
                for i, img in track(
                    list(enumerate(images)),
                    total=len(images),
                    description=f"evaluating {art.id}",
                    enabled=progress,
                ):
                    res[i] = pred.run_batch([img]).results[0]
        except CvdeployError as exc:
            row.status = "skipped"
            row.reason = exc.message
            continue
        results[art.id] = res
        row.seconds = time.perf_counter() - t0
        if lab.task == "classify":
            cres = {i: r for i, r in res.items() if isinstance(r, Classification)}
            keep = list(range(len(lab)))
            row.score = top1(cres, lab, keep)
            row.per_class = _class_accuracy(cres, lab, list(spec.names))
        else:
            dres = {i: r for i, r in res.items() if isinstance(r, Detections)}
            m = detection_map(lab, dres)
            row.score, row.score50 = m.get("map50_95"), m.get("map50")
            row.per_class = dict(m.get("per_class") or {})
            for i, r in dres.items():
                c = match(r, lab.boxes[i], lab.classes[i], conf=conf, num_classes=spec.num_classes)
                row.tp += c.tp
                row.fp += c.fp
                row.fn += c.fn
    runnable = [bundle.artifact(r.artifact) for r in rows if r.status == "ok"]
    ref = reference_artifact(bundle, runnable)
    report = ControlledReport(
        dataset=lab.name,
        images=len(lab),
        reference=None if ref is None else ref.id,
        metric="top1" if lab.task == "classify" else "map50_95",
        rows=rows,
        results=results,
    )
    if ref is None:
        return report
    base = report.row(ref.id)
    assert base is not None
    worst: list[tuple[float, int, str]] = []
    for row in rows:
        if row.status != "ok" or row.artifact == ref.id:
            continue
        if row.score is not None and base.score is not None:
            row.delta = row.score - base.score
        deltas = {k: v - base.per_class[k] for k, v in row.per_class.items() if k in base.per_class}
        row.per_class_delta = dict(sorted(deltas.items(), key=lambda kv: kv[1]))
        agree = []
        for i in range(len(lab)):
            a, b = results[ref.id].get(i), results[row.artifact].get(i)
            if isinstance(a, Detections) and isinstance(b, Detections):
                f = agreement(a, b, conf=conf)
            elif isinstance(a, Classification) and isinstance(b, Classification):
                f = float(np.argmax(a.probs) == np.argmax(b.probs))
            else:
                continue
            agree.append(f)
            worst.append((f, i, row.artifact))
        row.agreement = float(np.mean(agree)) if agree else None
    worst.sort()
    seen: set[int] = set()
    for f, i, aid in worst:
        if f >= 1.0 or i in seen:
            continue
        seen.add(i)
        report.gallery.append(
            {"image": str(lab.paths[i]), "index": i, "artifact": aid, "agreement": f}
        )
        if len(report.gallery) >= GALLERY:
            break
    return report


def _class_accuracy(
    res: dict[int, Classification], lab: Labelled, names: list[str]
) -> dict[str, float]:
    out: dict[str, float] = {}
    for c, name in enumerate(names):
        idx = [i for i in range(len(lab)) if lab.labels[i] == c]
        if idx:
            v = top1(res, lab, idx)
            if not math.isnan(v):
                out[name] = v
    return out
