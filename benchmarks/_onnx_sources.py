"""Torch sources built from real ONNX models (``module:factory`` for the compression commands).

``yolox_nano``: the real YOLOX-Nano of ``../shared/realworld`` (FP32 ONNX, no training code)
run as torch by :class:`cvdeploy.compress.onnx_module.OnnxModule`, with its input
convention (BGR, 0..255) and its raw head's decoding (grid offsets, ``exp`` sizes, times
the stride; score = objectness x class) wrapped around it, so that the module takes the
zoo's input (RGB, /255) and returns the YOLOv8 layout ``[B, 4 + 80, N]`` (centre boxes in
input pixels and class probabilities) that :func:`yolox_spec` describes. The decoding is
after the last convolutions: quantization keeps it in float.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from _common import realworld_root
from torch import nn

from cvdeploy.compress import OnnxModule

YOLOX_IMGSZ = 416
YOLOX_STRIDES = (8, 16, 32)


class YoloxAsYolov8(nn.Module):
    """A raw YOLOX head ``[B, N, 5 + nc]`` decoded to the YOLOv8 layout."""

    def __init__(self, raw: nn.Module, *, imgsz: int = YOLOX_IMGSZ) -> None:
        super().__init__()
        self.raw = raw
        grids, strides = [], []
        for s in YOLOX_STRIDES:
            n = imgsz // s
            yv, xv = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
            grids.append(torch.stack((xv, yv), 2).reshape(-1, 2))
            strides.append(torch.full((n * n, 1), float(s)))
        self.register_buffer("grid", torch.cat(grids).float(), persistent=False)
        self.register_buffer("stride", torch.cat(strides), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.raw(torch.flip(x, [1]))  # RGB -> the model's BGR (x255: in its first conv)
        xy = (y[..., :2] + self.grid) * self.stride
        wh = torch.exp(y[..., 2:4]) * self.stride
        scores = y[..., 4:5] * y[..., 5:]
        return torch.cat([xy, wh, scores], -1).transpose(1, 2)


def yolox_nano() -> nn.Module:
    """The factory: ``_onnx_sources:yolox_nano`` (needs ``../shared/realworld``).

    The model expects pixels 0..255; the 255 is folded into its first convolution (the only
    one reading the input, after the space-to-depth slices) so that it takes 0..1. On the
    raw scale that convolution's gradients are ~255x the others' and a fine-tuning step
    of any usual size wrecks the model.
    """
    raw = OnnxModule(realworld_root() / "models" / "yolox_nano.onnx")
    first = raw.first_conv_weight()
    with torch.no_grad():
        first.mul_(255.0)
    return YoloxAsYolov8(raw).eval()


def yolox_spec(names: list[str]) -> dict[str, Any]:
    """The spec of :func:`yolox_nano`'s output (write it as the factory's ``--spec``)."""
    return {
        "task": "detect",
        "names": names,
        "imgsz": [YOLOX_IMGSZ, YOLOX_IMGSZ],
        "preprocess": {"resize": "letterbox", "align": "center", "pad_value": 114,
                       "color": "rgb", "scale": 1 / 255},
        "decoder": {"kind": "yolov8", "strides": list(YOLOX_STRIDES)},
    }  # fmt: skip


def coco_names(root: Path | None = None) -> list[str]:
    """The 80 COCO names of coco128."""
    import yaml

    d = yaml.safe_load(((root or realworld_root()) / "datasets/coco128/coco128.yaml").read_text())
    names = d["names"]
    return [names[i] for i in sorted(names)] if isinstance(names, dict) else list(names)
