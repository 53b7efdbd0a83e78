"""Head descriptions: what a model's output layout means, one registered class per layout.

A head description knows one output layout of a decoder kind (``spec.decoder.kind``):
whether anchors come before channels, how many classes an output shape holds, the best
class score of every anchor (the integrity gate's *scoring anchors*), the anchors-first
rows of an output, and how to decode it (delegating to the numpy decoders of
:mod:`cvdeploy.pipeline.decode`) with the extra arguments it needs from the spec.

Adding a layout is one class::

    @register_head("mine")
    class MyHead(Head):
        ...

Import-light: numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import numpy as np

from cvdeploy.errors import ShapeError, SpecError
from cvdeploy.pipeline.decode import (
    as_output,
    decode_logits,
    decode_yolov5,
    decode_yolov8,
    decode_yolox,
)

if TYPE_CHECKING:
    from cvdeploy.spec import Decoder

__all__ = [
    "DECODERS",
    "HEADS",
    "Head",
    "LogitsHead",
    "YOLOXHead",
    "YOLOv5Head",
    "YOLOv8Head",
    "anchor_scores",
    "class_scores_shape",
    "get_decoder",
    "get_head",
    "layouts_hint",
    "register_head",
]

DecodeFn = Callable[..., list[Any]]

_HEADS: dict[str, Head] = {}
HEADS: Mapping[str, Head] = MappingProxyType(_HEADS)
"""Registered head descriptions by decoder kind (read-only; add with :func:`register_head`)."""

_H = TypeVar("_H", bound="type[Head]")


def register_head(kind: str, *aliases: str) -> Callable[[_H], _H]:
    """Class decorator: register a head description under ``kind`` (and ``aliases``).

    Args:
        kind: The decoder kind (``spec.decoder.kind``) the head describes.
        aliases: Other decoder names with the same layout (e.g. ``yolo11``).
    """

    def deco(cls: _H) -> _H:
        cls.kinds = (kind, *aliases)
        for name in cls.kinds:
            _HEADS[name] = cls(name)
        return cls

    return deco


def get_head(kind: str) -> Head:
    """Return the head description registered under ``kind``.

    Raises:
        SpecError: If no head has that name (the message lists the known ones).
    """
    try:
        return _HEADS[kind]
    except KeyError:
        raise SpecError(
            f"unknown decoder {kind!r}; known decoders: {', '.join(sorted(_HEADS))}"
        ) from None


def layouts_hint() -> str:
    """The output layout of every registered head, for error hints.

    Kinds sharing a layout are named together, aliases left out, e.g.
    ``yolov8 expects [B, 4+nc, N]; yolov5/yolox [B, N, 5+nc]; logits [B, nc]``.
    """
    by_layout: dict[str, list[str]] = {}
    for cls in dict.fromkeys(type(h) for h in _HEADS.values()):
        by_layout.setdefault(cls.layout, []).append(cls.kinds[0])
    parts = [f"{'/'.join(kinds)} {layout}" for layout, kinds in by_layout.items()]
    if parts:
        first, _, rest = parts[0].partition(" ")
        parts[0] = f"{first} expects {rest}"
    return "; ".join(parts)


def class_scores_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """A classifier output's shape without trailing 1s (``[B, nc, 1, 1]`` -> ``[B, nc]``)."""
    out = tuple(shape)
    while len(out) > 2 and out[-1] == 1:
        out = out[:-1]
    return out


