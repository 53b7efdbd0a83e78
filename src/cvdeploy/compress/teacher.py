"""Teachers: what the student learns from, on the same (augmented) images it sees.

* :class:`TorchTeacher`: a torch module in eval mode (the unpruned model when pruning),
  giving dense targets: its decoded output ``[B, 4 + nc, N]`` (or logits ``[B, nc]``).
* :class:`BundleTeacher`: any bundle cvdeploy can run (an imported ONNX or OpenVINO model,
  INT8 or not, no training code), through its own runtime at its recorded precision. When
  its output layout, input size and preprocessing are the student's (a yolov8-layout
  detector), it gives dense targets from the student's own input tensor; otherwise it runs
  its own pipeline (its preprocessing, decoder and NMS) on the augmented image and gives
  pseudo-labels: its boxes above a confidence, in the student's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from cvdeploy.bundle import Bundle
from cvdeploy.errors import UsageError
from cvdeploy.pipeline import Detections, Predictor, Thresholds, select_artifact
from cvdeploy.pipeline.nms import box_iou
from cvdeploy.runtime import RunnerOptions
from cvdeploy.spec import ModelSpec
from cvdeploy.zoo.trainset import YoloTrainSet

__all__ = ["BundleTeacher", "LabelledOnce", "Targets", "Teacher", "TorchTeacher"]

DENSE_DECODERS = ("yolov8",)
"""Decoders whose raw output is the zoo student's decoded layout ``[B, 4 + nc, N]``."""


@dataclass
class Targets:
    """What the teacher says about one batch.

    Attributes:
        dense: Detection ``[B, 4 + nc, N]`` (``cx, cy, w, h`` pixels, class probabilities)
            or classification probabilities ``[B, nc]``; ``None`` when not aligned.
        boxes: Pseudo-labels ``[B, M, 5]`` ``(cls, x1, y1, x2, y2)`` in the student's pixels
            (padding rows ``cls == -1``), or ``None``.
    """

    dense: torch.Tensor | None = None
    boxes: torch.Tensor | None = None


class Teacher(Protocol):
    """Gives targets for a batch of student inputs (RGB 0..1, the student's size)."""

    description: str

    def targets(self, x: torch.Tensor) -> Targets:
        """Targets for the student input ``x`` ``[B, 3, s, s]``."""
        ...

    def close(self) -> None:
        """Release the runtime."""
        ...


class TorchTeacher:
    """A torch module as the teacher (dense targets).

    Args:
        module: The teacher (put in eval mode; its weights are not changed).
        task: ``detect`` or ``classify``.
    """

    def __init__(self, module: torch.nn.Module, *, task: str) -> None:
        self.module = module.eval()
        self.task = task
        self.description = f"torch {type(module).__name__}"

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> Targets:
        """The teacher's decoded output (probabilities for a classifier)."""
        out = self.module(x)
        if isinstance(out, list | tuple):
            out = out[0]
        if self.task == "classify":
            out = out.softmax(1)
        return Targets(dense=out.detach().float())

    def close(self) -> None:
        """Nothing to release."""


def _student_like(spec: ModelSpec, student_imgsz: int) -> bool:
    pp = spec.preprocess
    return (
        spec.decoder.kind in DENSE_DECODERS
        and tuple(spec.imgsz) == (student_imgsz, student_imgsz)
        and pp.resize == "letterbox"
        and pp.color == "rgb"
        and abs(pp.scale - 1 / 255) < 1e-9
        and tuple(pp.mean) == (0.0, 0.0, 0.0)
        and tuple(pp.std) == (1.0, 1.0, 1.0)
    )


