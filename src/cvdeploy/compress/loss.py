"""Distillation losses: the student against the teacher's outputs (and labels when given).

Detection, with dense targets (the teacher's decoded ``[B, 4 + nc, N]`` on the same anchors):
binary cross-entropy of the student's class logits against the teacher's probabilities
(every anchor, normalised by the teacher's total score, as the zoo's detection loss
normalises by its target scores), plus a complete-IoU loss between the student's and the
teacher's boxes on the anchors the teacher scores (weighted by that score). With
pseudo-labels or labels: the zoo's detection loss (task-aligned assignment, CIoU, DFL, BCE).
Classification: KL divergence to the teacher's probabilities at a temperature, plus
cross-entropy with labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cvdeploy.compress.teacher import Targets
from cvdeploy.errors import UsageError
from cvdeploy.zoo.assigner import bbox_iou
from cvdeploy.zoo.loss import DetectionLoss
from cvdeploy.zoo.models import Detector
from cvdeploy.zoo.train import SHORT_BUDGET_GAINS

__all__ = ["DistillLoss", "StudentOutput", "student_output"]

SCORE_FLOOR = 0.05
"""Anchors whose best teacher score is below this carry no box loss."""


@dataclass
class StudentOutput:
    """The student's output for a batch.

    Attributes:
        decoded: Detection ``[B, 4 + nc, N]`` boxes (pixels) and probabilities, or
            classification logits ``[B, nc]``.
        logits: Detection class logits ``[B, nc, N]`` (``None`` for a classifier).
        raw: The zoo detector's raw per-level maps (for the detection loss), or ``None``.
    """

    decoded: torch.Tensor
    logits: torch.Tensor | None
    raw: list[torch.Tensor] | None


def student_output(model: nn.Module, x: torch.Tensor, *, task: str) -> StudentOutput:
    """Run the student with gradients.

    A zoo detector (``forward_raw`` and a ``head``) runs in its current mode and is decoded
    here (logits kept for a stable BCE). Any other detector is run as called (its output is
    its spec's yolov8 layout with probabilities); its logits are recovered from them.
    """
    if task == "classify":
        out = model(x)
        return StudentOutput(
            decoded=out[0] if isinstance(out, list | tuple) else out, logits=None, raw=None
        )
    if isinstance(model, Detector) or (hasattr(model, "forward_raw") and hasattr(model, "head")):
        raw = model.forward_raw(x)  # type: ignore[operator]
        head: Any = model.head
        decoded = head.decode(raw)
        flat = torch.cat([o.flatten(2) for o in raw], 2)
        logits = flat[:, 4 * head.reg_max :]
        return StudentOutput(decoded=decoded, logits=logits, raw=raw)
    out = model(x)
    out = out[0] if isinstance(out, list | tuple) else out
    if out.dim() != 3:
        raise UsageError(
            f"the student's output has shape {tuple(out.shape)}; distillation needs the "
            "yolov8 layout [B, 4 + classes, anchors]"
        )
    probs = out[:, 4:].clamp(1e-6, 1 - 1e-6)
    return StudentOutput(decoded=out, logits=torch.log(probs / (1 - probs)), raw=None)


def _xyxy(cxcywh: torch.Tensor) -> torch.Tensor:
    cxcy, wh = cxcywh[..., :2], cxcywh[..., 2:4]
    return torch.cat((cxcy - wh / 2, cxcy + wh / 2), -1)


class DistillLoss:
    """The loss of one step: teacher targets, plus labels when given.

    Args:
        task: ``detect`` or ``classify``.
        num_classes: Number of classes.
        box_gain: Weight of the dense box term.
        temperature: Classification distillation temperature.
        model: The zoo detector student (needed for pseudo-labels and labels).
        static_warmup: Fraction of training (the ``progress`` given to each call) during
            which labels and pseudo-labels are assigned with fixed anchor boxes, as the zoo's
            training does for a model trained from scratch (0: never).
    """

    def __init__(
        self,
        *,
        task: str,
        num_classes: int,
        box_gain: float = 5.0,
        temperature: float = 2.0,
        model: nn.Module | None = None,
        static_warmup: float = 0.0,
    ) -> None:
        self.task = task
        self.static_warmup = static_warmup
        self.nc = num_classes
        self.box_gain = box_gain
        self.temperature = temperature
        self.det_loss: DetectionLoss | None = None
        if task == "detect" and model is not None and hasattr(model, "forward_raw"):
            self.det_loss = DetectionLoss(
                num_classes=num_classes,
                reg_max=int(model.reg_max),  # type: ignore[arg-type]
                strides=tuple(model.strides),  # type: ignore[arg-type]
                gains=SHORT_BUDGET_GAINS,
            )

    def __call__(
        self,
        out: StudentOutput,
        targets: Targets,
        labels: torch.Tensor | None,
        *,
        progress: float = 1.0,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Return ``(loss, its parts as floats)``; ``progress`` is the training's (0..1)."""
        if self.task == "classify":
            return self._classify(out, targets, labels)
        total = out.decoded.new_zeros(())
        parts: dict[str, float] = {}
        if targets.dense is not None:
            t = targets.dense.to(out.decoded.dtype)
            if t.shape != out.decoded.shape:
                raise UsageError(
                    f"the teacher's output {tuple(t.shape)} does not line up with the "
                    f"student's {tuple(out.decoded.shape)}"
                )
            assert out.logits is not None
            t_scores = t[:, 4:]
            norm = t_scores.sum().clamp(min=1.0)
            cls = F.binary_cross_entropy_with_logits(out.logits, t_scores, reduction="sum") / norm
            w = t_scores.max(1).values  # [B, N]
            mask = w > SCORE_FLOOR
            box = out.decoded.new_zeros(())
            if bool(mask.any()):
                sb = _xyxy(out.decoded[:, :4].transpose(1, 2))[mask]
                tb = _xyxy(t[:, :4].transpose(1, 2))[mask]
                iou = bbox_iou(sb, tb)
                box = ((1.0 - iou) * w[mask]).sum() / w[mask].sum()
            total = total + cls + self.box_gain * box
            parts.update(kd_cls=float(cls.detach()), kd_box=float(box.detach()))
        for key, boxes in (("pseudo", targets.boxes), ("labels", labels)):
            if boxes is None:
                continue
            if self.det_loss is None or out.raw is None:
                raise UsageError(
                    f"learning from {'pseudo-labels' if key == 'pseudo' else 'labels'} needs "
                    "a zoo detector student (forward_raw and a head)",
                    hint="use --student zoo:detector-p (or another zoo detector)",
                )
            loss, p = self.det_loss(out.raw, boxes, static_assign=progress < self.static_warmup)
            total = total + loss
            parts[key] = float(loss.detach())
            del p
        if not parts:
            raise UsageError("nothing to learn from: no teacher targets and no labels")
        return total, parts

    def _classify(
        self, out: StudentOutput, targets: Targets, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = out.decoded
        total = logits.new_zeros(())
        parts: dict[str, float] = {}
        if targets.dense is not None:
            temp = self.temperature
            t = targets.dense.to(logits.dtype).clamp_min(1e-8)
            t = t.pow(1 / temp)
            t = t / t.sum(1, keepdim=True)
            kd = F.kl_div(F.log_softmax(logits / temp, 1), t, reduction="batchmean") * temp**2
            total = total + kd
            parts["kd"] = float(kd.detach())
        if labels is not None:
            ce = F.cross_entropy(logits, labels, label_smoothing=0.1)
            total = total + ce
            parts["labels"] = float(ce.detach())
        if not parts:
            raise UsageError("nothing to learn from: no teacher targets and no labels")
        return total, parts
