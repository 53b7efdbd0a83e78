"""Torch sources built from real ONNX models (``module:factory`` for the compression commands).

``yolox_nano``: the real YOLOX-Nano of ``../shared/realworld`` (FP32 ONNX, no training code)
run as torch by :func:`cvdeploy.compress.onnx_source`, the conversion ``cvdeploy qat`` applies
to an imported model (``cvdeploy import yolox_nano.onnx --preset yolox``, then ``cvdeploy qat
BUNDLE``): its input convention (BGR, 0..255) is folded into the convolution reading the
input, and its raw head (grid offsets, ``exp`` sizes, times the stride; score = objectness x
class) is decoded in torch by :class:`cvdeploy.compress.YoloxAsYolov8`, so that the module
takes the zoo's input (RGB, /255) and returns the YOLOv8 layout ``[B, 4 + 80, N]`` (centre
boxes in input pixels and class probabilities) that :func:`yolox_spec` describes. The
decoding is after the last convolutions: quantization keeps it in float.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _common import realworld_root
from torch import nn

from cvdeploy.compress import onnx_source
from cvdeploy.spec import PRESETS, ModelSpec

YOLOX_IMGSZ = 416
YOLOX_STRIDES = (8, 16, 32)


def yolox_nano() -> nn.Module:
    """The factory: ``_onnx_sources:yolox_nano`` (needs ``../shared/realworld``).

    The model expects BGR pixels 0..255; the 255 and the channel order are folded into its
    first convolution (the only one reading the input, after the space-to-depth slices) so
    that it takes RGB 0..1. On the raw scale that convolution's gradients are ~255x the
    others' and a fine-tuning step of any usual size wrecks the model.
    """
    path = realworld_root() / "models" / "yolox_nano.onnx"
    preset = PRESETS["yolox"]
    spec = ModelSpec(
        task="detect", names=tuple(coco_names()), imgsz=(YOLOX_IMGSZ, YOLOX_IMGSZ),
        preprocess=preset.preprocess, decoder=preset.decoder,
    )  # fmt: skip
    return onnx_source(path.read_bytes(), spec).module


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
