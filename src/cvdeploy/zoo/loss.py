"""Detection loss of the zoo detector: BCE (classes) + CIoU and DFL (boxes), TAL targets."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cvdeploy.zoo.assigner import TaskAlignedAssigner, bbox2dist, bbox_iou, dist2bbox
from cvdeploy.zoo.models import make_anchors

__all__ = ["DetectionLoss", "LossGains"]


@dataclass(frozen=True)
class LossGains:
    """Weights of the three loss parts (YOLOv8's defaults)."""

    box: float = 7.5
    cls: float = 0.5
    dfl: float = 1.5


class DetectionLoss:
    """Compute the training loss from the detector's raw per-level outputs.

    Args:
        num_classes: Number of classes.
        reg_max: DFL bins per box side.
        strides: Stride of each output level.
        gains: Loss weights.
        assigner: Label assigner (a default :class:`TaskAlignedAssigner` if omitted).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        reg_max: int,
        strides: tuple[int, ...],
        gains: LossGains | None = None,
        assigner: TaskAlignedAssigner | None = None,
    ) -> None:
        self.nc = num_classes
        self.reg_max = reg_max
        self.strides = strides
        self.gains = gains or LossGains()
        self.assigner = assigner or TaskAlignedAssigner()
        self.proj = torch.arange(reg_max, dtype=torch.float32)

    def __call__(
        self, feats: list[torch.Tensor], targets: torch.Tensor, *, static_assign: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(total loss, detached [box, cls, dfl] parts)``.

        Args:
            feats: Raw outputs ``[B, 4 * reg_max + nc, H/s, W/s]`` per level.
            targets: ``[B, M, 5]`` rows of ``(cls, x1, y1, x2, y2)`` in pixels; padding rows
                have ``cls == -1``.
            static_assign: Assign with fixed anchor boxes (side ``5 * stride``) and unit
                scores instead of the predictions: stable targets while the predictions are
                still noise (a warm-up, as the ATSS phase of PP-YOLOE / YOLOv6).
        """
        bsz = feats[0].shape[0]
        shapes = [(int(f.shape[2]), int(f.shape[3])) for f in feats]
        x = torch.cat([f.flatten(2) for f in feats], 2).float()
        pred_distri, pred_scores = x.split((4 * self.reg_max, self.nc), 1)
        pred_distri = pred_distri.transpose(1, 2)  # [B, N, 4 * reg_max]
        pred_scores = pred_scores.transpose(1, 2)  # [B, N, nc]
        anchors, stride = make_anchors(shapes, self.strides, dtype=x.dtype, device=x.device)
        probs = pred_distri.view(bsz, -1, 4, self.reg_max).softmax(3)
        pred_bboxes = dist2bbox(probs @ self.proj.to(x.dtype), anchors)  # grid units

        gt_labels = targets[..., 0].long()
        gt_bboxes = targets[..., 1:5]
        mask_gt = gt_labels >= 0
        if static_assign:
            assign_scores = torch.ones_like(pred_scores)
            half = 2.5 * stride
            assign_boxes = torch.cat((anchors * stride - half, anchors * stride + half), -1)
            assign_boxes = assign_boxes.expand(bsz, -1, -1)
        else:
            assign_scores = pred_scores.detach().sigmoid()
            assign_boxes = pred_bboxes.detach() * stride
        _, target_bboxes, target_scores, fg = self.assigner(
            assign_scores,
            assign_boxes,
            anchors * stride,
            gt_labels,
            gt_bboxes,
            mask_gt,
            iou_scaled=not static_assign,
        )
        tss = target_scores.sum().clamp(min=1.0)
        loss_cls = (
            F.binary_cross_entropy_with_logits(pred_scores, target_scores, reduction="sum") / tss
        )
        loss_box = x.new_zeros(())
        loss_dfl = x.new_zeros(())
        if bool(fg.any()):
            t_boxes = target_bboxes / stride
            weight = target_scores.sum(-1)[fg]
            iou = bbox_iou(pred_bboxes[fg], t_boxes[fg])
            loss_box = ((1.0 - iou) * weight).sum() / tss
            t_ltrb = bbox2dist(anchors, t_boxes, self.reg_max - 1)[fg]  # [P, 4]
            loss_dfl = (
                _dfl(pred_distri[fg].view(-1, self.reg_max), t_ltrb.reshape(-1))
                .view(-1, 4)
                .mean(-1)
                * weight
            ).sum() / tss
        g = self.gains
        total = g.box * loss_box + g.cls * loss_cls + g.dfl * loss_dfl
        return total, torch.stack((loss_box, loss_cls, loss_dfl)).detach()


def _dfl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distribution focal loss: cross-entropy to the two bins around a continuous target."""
    tl = target.long()
    tr = tl + 1
    wl = tr.float() - target
    wr = 1.0 - wl
    return (
        F.cross_entropy(logits, tl, reduction="none") * wl
        + F.cross_entropy(logits, tr, reduction="none") * wr
    )
