"""An imported ONNX model as a compression source: no training code, no factory to write.

:func:`onnx_source` turns an FP32 ONNX graph and its spec (as ``cvdeploy import`` wrote it)
into a torch module (:class:`~cvdeploy.compress.onnx_module.OnnxModule`) that takes what the
compression code feeds every model (RGB, 0..1, the spec's geometry) and returns what it
learns from (the YOLOv8 layout ``[B, 4 + nc, N]`` of centre boxes in input pixels and class
probabilities for a detector, logits for a classifier), with the spec that describes it:

- **input**: the spec's pixel scale (``1``: a 0..255 model), per-channel std and colour
  order (a BGR model) are folded into the weights of the convolutions that read the input,
  through the Slices and Concats of a space-to-depth stem (YOLOX's Focus); a mean too when
  those convolutions have no padding (with padding the fold would be wrong at the image
  border: refused). The input must reach nothing else (refused by name).
- **output**: ``yolov8`` passes through; ``yolox`` (raw head ``[B, N, 5 + nc]``: grid
  offsets, log sizes) is decoded in torch (``(xy + grid) * stride``, ``exp(wh) * stride``,
  score = objectness x class); ``yolov5`` (``[B, N, 5 + nc]``, boxes already in pixels)
  becomes boxes and objectness x class; ``logits`` pass through. The decoding runs after the
  last convolutions, so quantization leaves it in float.

The produced spec has RGB 0..1 input and, for a detector, the ``yolov8`` decoder (its
thresholds kept). The module's builder is ``onnx:<sha256 prefix of the graph>``; the graph
and the imported spec are its builder data (stored in the torch checkpoint), from which
:func:`build_onnx_source` rebuilds it, so the checkpoints the compression commands write
load without the original file.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cvdeploy.compress.onnx_module import OnnxModule
from cvdeploy.errors import ModelLoadError, UsageError
from cvdeploy.pipeline.decode import yolox_grid
from cvdeploy.spec import ModelSpec, Preprocess

__all__ = [
    "BUILDER_PREFIX",
    "DECODERS",
    "OnnxSource",
    "YoloxAsYolov8",
    "build_onnx_source",
    "fold_input",
    "onnx_graph_bytes",
    "onnx_source",
]

BUILDER_PREFIX = "onnx:"
"""The torch builder of a converted graph: ``onnx:<sha256 prefix>``."""
DECODERS = ("yolov8", "yolox", "yolov5", "logits")
"""The decoders whose output can be given the layout the compression code learns from."""
PREFIX = 16
"""Hex digits of the graph's sha256 in the builder name."""


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, list | tuple) else out


