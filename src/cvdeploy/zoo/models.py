"""The zoo's small architectures, built from frozen configs.

Two families:

* an anchor-free YOLO-style detector (Conv-BN-SiLU, C2f blocks, SPPF, a PAN neck and a
  decoupled head with DFL box regression, strides 8/16/32). In eval mode it returns one
  tensor ``[B, 4 + nc, N]`` laid out exactly like an Ultralytics YOLOv8 export: rows 0..3
  are ``cx, cy, w, h`` in input pixels, the other rows are sigmoid class scores, and the
  ``N`` anchors are the row-major cells of the stride-8 map, then stride 16, then 32.
* a small image classifier (Conv-BN-SiLU stages, global average pooling, a linear layer)
  returning logits ``[B, nc]``.

Sizes are named configs (``detector-p``, ``detector-n``, ``detector-s``, ``classifier-n``); use
:func:`build_model` to get a freshly initialised model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import torch
from torch import nn

from cvdeploy.errors import UsageError

__all__ = [
    "CLASSIFIER_CONFIGS",
    "DETECTOR_CONFIGS",
    "SPPF",
    "C2f",
    "Classifier",
    "ClassifierConfig",
    "Conv",
    "Detector",
    "DetectorConfig",
    "available_models",
    "build_model",
    "make_anchors",
    "model_task",
]


@dataclass(frozen=True)
class DetectorConfig:
    """Size of a detector, as multipliers of a base YOLOv8-like layout.

    Attributes:
        width: Channel multiplier applied to ``base_channels``.
        depth: Block-count multiplier applied to ``base_depths`` and ``neck_depth``.
        max_channels: Upper bound on any stage's channel count (before ``width``).
        base_channels: Channels of stem, stage 1, 2 (P3), 3 (P4) and 4 (P5).
        base_depths: C2f blocks per backbone stage 1..4.
        neck_depth: C2f blocks per neck block (before ``depth``).
        box_channels: Hidden channels of the box branch (``None``: YOLOv8's rule).
        cls_channels: Hidden channels of the class branch (``None``: YOLOv8's rule).
        reg_max: Number of DFL bins per box side.
        strides: Output strides (fixed by the layout: 8, 16, 32).
    """

    width: float
    depth: float
    max_channels: int = 1024
    base_channels: tuple[int, int, int, int, int] = (64, 128, 256, 512, 1024)
    base_depths: tuple[int, int, int, int] = (3, 6, 6, 3)
    neck_depth: int = 3
    box_channels: int | None = None
    cls_channels: int | None = None
    reg_max: int = 16
    strides: tuple[int, int, int] = (8, 16, 32)

    def channels(self) -> tuple[int, ...]:
        """Return the scaled channel counts (stem, stage 1..4), each a multiple of 8."""
        return tuple(
            _make_divisible(min(c, self.max_channels) * self.width) for c in self.base_channels
        )

    def blocks(self, n: int) -> int:
        """Return the scaled number of blocks for a base count ``n`` (at least one)."""
        return max(round(n * self.depth), 1)


@dataclass(frozen=True)
class ClassifierConfig:
    """Size of a classifier.

    Attributes:
        channels: Channels of the stem and of each stride-2 stage.
        depths: C2f blocks per stage (one entry per stage after the stem).
        head_channels: Channels of the 1x1 conv before global pooling.
        dropout: Dropout before the linear layer (training only).
    """

    channels: tuple[int, ...] = (16, 32, 64, 128)
    depths: tuple[int, ...] = (1, 1, 1)
    head_channels: int = 256
    dropout: float = 0.0


DETECTOR_CONFIGS: MappingProxyType[str, DetectorConfig] = MappingProxyType(
    {
        "detector-n": DetectorConfig(
            width=0.25, depth=0.34, max_channels=512, box_channels=32, cls_channels=32
        ),
        "detector-s": DetectorConfig(width=0.50, depth=0.34, max_channels=1024),
        # A distillation student: 0.30x detector-n's MACs at 256 px (129 M against 436 M),
        # 0.28x its parameters (0.42 M).
        "detector-p": DetectorConfig(
            width=0.125, depth=0.34, max_channels=512, box_channels=24, cls_channels=24
        ),
    }
)
"""Named detector sizes (read-only)."""

CLASSIFIER_CONFIGS: MappingProxyType[str, ClassifierConfig] = MappingProxyType(
    {
        "classifier-n": ClassifierConfig(),
    }
)
"""Named classifier sizes (read-only)."""


def _make_divisible(x: float, divisor: int = 8) -> int:
    return max(divisor, int(math.ceil(x / divisor) * divisor))


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm + SiLU.

    Args:
        c1: Input channels.
        c2: Output channels.
        k: Kernel size.
        s: Stride.
        g: Groups.
    """

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply conv, batch norm and SiLU."""
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 convs with an optional residual connection."""

    def __init__(self, c: int, *, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = Conv(c, c, 3)
        self.cv2 = Conv(c, c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the two convs (and the residual)."""
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP block with two convolutions and ``n`` bottlenecks (YOLOv8's C2f).

    Args:
        c1: Input channels.
        c2: Output channels.
        n: Number of bottlenecks.
        shortcut: Residual connections inside the bottlenecks.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, *, shortcut: bool = False) -> None:
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut=shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Split, run the bottleneck chain, concatenate every intermediate, fuse."""
        y = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained max-pools, concatenated."""

    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1)
        self.cv2 = Conv(c_ * 4, c2, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool three times and fuse."""
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """Distribution focal loss decoding: expected value of a softmax over ``reg_max`` bins."""

    proj: torch.Tensor

    def __init__(self, reg_max: int) -> None:
        super().__init__()
        self.reg_max = reg_max
        self.register_buffer("proj", torch.arange(reg_max, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, 4 * reg_max, N]`` logits to ``[B, 4, N]`` distances (in strides)."""
        b, _, n = x.shape
        p = x.view(b, 4, self.reg_max, n).softmax(2)
        return (p * self.proj.view(1, 1, -1, 1)).sum(2)


def make_anchors(
    shapes: list[tuple[int, int]],
    strides: tuple[int, ...],
    *,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build anchor centres (in grid units) and strides from feature-map shapes.

    Args:
        shapes: ``(h, w)`` of each level's feature map.
        strides: Stride of each level.
        dtype: Floating dtype of the result.
        device: Device of the result.

    Returns:
        ``(points [N, 2] as (x, y) + 0.5 in grid units, strides [N, 1])`` with the anchors
        of each level in row-major order, levels in the given order.
    """
    points, stride_list = [], []
    for (h, w), s in zip(shapes, strides, strict=True):
        sx = torch.arange(w, dtype=dtype, device=device) + 0.5
        sy = torch.arange(h, dtype=dtype, device=device) + 0.5
        yy, xx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((xx, yy), -1).view(-1, 2))
        stride_list.append(torch.full((h * w, 1), float(s), dtype=dtype, device=device))
    return torch.cat(points), torch.cat(stride_list)


class DetectHead(nn.Module):
    """Decoupled head: a DFL box branch and a class branch per level."""

    def __init__(self, nc: int, ch: tuple[int, ...], cfg: DetectorConfig) -> None:
        super().__init__()
        self.nc = nc
        self.reg_max = cfg.reg_max
        self.no = nc + 4 * cfg.reg_max
        self.strides = cfg.strides
        c2 = cfg.box_channels or max(16, ch[0] // 4, 4 * cfg.reg_max)
        c3 = cfg.cls_channels or max(ch[0], min(nc, 100))
        self.box = nn.ModuleList(
            nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * cfg.reg_max, 1))
            for c in ch
        )
        self.cls = nn.ModuleList(
            nn.Sequential(Conv(c, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for c in ch
        )
        self.dfl = DFL(cfg.reg_max)

    def init_bias(self, *, imgsz: int = 256) -> None:
        """Initialise the output biases (box = 1, class = a low prior per cell)."""
        for box, cls, s in zip(self.box, self.cls, self.strides, strict=True):
            for branch, value in ((box, 1.0), (cls, math.log(5 / self.nc / (imgsz / s) ** 2))):
                last = list(branch.children())[-1]
                if isinstance(last, nn.Conv2d) and last.bias is not None:
                    nn.init.constant_(last.bias, value)

    def raw(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Return the raw per-level maps ``[B, 4 * reg_max + nc, H/s, W/s]``."""
        return [
            torch.cat((b(f), c(f)), 1) for f, b, c in zip(feats, self.box, self.cls, strict=True)
        ]

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor] | torch.Tensor:
        """Return raw per-level maps in training, the decoded ``[B, 4 + nc, N]`` in eval."""
        out = self.raw(feats)
        return out if self.training else self.decode(out)

    def decode(self, out: list[torch.Tensor]) -> torch.Tensor:
        """Decode raw per-level maps into the YOLOv8 export layout."""
        shapes = [(int(o.shape[2]), int(o.shape[3])) for o in out]  # constants in exports
        x = torch.cat([o.flatten(2) for o in out], 2)
        box, cls = x.split((4 * self.reg_max, self.nc), 1)
        anchors, strides = make_anchors(shapes, self.strides, dtype=x.dtype, device=x.device)
        dist = self.dfl(box)  # [B, 4, N] as l, t, r, b in strides
        lt, rb = dist.chunk(2, 1)
        anchors_t = anchors.transpose(0, 1).unsqueeze(0)
        x1y1 = anchors_t - lt
        x2y2 = anchors_t + rb
        cxcy = (x1y1 + x2y2) / 2
        wh = x2y2 - x1y1
        dbox = torch.cat((cxcy, wh), 1) * strides.transpose(0, 1).unsqueeze(0)
        return torch.cat((dbox, cls.sigmoid()), 1)


class Detector(nn.Module):
    """Anchor-free YOLO-style detector.

    Args:
        cfg: Size configuration.
        num_classes: Number of classes.
    """

    def __init__(self, cfg: DetectorConfig, *, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise UsageError(f"num_classes must be >= 1, got {num_classes}")
        self.cfg = cfg
        self.num_classes = num_classes
        c0, c1, c2, c3, c4 = cfg.channels()
        d1, d2, d3, d4 = (cfg.blocks(n) for n in cfg.base_depths)
        dn = cfg.blocks(cfg.neck_depth)
        # backbone
        self.stem = Conv(3, c0, 3, 2)
        self.stage1 = nn.Sequential(Conv(c0, c1, 3, 2), C2f(c1, c1, d1, shortcut=True))
        self.stage2 = nn.Sequential(Conv(c1, c2, 3, 2), C2f(c2, c2, d2, shortcut=True))
        self.stage3 = nn.Sequential(Conv(c2, c3, 3, 2), C2f(c3, c3, d3, shortcut=True))
        self.stage4 = nn.Sequential(
            Conv(c3, c4, 3, 2), C2f(c4, c4, d4, shortcut=True), SPPF(c4, c4)
        )
        # neck (top-down then bottom-up)
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.td4 = C2f(c4 + c3, c3, dn)
        self.td3 = C2f(c3 + c2, c2, dn)
        self.down3 = Conv(c2, c2, 3, 2)
        self.bu4 = C2f(c2 + c3, c3, dn)
        self.down4 = Conv(c3, c3, 3, 2)
        self.bu5 = C2f(c3 + c4, c4, dn)
        self.head = DetectHead(num_classes, (c2, c3, c4), cfg)
        _init_weights(self)
        self.head.init_bias()

    @property
    def strides(self) -> tuple[int, int, int]:
        """Output strides of the three levels."""
        return self.cfg.strides

    @property
    def reg_max(self) -> int:
        """Number of DFL bins per box side."""
        return self.cfg.reg_max

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        """Run the detector.

        Args:
            x: Images ``[B, 3, H, W]``, RGB in ``[0, 1]``, ``H`` and ``W`` divisible by 32.

        Returns:
            In training mode, a list of three raw maps ``[B, 4 * reg_max + nc, H/s, W/s]``;
            in eval mode, ``[B, 4 + nc, N]`` (``cx, cy, w, h`` in pixels, sigmoid scores).
        """
        raw = self.forward_raw(x)
        return raw if self.training else self.head.decode(raw)

    def forward_raw(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the raw per-level head outputs whatever the mode (used by the loss)."""
        p2 = self.stage2(self.stage1(self.stem(x)))
        p3 = self.stage3(p2)
        p4 = self.stage4(p3)
        n3 = self.td4(torch.cat((self.up(p4), p3), 1))
        o3 = self.td3(torch.cat((self.up(n3), p2), 1))
        o4 = self.bu4(torch.cat((self.down3(o3), n3), 1))
        o5 = self.bu5(torch.cat((self.down4(o4), p4), 1))
        return self.head.raw([o3, o4, o5])


class Classifier(nn.Module):
    """Small image classifier returning logits.

    Args:
        cfg: Size configuration.
        num_classes: Number of classes.
    """

    def __init__(self, cfg: ClassifierConfig, *, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise UsageError(f"num_classes must be >= 1, got {num_classes}")
        if len(cfg.depths) != len(cfg.channels) - 1:
            raise UsageError("ClassifierConfig.depths needs one entry per stage after the stem")
        self.cfg = cfg
        self.num_classes = num_classes
        layers: list[nn.Module] = [Conv(3, cfg.channels[0], 3, 2)]
        for c_in, c_out, n in zip(cfg.channels[:-1], cfg.channels[1:], cfg.depths, strict=True):
            layers += [Conv(c_in, c_out, 3, 2), C2f(c_out, c_out, n, shortcut=True)]
        layers.append(Conv(cfg.channels[-1], cfg.head_channels, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(cfg.dropout)
        self.linear = nn.Linear(cfg.head_channels, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``[B, nc]`` for images ``[B, 3, H, W]`` (RGB in ``[0, 1]``)."""
        x = self.pool(self.features(x)).flatten(1)
        return self.linear(self.drop(x))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-3
            m.momentum = 0.03


def available_models() -> list[str]:
    """Return the names accepted by :func:`build_model`."""
    return sorted([*DETECTOR_CONFIGS, *CLASSIFIER_CONFIGS])


def model_task(name: str) -> Literal["detect", "classify"]:
    """Return the task of a named architecture.

    Raises:
        UsageError: If the name is unknown.
    """
    if name in DETECTOR_CONFIGS:
        return "detect"
    if name in CLASSIFIER_CONFIGS:
        return "classify"
    raise UsageError(
        f"unknown model architecture {name!r}",
        hint=f"choose one of: {', '.join(available_models())}",
    )


def build_model(name: str, *, num_classes: int) -> nn.Module:
    """Build a freshly initialised zoo architecture.

    Args:
        name: ``detector-n``, ``detector-s`` or ``classifier-n``.
        num_classes: Number of classes.

    Returns:
        The model, in training mode.

    Raises:
        UsageError: If the name is unknown or ``num_classes`` is not positive.
    """
    if model_task(name) == "detect":
        return Detector(DETECTOR_CONFIGS[name], num_classes=num_classes)
    return Classifier(CLASSIFIER_CONFIGS[name], num_classes=num_classes)