class BundleTeacher:
    """Any runnable bundle as the teacher, through its own runtime.

    Args:
        bundle: The teacher bundle.
        artifact: Which artifact (default: the bundle's recommended / preferred one).
        student_imgsz: The student's input side.
        pseudo_conf: Smallest teacher confidence kept as a pseudo-label.
        threads: Runtime threads of the teacher.
    """

    def __init__(
        self,
        bundle: Bundle,
        *,
        artifact: str | None = None,
        student_imgsz: int,
        pseudo_conf: float = 0.3,
        threads: int | None = None,
    ) -> None:
        art = select_artifact(bundle, artifact)
        self.spec = bundle.spec
        self.artifact = art.id
        self.pseudo_conf = pseudo_conf
        self.student_imgsz = student_imgsz
        self.task = self.spec.task
        self.dense_ok = self.task == "classify" or _student_like(self.spec, student_imgsz)
        self.predictor = Predictor.from_bundle(
            bundle,
            art.id,
            options=RunnerOptions(
                threads=threads,
                # torch trains between the teacher's runs: ONNX Runtime's threads must not
                # spin on the cores torch's threads need
                extra={"allow_spinning": False} if art.format == "onnx" else {},
            ),
            thresholds=Thresholds(conf=pseudo_conf, multi_label=False),
            batch=64,
        )
        self.predictor.runner.load()
        mode = "dense outputs" if self.dense_ok else f"pseudo-labels (conf >= {pseudo_conf})"
        # the teacher without how it teaches (distill describes its offline mode with it)
        self.identity = f"bundle {bundle.name} artifact {art.id} ({art.format}, {art.precision})"
        self.description = f"{self.identity}, {mode}"
        self._checked = False

    def targets(self, x: torch.Tensor) -> Targets:
        """Dense targets when aligned with the student, else pseudo-labels."""
        step = self.predictor.runner.io.fixed_batch or self.predictor.batch
        parts = [self._targets(x[i : i + step]) for i in range(0, x.shape[0], step)]
        if parts[0].dense is not None:
            return Targets(dense=torch.cat([p.dense for p in parts if p.dense is not None]))
        boxes = [p.boxes for p in parts if p.boxes is not None]
        m = max(b.shape[1] for b in boxes)
        padded = [torch.nn.functional.pad(b, (0, 0, 0, m - b.shape[1]), value=-1.0) for b in boxes]
        return Targets(boxes=torch.cat(padded))

    def _targets(self, x: torch.Tensor) -> Targets:
        if self.task == "detect" and self.dense_ok:
            out = self.predictor.infer(x.numpy().astype(np.float32))[0]
            return Targets(dense=torch.from_numpy(np.ascontiguousarray(out, np.float32)))
        images = _to_bgr_uint8(x)
        run = self.predictor.run_batch(images, keep_outputs=self.task == "classify")
        if self.task == "classify":
            assert run.outputs is not None
            logits = torch.from_numpy(np.asarray(run.outputs[0], np.float32))
            probs = logits.softmax(1) if self.spec.decoder.softmax else logits
            return Targets(dense=probs)
        return Targets(boxes=_pseudo_labels(run.results))

    def label_set(self, ts: YoloTrainSet, *, batch: int = 32, flip: bool = False) -> int:
        """Label every image of ``ts`` once with the teacher's detections above
        ``pseudo_conf`` (its own preprocessing, decoder and NMS, on the un-augmented image),
        replacing the set's labels; augmentation then moves them with the image, as it moves
        real labels. Returns the number of boxes.

        ``flip``: the teacher also labels the mirrored image (test-time augmentation), both
        views down to a third of ``pseudo_conf``; a box is the score-weighted mean of its
        same-class matches (IoU > 0.55, one per view), with the mean score over the two
        views (a view that missed it counts 0), kept from ``pseudo_conf``. It costs a
        second pass and gives more precise pseudo-labels (see :func:`fuse_views`)."""
        total = 0
        batch = min(batch, self.predictor.runner.io.fixed_batch or self.predictor.batch)
        low = Thresholds(conf=self.pseudo_conf * FLIP_VIEW_SHARE, multi_label=False)
        for i in range(0, len(ts), batch):
            imgs = [np.ascontiguousarray(im[..., ::-1]) for im in ts.images[i : i + batch]]
            if not flip:
                run = self.predictor.run_batch(imgs)
                rows = [_label_rows(r) for r in run.results]
            else:
                plain = self.predictor.run_batch(imgs, thresholds=low).results
                mirrored = self.predictor.run_batch(
                    [np.ascontiguousarray(im[:, ::-1]) for im in imgs], thresholds=low
                ).results
                rows = []
                for a, b, im in zip(plain, mirrored, imgs, strict=True):
                    (ra, sa), (rb, sb) = _rows_and_scores(a), _rows_and_scores(b)
                    rb = _unflip(rb, im.shape[1])
                    rows.append(fuse_views([ra, rb], [sa, sb], keep=self.pseudo_conf))
            for k, r in enumerate(rows):
                ts.labels[i + k] = r
                total += len(r)
        return total

    def close(self) -> None:
        """Release the teacher's runtime."""
        self.predictor.runner.close()


