"""Task-aligned label assignment (TAL, as in TOOD / YOLOv8) and box helpers."""

from __future__ import annotations

import math

import torch

__all__ = ["TaskAlignedAssigner", "bbox2dist", "bbox_iou", "dist2bbox"]


def bbox_iou(
    box1: torch.Tensor, box2: torch.Tensor, *, ciou: bool = True, eps: float = 1e-7
) -> torch.Tensor:
    """IoU (or complete IoU) of two broadcastable sets of ``xyxy`` boxes.

    Args:
        box1: ``[..., 4]`` boxes.
        box2: ``[..., 4]`` boxes.
        ciou: Return CIoU (IoU minus centre-distance and aspect-ratio penalties).
        eps: Numerical guard.

    Returns:
        ``[...]`` IoU or CIoU values.
    """
    b1_x1, b1_y1, b1_x2, b1_y2 = box1.unbind(-1)
    b2_x1, b2_y1, b2_x2, b2_y2 = box2.unbind(-1)
    w1, h1 = b1_x2 - b1_x1, (b1_y2 - b1_y1).clamp(min=eps)
    w2, h2 = b2_x2 - b2_x1, (b2_y2 - b2_y1).clamp(min=eps)
    inter = (torch.minimum(b1_x2, b2_x2) - torch.maximum(b1_x1, b2_x1)).clamp(min=0) * (
        torch.minimum(b1_y2, b2_y2) - torch.maximum(b1_y1, b2_y1)
    ).clamp(min=0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if not ciou:
        return iou
    cw = torch.maximum(b1_x2, b2_x2) - torch.minimum(b1_x1, b2_x1)
    ch = torch.maximum(b1_y2, b2_y2) - torch.minimum(b1_y1, b2_y1)
    c2 = cw.pow(2) + ch.pow(2) + eps
    rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2).pow(2) + (b2_y1 + b2_y2 - b1_y1 - b1_y2).pow(2)) / 4
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def dist2bbox(distance: torch.Tensor, anchor_points: torch.Tensor) -> torch.Tensor:
    """Turn ``[..., 4]`` (left, top, right, bottom) distances into ``xyxy`` boxes."""
    lt, rb = distance.chunk(2, -1)
    return torch.cat((anchor_points - lt, anchor_points + rb), -1)


def bbox2dist(anchor_points: torch.Tensor, bbox: torch.Tensor, reg_max: float) -> torch.Tensor:
    """Turn ``xyxy`` boxes into (left, top, right, bottom) distances clamped for DFL."""
    x1y1, x2y2 = bbox.chunk(2, -1)
    return torch.cat((anchor_points - x1y1, x2y2 - anchor_points), -1).clamp(0, reg_max - 0.01)


class TaskAlignedAssigner:
    """Assign ground-truth boxes to anchors by a task-aligned metric ``s^alpha * iou^beta``.

    For each ground-truth box, the ``topk`` anchors whose centres lie inside it and that have
    the highest alignment become candidates; an anchor claimed by several boxes keeps the one
    it overlaps most. Soft class targets are the alignment normalised per box by its best IoU.

    Args:
        topk: Candidates per ground-truth box.
        alpha: Exponent of the classification score.
        beta: Exponent of the IoU.
        eps: Numerical guard.
    """

    def __init__(
        self, *, topk: int = 10, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9
    ) -> None:
        self.topk = topk
        self.alpha = alpha
        self.beta = beta
        self.eps = eps

    @torch.no_grad()
    def __call__(
        self,
        pd_scores: torch.Tensor,
        pd_bboxes: torch.Tensor,
        anc_points: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_bboxes: torch.Tensor,
        mask_gt: torch.Tensor,
        *,
        iou_scaled: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Compute the targets.

        Args:
            pd_scores: ``[B, N, nc]`` predicted probabilities.
            pd_bboxes: ``[B, N, 4]`` predicted ``xyxy`` boxes (pixels).
            anc_points: ``[N, 2]`` anchor centres (pixels).
            gt_labels: ``[B, M]`` class indices (int64).
            gt_bboxes: ``[B, M, 4]`` ``xyxy`` boxes (pixels).
            mask_gt: ``[B, M]`` bool, True for real (non-padding) boxes.
            iou_scaled: Scale each box's soft targets by its best IoU (TAL); when False the
                best-aligned anchor of each box gets a target of 1.

        Returns:
            ``(target_labels [B, N], target_bboxes [B, N, 4], target_scores [B, N, nc],
            fg_mask [B, N] bool)``.
        """
        bsz, n_anchors, nc = pd_scores.shape
        n_max = gt_bboxes.shape[1]
        if n_max == 0:
            return (
                torch.zeros((bsz, n_anchors), dtype=torch.long),
                torch.zeros((bsz, n_anchors, 4)),
                torch.zeros_like(pd_scores),
                torch.zeros((bsz, n_anchors), dtype=torch.bool),
            )
        # anchors whose centre lies inside each gt: [B, M, N]
        lt = anc_points.view(1, 1, -1, 2) - gt_bboxes[:, :, None, :2]
        rb = gt_bboxes[:, :, None, 2:] - anc_points.view(1, 1, -1, 2)
        in_gts = (torch.cat((lt, rb), -1).amin(-1) > self.eps) & mask_gt[:, :, None]
        # alignment metric
        labels = gt_labels.clamp(min=0)
        scores = pd_scores.gather(2, labels[:, None, :].expand(-1, n_anchors, -1)).transpose(1, 2)
        overlaps = bbox_iou(gt_bboxes[:, :, None, :], pd_bboxes[:, None, :, :]).clamp(min=0)
        overlaps = overlaps * in_gts
        align = scores.pow(self.alpha) * overlaps.pow(self.beta) * in_gts
        # top-k candidates per gt
        k = min(self.topk, n_anchors)
        topk_idx = align.topk(k, dim=-1).indices
        is_topk = torch.zeros_like(align, dtype=torch.bool).scatter_(-1, topk_idx, True)
        mask_pos = is_topk & in_gts
        # an anchor claimed by several gts keeps the one with the highest IoU
        multi = mask_pos.sum(1) > 1  # [B, N]
        if bool(multi.any()):
            best = overlaps.argmax(1)  # [B, N]
            best_mask = torch.zeros_like(mask_pos).scatter_(1, best[:, None, :], True)
            mask_pos = torch.where(
                multi[:, None, :], best_mask & mask_pos.any(1, keepdim=True), mask_pos
            )
        fg_mask = mask_pos.any(1)
        target_gt_idx = mask_pos.to(torch.uint8).argmax(1)  # [B, N]
        batch_idx = torch.arange(bsz)[:, None]
        target_labels = labels[batch_idx, target_gt_idx]
        target_bboxes = gt_bboxes[batch_idx, target_gt_idx]
        target_scores = torch.nn.functional.one_hot(target_labels, nc).to(pd_scores.dtype)
        target_scores = target_scores * fg_mask[..., None]
        # normalise the alignment of each gt's positives by its best IoU
        align = align * mask_pos
        pos_align = align.amax(-1, keepdim=True)
        pos_overlap = (overlaps * mask_pos).amax(-1, keepdim=True) if iou_scaled else 1.0
        norm = (align * pos_overlap / (pos_align + self.eps)).amax(1)  # [B, N]
        return target_labels, target_bboxes, target_scores * norm[..., None], fg_mask