class Head:
    """The description of one output layout (subclass and :func:`register_head` it).

    Attributes:
        kind: The decoder name this instance is registered under.
    """

    kinds: ClassVar[tuple[str, ...]] = ()
    """The names the class is registered under, its own kind first (set by the decorator)."""
    task: ClassVar[Literal["detect", "classify"]] = "detect"
    anchors_first: ClassVar[bool | None] = None
    """``True``: ``(B, N, C)``; ``False``: ``(B, C, N)``; ``None``: no anchors."""
    layout: ClassVar[str] = ""
    """The layout in words (error hints), e.g. ``[B, 4+nc, N]``."""
    decode_fn: ClassVar[DecodeFn]
    """The numpy decoder of :mod:`cvdeploy.pipeline.decode` this layout uses."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind!r})"

    # shapes ---------------------------------------------------------------------------------
    def count_classes(self, shape: tuple[int, ...]) -> int | None:
        """The class count when ``shape`` fits this layout, else ``None`` (no error)."""
        raise NotImplementedError

    def num_classes(self, shape: Sequence[int]) -> int | None:
        """How many classes an output of ``shape`` holds.

        Returns:
            The count, or ``None`` when a dynamic (``-1``) dimension hides it.

        Raises:
            SpecError: If ``shape`` is static and does not fit the layout.
        """
        dims = tuple(int(d) for d in shape)
        n = self.count_classes(dims)
        if n is not None:
            return n
        if dims and -1 not in dims:
            raise SpecError(
                f"output shape {list(dims)} does not fit decoder {self.kind!r}",
                hint=f"{layouts_hint()}. Pass the right --preset or --decoder",
            )
        return None

    # anchors --------------------------------------------------------------------------------
    def anchor_scores(self, output: np.ndarray, *, nc: int | None = None) -> np.ndarray:
        """Best class score of every anchor, ``(B, N)``: the score the decoder thresholds.

        Args:
            output: The raw output, in this layout.
            nc: Number of classes (default: every channel after the box / objectness).

        Raises:
            SpecError: If the layout has no anchors.
            ShapeError: If ``output`` does not have this layout.
        """
        raise SpecError(f"decoder {self.kind!r} has no anchors to score")

    def rows(self, output: np.ndarray) -> np.ndarray:
        """The output anchors first, ``(B, N, C)`` (a view where possible).

        Raises:
            SpecError: If the layout has no anchors.
            ShapeError: If ``output`` is not three-dimensional.
        """
        raise SpecError(f"decoder {self.kind!r} has no anchors")

    # decoding -------------------------------------------------------------------------------
    def decode_args(self, decoder: Decoder, *, input_hw: tuple[int, int]) -> dict[str, Any]:
        """Keyword arguments the decoder needs beyond the thresholds, from the spec.

        Args:
            decoder: The spec's decoder section.
            input_hw: The model input ``(height, width)`` the output was computed at.
        """
        return {}

    def decode(self, output: np.ndarray, **kwargs: Any) -> list[Any]:
        """Decode a raw output: one result per image (see :attr:`decode_fn`)."""
        return list(self.decode_fn(output, **kwargs))


def _three_dims(output: np.ndarray) -> np.ndarray:
    out = np.asarray(output)
    if out.ndim != 3:
        raise ShapeError(f"expected a three-dimensional head output, got {out.shape}")
    return out


@register_head("yolov8", "yolo11")
class YOLOv8Head(Head):
    """YOLOv8 / YOLO11: ``(B, 4 + nc, N)``, anchor-free, no objectness (channels first)."""

    anchors_first = False
    layout = "[B, 4+nc, N]"
    decode_fn = staticmethod(decode_yolov8)

    def count_classes(self, shape: tuple[int, ...]) -> int | None:
        """``shape[1] - 4`` for a ``[B, 4+nc, N]`` shape."""
        if len(shape) == 3 and shape[1] > 4:
            return shape[1] - 4
        return None

    def anchor_scores(self, output: np.ndarray, *, nc: int | None = None) -> np.ndarray:
        """The best class score of each anchor column."""
        out = as_output(output, 3, "(B, 4 + nc, N)")
        n_cls = out.shape[1] - 4 if nc is None else nc
        if n_cls < 1:
            raise ShapeError(f"a YOLOv8 output needs 4 + nc rows, got shape {out.shape}")
        return np.asarray(out[:, 4 : 4 + n_cls, :].max(axis=1))

    def rows(self, output: np.ndarray) -> np.ndarray:
        """The output transposed to ``(B, N, 4 + nc)``."""
        return _three_dims(output).transpose(0, 2, 1)


class _ObjectnessHead(Head):
    """Heads with objectness, ``(B, N, 5 + nc)`` (anchors first); the score is ``obj * cls``."""

    anchors_first = True
    layout = "[B, N, 5+nc]"

    def count_classes(self, shape: tuple[int, ...]) -> int | None:
        """``shape[2] - 5`` for a ``[B, N, 5+nc]`` shape."""
        if len(shape) == 3 and shape[2] > 5:
            return shape[2] - 5
        return None

    def anchor_scores(self, output: np.ndarray, *, nc: int | None = None) -> np.ndarray:
        """Objectness times the best class probability of each anchor row."""
        out = as_output(output, 3, "(B, N, 5 + nc)")
        n_cls = out.shape[2] - 5 if nc is None else nc
        if n_cls < 1:
            raise ShapeError(f"an objectness output needs 5 + nc columns, got {out.shape}")
        return np.asarray(out[:, :, 4] * out[:, :, 5 : 5 + n_cls].max(axis=2))

    def rows(self, output: np.ndarray) -> np.ndarray:
        """The output itself (already anchors first)."""
        return _three_dims(output)


@register_head("yolov5")
class YOLOv5Head(_ObjectnessHead):
    """YOLOv5-style exports (also YOLOv7): boxes in input pixels, objectness, classes."""

    decode_fn = staticmethod(decode_yolov5)


@register_head("yolox")
class YOLOXHead(_ObjectnessHead):
    """Raw YOLOX heads: grid offsets and log sizes per stride, objectness, classes."""

    decode_fn = staticmethod(decode_yolox)

    def decode_args(self, decoder: Decoder, *, input_hw: tuple[int, int]) -> dict[str, Any]:
        """The input size and strides the anchor grid is built from."""
        return {"input_hw": tuple(input_hw), "strides": decoder.strides}


@register_head("logits")
class LogitsHead(Head):
    """Classifiers: ``(B, nc)`` logits or probabilities (``(B, nc, 1, 1)`` too)."""

    task = "classify"
    layout = "[B, nc]"
    decode_fn = staticmethod(decode_logits)

    def count_classes(self, shape: tuple[int, ...]) -> int | None:
        """``nc`` of a ``[B, nc]`` shape, trailing 1s dropped."""
        scores = class_scores_shape(shape)
        if len(scores) == 2 and scores[1] > 0:
            return scores[1]
        return None

    def decode_args(self, decoder: Decoder, *, input_hw: tuple[int, int]) -> dict[str, Any]:
        """Whether to apply a softmax (``False`` when the model emits probabilities)."""
        return {"softmax": decoder.softmax}


class _DecoderView(Mapping[str, DecodeFn]):
    """Read-only view of the registered heads' decode functions, by decoder name."""

    def __getitem__(self, name: str) -> DecodeFn:
        return _HEADS[name].decode_fn

    def __iter__(self) -> Iterator[str]:
        return iter(_HEADS)

    def __len__(self) -> int:
        return len(_HEADS)

    def __repr__(self) -> str:
        return f"DECODERS({', '.join(_HEADS)})"


DECODERS: Mapping[str, DecodeFn] = _DecoderView()
"""Decode function by decoder name (read-only, follows :data:`HEADS`)."""


def get_decoder(name: str) -> DecodeFn:
    """Return the decode function registered under ``name``.

    Raises:
        SpecError: If no decoder has that name (the message lists the known ones).
    """
    return get_head(name).decode_fn


def anchor_scores(kind: str, output: np.ndarray, *, nc: int | None = None) -> np.ndarray:
    """Best class score of every anchor of a raw detection output, as ``(B, N)``.

    The same score the decoder thresholds (``obj * cls`` for the objectness heads), so
    "anchors that can become detections" means the same thing everywhere (the integrity
    gate compares outputs on those anchors). See :meth:`Head.anchor_scores`.

    Raises:
        SpecError: For a decoder without anchors (``logits``) or an unknown one.
        ShapeError: If ``output`` does not have the decoder's layout.
    """
    head = _HEADS.get(kind)
    if head is None:
        raise SpecError(f"decoder {kind!r} has no anchors to score")
    return head.anchor_scores(output, nc=nc)