class LabelledOnce:
    """The teacher after it labelled the training set (:meth:`BundleTeacher.label_set`):
    nothing more per batch, the student learns the pseudo-labels as labels."""

    def __init__(self, description: str) -> None:
        self.description = description

    def targets(self, x: torch.Tensor) -> Targets:
        """No per-batch targets."""
        return Targets()

    def close(self) -> None:
        """Nothing to release."""


def _to_bgr_uint8(x: torch.Tensor) -> list[np.ndarray]:
    arr = (x.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [np.ascontiguousarray(a[..., ::-1]) for a in arr]


def _rows_and_scores(result: Any) -> tuple[np.ndarray, np.ndarray]:
    """A result's detections as label rows ``[n, 5]`` ``(cls, x1, y1, x2, y2)`` and their
    scores ``[n]``, float32."""
    if not isinstance(result, Detections) or not len(result.scores):
        return np.zeros((0, 5), np.float32), np.zeros(0, np.float32)
    cls = result.class_ids.astype(np.float32)[:, None]
    rows = np.concatenate([cls, result.boxes.astype(np.float32)], 1)
    return rows, result.scores.astype(np.float32)


def _label_rows(result: Any) -> np.ndarray:
    """A result's detections as label rows ``[n, 5]`` ``(cls, x1, y1, x2, y2)`` float32."""
    return _rows_and_scores(result)[0]


FLIP_VIEW_SHARE = 1 / 3
"""With ``flip``, each view keeps detections down to this share of ``pseudo_conf``: a box
seen in both views at a third of the threshold each is still below it after the mean."""
FUSE_IOU = 0.55


def _unflip(rows: np.ndarray, width: int) -> np.ndarray:
    """Label rows of a horizontally mirrored image, in the original image's coordinates."""
    out = rows.copy()
    out[:, 1], out[:, 3] = width - rows[:, 3], width - rows[:, 1]
    return out


def fuse_views(rows: list[np.ndarray], scores: list[np.ndarray], *, keep: float) -> np.ndarray:
    """Fuse the detections of several views of one image (weighted box fusion).

    Boxes are taken in decreasing score; each gathers the unused same-class boxes of the
    other views that overlap it (IoU > ``FUSE_IOU``), at most one per view. The fused box
    is their score-weighted mean, its score the sum of their scores over the number of
    views (a view that missed the object counts 0); fused boxes from ``keep`` are returned.

    Args:
        rows: Per view, label rows ``[n, 5]`` ``(cls, x1, y1, x2, y2)``.
        scores: Per view, the rows' scores ``[n]``.
        keep: Smallest fused score kept.

    Returns:
        Label rows ``[m, 5]`` float32.
    """
    if not rows:
        return np.zeros((0, 5), np.float32)
    allr = np.concatenate(rows).astype(np.float64)
    alls = np.concatenate(scores).astype(np.float64)
    view = np.concatenate([np.full(len(r), v) for v, r in enumerate(rows)])
    used = np.zeros(len(alls), bool)
    out: list[np.ndarray] = []
    for i in np.argsort(-alls, kind="stable"):
        if used[i]:
            continue
        cand = np.flatnonzero(~used & (allr[:, 0] == allr[i, 0]) & (view != view[i]))
        group = [int(i)]
        if len(cand):
            iou = box_iou(allr[i : i + 1, 1:], allr[cand, 1:])[0]
            taken = {int(view[i])}
            for k in np.argsort(-alls[cand], kind="stable"):
                j = int(cand[k])
                if iou[k] > FUSE_IOU and int(view[j]) not in taken:
                    taken.add(int(view[j]))
                    group.append(j)
        used[group] = True
        w = alls[group]
        if w.sum() / len(rows) >= keep:
            box = (allr[group, 1:] * w[:, None]).sum(0) / w.sum()
            out.append(np.concatenate([[allr[i, 0]], box]))
    return np.asarray(out, np.float32).reshape(-1, 5)


def _pseudo_labels(results: list[Any]) -> torch.Tensor:
    rows = [_label_rows(r) for r in results]
    out = torch.full((len(results), max([len(r) for r in rows] + [1]), 5), -1.0)
    for k, r in enumerate(rows):
        out[k, : len(r)] = torch.from_numpy(r)
    return out


def load_teacher_bundle(path: Path) -> Bundle:
    """Load a teacher bundle, with a clear error when it is not one."""
    path = Path(path)
    if not (path / "bundle.json").is_file():
        raise UsageError(
            f"--teacher {path} is not a bundle (no bundle.json)",
            hint="import an external model first: `cvdeploy import MODEL.onnx --out TEACHER`",
        )
    return Bundle.load(path)