class YoloxAsYolov8(nn.Module):
    """A raw YOLOX head ``[B, N, 5 + nc]`` decoded to the YOLOv8 layout ``[B, 4 + nc, N]``.

    Args:
        raw: The model emitting the raw head (its first output).
        imgsz: The input ``(height, width)`` (or side) the anchor grid is built for.
        strides: The head's strides, in output order.
    """

    grid: torch.Tensor
    stride: torch.Tensor

    def __init__(
        self,
        raw: nn.Module,
        *,
        imgsz: int | tuple[int, int],
        strides: Sequence[int] = (8, 16, 32),
    ) -> None:
        super().__init__()
        self.raw = raw
        hw = (imgsz, imgsz) if isinstance(imgsz, int) else (int(imgsz[0]), int(imgsz[1]))
        grid, stride = yolox_grid(hw, tuple(strides))  # the pipeline's own anchors
        self.register_buffer("grid", torch.from_numpy(grid), persistent=False)
        self.register_buffer("stride", torch.from_numpy(stride)[:, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _first(self.raw(x))
        xy = (y[..., :2] + self.grid) * self.stride
        wh = torch.exp(y[..., 2:4]) * self.stride
        scores = y[..., 4:5] * y[..., 5:]
        return torch.cat([xy, wh, scores], -1).transpose(1, 2)


class ObjectnessAsYolov8(nn.Module):
    """A YOLOv5-style output ``[B, N, 5 + nc]`` (boxes in pixels, objectness, class
    probabilities) as the YOLOv8 layout: boxes and objectness x class, channels first."""

    def __init__(self, raw: nn.Module) -> None:
        super().__init__()
        self.raw = raw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _first(self.raw(x))
        return torch.cat([y[..., :4], y[..., 4:5] * y[..., 5:]], -1).transpose(1, 2)


class FirstOutput(nn.Module):
    """The model's first output as it is (``flatten``: ``[B, nc, 1, 1]`` as ``[B, nc]``)."""

    def __init__(self, raw: nn.Module, *, flatten: bool = False) -> None:
        super().__init__()
        self.raw = raw
        self.flatten = flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _first(self.raw(x))
        return y.flatten(1) if self.flatten else y


@dataclass
class OnnxSource:
    """An ONNX graph converted for compression.

    Attributes:
        module: The torch module (eval mode), RGB 0..1 in, the compression layout out.
        spec: Its spec.
        builder: ``onnx:<sha256 prefix>``.
        builder_data: What :func:`build_onnx_source` rebuilds it from (the graph as a
            uint8 tensor, the imported spec as JSON).
        notes: What was converted, in words.
    """

    module: nn.Module
    spec: ModelSpec
    builder: str
    builder_data: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def onnx_graph_bytes(path: Path) -> bytes:
    """The serialized model of an ``.onnx`` file (external weights read in)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises several types
        raise UsageError(f"{path} is not a readable ONNX model: {exc}") from exc
    if any(i.external_data for i in model.graph.initializer):
        return bytes(onnx.load(str(path)).SerializeToString())
    return Path(path).read_bytes()


def _is_one(v: float) -> bool:
    return math.isclose(v, 1.0, rel_tol=1e-6)


def fold_input(raw: OnnxModule, pp: Preprocess) -> list[str]:
    """Fold the spec's input convention into the convolutions that read the input, so that
    ``raw`` takes RGB in 0..1 (in place). Returns what was folded, in words (empty: nothing
    to fold).

    The model computes on ``u[c] = (x[rgb(c)] * k - mean[c]) / std[c]`` with ``k = 255 *
    scale``: each reading convolution's weight for channel ``c`` is multiplied by ``k /
    std[c]`` and moved to the input channel holding ``rgb(c)`` (same Slice path); the mean
    becomes a bias shift, exact only without padding.

    Raises:
        UsageError: A grayscale model, the input reaching something other than convolutions
            (see :meth:`OnnxModule.input_convolutions`), a grouped reading convolution, or a
            mean with a padded one.
    """
    if pp.color == "gray":
        raise UsageError(
            "a grayscale model cannot be compressed: the compression commands train on "
            "colour images"
        )
    k = 255.0 * pp.scale
    gain = [k / s for s in pp.std]
    shift = [m / s for m, s in zip(pp.mean, pp.std, strict=True)]
    rgb_of = [2, 1, 0] if pp.color == "bgr" else [0, 1, 2]
    if pp.color == "rgb" and all(_is_one(g) for g in gain) and not any(shift):
        return []
    where = (
        f"input convention (colour {pp.color}, scale {pp.scale:.6g}, mean {list(pp.mean)}, "
        f"std {list(pp.std)})"
    )
    try:
        convs = raw.input_convolutions()
    except UsageError as exc:
        raise UsageError(
            f"the model's {where} cannot be folded into its weights: {exc.message}",
            hint="export the model to take RGB in 0..1 (scale 1/255, mean 0, std 1), or "
            "compress it from its training code (module:factory)",
        ) from exc
    for layer, labels in convs:
        padded = isinstance(layer, nn.Sequential)
        conv = layer[-1] if isinstance(layer, nn.Sequential) else layer
        assert isinstance(conv, nn.Conv2d)
        padded = padded or any(int(p) for p in conv.padding)  # type: ignore[union-attr]
        if any(c > 2 for c, _ in labels):
            raise UsageError(f"the model takes {max(c for c, _ in labels) + 1} input channels")
        if conv.groups != 1:
            raise UsageError(
                f"the model's {where} cannot be folded into a grouped convolution",
                hint="export the model to take RGB in 0..1 (scale 1/255, mean 0, std 1)",
            )
        if any(shift) and padded:
            raise UsageError(
                f"the model's mean {list(pp.mean)} cannot be folded into its first "
                "convolution: it pads its input with zeros, which the mean shifts (the "
                "border would change)",
                hint="export the model with its normalisation inside the graph (scale "
                "1/255, mean 0, std 1 in the spec), or compress it from its training code",
            )
        with torch.no_grad():
            w = conv.weight.detach().clone()
            new = torch.zeros_like(w)
            bias_shift = torch.zeros(w.shape[0], dtype=w.dtype)
            index: dict[tuple[int, tuple[str, ...]], int] = {}
            for i, lab in enumerate(labels):
                index.setdefault(lab, i)
            for j, (c, path) in enumerate(labels):
                dst = index.get((rgb_of[c], path))
                if dst is None:
                    raise UsageError(
                        f"the model's {where} cannot be folded: a convolution reads "
                        "colour channels without their counterparts"
                    )
                new[:, dst] += w[:, j] * gain[c]
                bias_shift += w[:, j].sum(dim=(1, 2)) * shift[c]
            conv.weight.copy_(new)
            if any(shift):
                if conv.bias is None:
                    conv.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype))
                conv.bias.sub_(bias_shift)
    done = []
    if not _is_one(k):
        done.append(f"the input scale {pp.scale:.6g} (the model took 0..{k:.4g})")
    if any(not _is_one(g / k) for g in gain):
        done.append(f"the std {list(pp.std)}")
    if any(shift):
        done.append(f"the mean {list(pp.mean)}")
    if pp.color == "bgr":
        done.append("the BGR channel order")
    n = len(convs)
    return [
        f"{', '.join(done)} folded into the {'convolution' if n == 1 else f'{n} convolutions'}"
        " reading the input: the model takes RGB in 0..1"
    ]


def _check_output(raw: OnnxModule, spec: ModelSpec) -> None:
    h, w = spec.imgsz
    with torch.no_grad():
        shape = tuple(_first(raw(torch.zeros(1, 3, h, w))).shape)
    kind, nc = spec.decoder.kind, spec.num_classes
    if kind == "logits":
        squeezed = shape
        while len(squeezed) > 2 and squeezed[-1] == 1:
            squeezed = squeezed[:-1]
        ok, want = squeezed == (1, nc), f"[B, {nc}]"
    elif kind == "yolov8":
        ok, want = len(shape) == 3 and shape[1] == 4 + nc, f"[B, {4 + nc}, N]"
    else:
        ok, want = len(shape) == 3 and shape[2] == 5 + nc, f"[B, N, {5 + nc}]"
        if ok and kind == "yolox":
            n = len(yolox_grid((h, w), spec.decoder.strides)[0])
            ok, want = shape[1] == n, f"[B, {n}, {5 + nc}] (strides {list(spec.decoder.strides)})"
    if not ok:
        raise UsageError(
            f"the model's output {list(shape)} at {h}x{w} is not the {kind} layout {want} "
            f"of its spec ({nc} classes)",
            hint="check the spec's decoder, strides, imgsz and names",
        )


def _convert(
    graph: bytes, spec: ModelSpec, *, check: bool
) -> tuple[nn.Module, ModelSpec, list[str]]:
    kind = spec.decoder.kind
    if kind not in DECODERS:
        raise UsageError(
            f"decoder {kind!r} cannot be converted for compression",
            hint=f"supported: {', '.join(DECODERS)}",
        )
    if spec.task == "classify" and not spec.decoder.softmax:
        raise UsageError(
            "the classifier emits probabilities (its graph ends in a Softmax): compression "
            "learns from logits",
            hint="export the classifier without its final Softmax",
        )
    raw = OnnxModule(graph).eval()
    if check:
        _check_output(raw, spec)
    notes = fold_input(raw, spec.preprocess)
    module: nn.Module
    decoder = spec.decoder
    if kind == "yolox":
        module = YoloxAsYolov8(raw, imgsz=spec.imgsz, strides=spec.decoder.strides)
        notes.append("the raw YOLOX head is decoded in torch to the yolov8 layout")
    elif kind == "yolov5":
        module = ObjectnessAsYolov8(raw)
        notes.append("the YOLOv5 output (objectness x class) is given the yolov8 layout")
    else:
        module = FirstOutput(raw, flatten=kind == "logits")
    if kind in ("yolox", "yolov5"):
        decoder = decoder.model_copy(update={"kind": "yolov8"})
    pp = spec.preprocess
    new_pp = Preprocess(
        resize=pp.resize, align=pp.align, pad_value=pp.pad_value, color="rgb", scale=1 / 255
    )
    new_spec = spec.model_copy(update={"preprocess": new_pp, "decoder": decoder})
    return module.eval(), new_spec, notes


def onnx_source(graph: bytes, spec: ModelSpec) -> OnnxSource:
    """Convert an FP32 ONNX graph with its spec for compression (see the module docstring).

    Args:
        graph: The serialized model (:func:`onnx_graph_bytes`).
        spec: Its spec (as ``cvdeploy import`` wrote it).

    Raises:
        UsageError: An operator, decoder, output or input convention that cannot be
            converted (named in the message).
    """
    module, new_spec, notes = _convert(graph, spec, check=True)
    sha = hashlib.sha256(graph).hexdigest()
    data = {
        "graph": torch.from_numpy(np.frombuffer(graph, dtype=np.uint8).copy()),
        "spec": spec.model_dump_json(),
    }
    return OnnxSource(module, new_spec, f"{BUILDER_PREFIX}{sha[:PREFIX]}", data, notes)


def build_onnx_source(
    rest: str, *, num_classes: int, data: dict[str, Any] | None = None
) -> nn.Module:
    """The ``onnx:`` torch builder: the converted module from a checkpoint's builder data
    (weights not loaded; those of the checkpoint replace the graph's).

    Raises:
        ModelLoadError: No builder data, or a graph whose sha256 is not the builder's.
    """
    if data is None or "graph" not in data or "spec" not in data:
        raise ModelLoadError(
            f"torch builder onnx:{rest} needs the ONNX graph and spec stored with the weights",
            hint="the checkpoint was not written by cvdeploy's compression commands",
        )
    graph = np.asarray(data["graph"].numpy(), dtype=np.uint8).tobytes()
    if not hashlib.sha256(graph).hexdigest().startswith(rest):
        raise ModelLoadError(f"the ONNX graph stored with the weights is not onnx:{rest}")
    spec = ModelSpec.model_validate_json(str(data["spec"]))
    if spec.num_classes != num_classes:
        raise ModelLoadError(
            f"the stored spec has {spec.num_classes} classes, the checkpoint {num_classes}"
        )
    module, _, _ = _convert(graph, spec, check=False)
    return module
