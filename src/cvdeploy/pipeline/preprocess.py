"""Image pre-processing: geometric resize (with its inverse) and tensor conversion.

The geometry reproduces the reference implementations pixel for pixel, because a model
evaluated with one letterbox and served with another loses accuracy silently:

* ``letterbox`` + ``center``: Ultralytics ``LetterBox(auto=False, scaleup=True)``.
* ``letterbox`` + ``top-left``: YOLOX ``preproc`` (image at the top-left corner).
* ``stretch``: a plain ``cv2.resize`` with independent x/y scales.
* ``crop``: torchvision-style ``Resize(shorter side)`` + ``CenterCrop`` (classification).

Every resize returns a :class:`ResizeMeta` so that :func:`scale_boxes` maps boxes
predicted on the model input back onto the original image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from numpy.typing import DTypeLike

from cvdeploy.errors import ShapeError, UsageError

__all__ = ["ResizeMeta", "resize_image", "scale_boxes", "to_tensor"]

ResizeMode = Literal["letterbox", "stretch", "crop"]
Align = Literal["center", "top-left"]


@dataclass(frozen=True, slots=True)
class ResizeMeta:
    """How an original image was mapped onto the model input.

    The mapping is ``input = orig * scale + pad``, per axis.

    Attributes:
        orig_hw: Original image ``(height, width)``.
        input_hw: Model input ``(height, width)``.
        scale: ``(rx, ry)``. For a letterbox both are the ratio ``r`` the reference
            implementations use (Ultralytics and YOLOX both divide boxes by ``r``), not
            the rounded ``new_w / w``.
        pad: ``(left, top)`` offset in input pixels. Negative for ``crop`` (the part of
            the resized image that was cut off).
        mode: The resize mode that produced this mapping.
    """

    orig_hw: tuple[int, int]
    input_hw: tuple[int, int]
    scale: tuple[float, float]
    pad: tuple[float, float]
    mode: ResizeMode


def _check_hw(size_hw: tuple[int, int], what: str) -> tuple[int, int]:
    """Validate a positive ``(height, width)`` pair and return it as Python ints."""
    if len(size_hw) != 2 or any(int(v) != v or v < 1 for v in size_hw):
        raise UsageError(f"{what} must be two positive integers (height, width), got {size_hw}")
    return int(size_hw[0]), int(size_hw[1])


def _check_image(img: np.ndarray) -> None:
    """Raise ShapeError unless ``img`` is a non-empty ``HxW`` or ``HxWxC`` array."""
    if not isinstance(img, np.ndarray):
        raise ShapeError(f"expected an image as a numpy array, got {type(img).__name__}")
    if img.ndim not in (2, 3) or img.shape[0] == 0 or img.shape[1] == 0:
        raise ShapeError(
            f"expected an image of shape (H, W) or (H, W, C), got {img.shape}",
            hint="decode the file with cv2.imread (BGR, uint8) before pre-processing",
        )
    if img.ndim == 3 and img.shape[2] not in (1, 3, 4):
        raise ShapeError(f"expected 1, 3 or 4 channels, got an image of shape {img.shape}")


def _resize(img: np.ndarray, wh: tuple[int, int]) -> np.ndarray:
    """``cv2.resize`` with INTER_LINEAR that keeps a trailing channel axis of size 1."""
    out = cv2.resize(img, wh, interpolation=cv2.INTER_LINEAR)
    if img.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    return out


def _letterbox_center(
    img: np.ndarray, h: int, w: int, pad_value: int
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Ultralytics ``LetterBox(auto=False, scaleup=True, center=True)``."""
    oh, ow = img.shape[:2]
    r = min(h / oh, w / ow)
    new_w, new_h = max(1, round(ow * r)), max(1, round(oh * r))
    dw, dh = (w - new_w) / 2, (h - new_h) / 2
    if (ow, oh) != (new_w, new_h):
        img = _resize(img, (new_w, new_h))
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    out = cv2.copyMakeBorder(
        img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 4
    )
    if img.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    return out, (r, r), (left, top)


def _letterbox_top_left(
    img: np.ndarray, h: int, w: int, pad_value: int
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """YOLOX ``preproc``: resize with ``int()`` truncation, image at the top-left corner."""
    oh, ow = img.shape[:2]
    r = min(h / oh, w / ow)
    new_w, new_h = max(1, int(ow * r)), max(1, int(oh * r))
    resized = _resize(img, (new_w, new_h))
    out = np.full((h, w, *img.shape[2:]), pad_value, dtype=img.dtype)
    out[:new_h, :new_w] = resized
    return out, (r, r), (0, 0)


def _center_crop(
    img: np.ndarray, h: int, w: int, crop_fraction: float
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """torchvision ``Resize(int)`` + ``CenterCrop``, generalised to non-square targets.

    The side that binds (the one whose target ratio is larger, the shorter side for a
    square target) is resized to ``floor(target / crop_fraction)``, the other keeps the
    aspect ratio with truncation (as torchvision does), then the centre is cut out.
    """
    oh, ow = img.shape[:2]
    if w * oh >= h * ow:  # width binds
        new_w = max(w, math.floor(w / crop_fraction + 1e-9))
        new_h = max(h, oh * new_w // ow)
    else:  # height binds
        new_h = max(h, math.floor(h / crop_fraction + 1e-9))
        new_w = max(w, ow * new_h // oh)
    if (ow, oh) != (new_w, new_h):
        img = _resize(img, (new_w, new_h))
    top = round((new_h - h) / 2.0)
    left = round((new_w - w) / 2.0)
    out = np.ascontiguousarray(img[top : top + h, left : left + w])
    return out, (new_w / ow, new_h / oh), (-left, -top)


def resize_image(
    img: np.ndarray,
    size_hw: tuple[int, int],
    *,
    mode: ResizeMode,
    align: Align = "center",
    pad_value: int = 114,
    crop_fraction: float = 1.0,
) -> tuple[np.ndarray, ResizeMeta]:
    """Resize an image to the model input size.

    Args:
        img: Image ``(H, W, 3)`` (BGR as OpenCV reads it), ``(H, W, 1)`` or ``(H, W)``,
            usually ``uint8``.
        size_hw: Model input ``(height, width)``.
        mode: ``"letterbox"`` keeps the aspect ratio and pads; ``"stretch"`` resizes x and
            y independently; ``"crop"`` resizes the binding (shorter) side and cuts out
            the centre.
        align: Where a letterboxed image sits: ``"center"`` (Ultralytics ``LetterBox``)
            or ``"top-left"`` (YOLOX ``preproc``). Only used by ``letterbox``.
        pad_value: Grey level of the padding (``letterbox`` only), 0-255.
        crop_fraction: ``crop`` only: the fraction of the resized image that is kept
            (timm's ``crop_pct``; ``0.875`` gives the ImageNet "resize 256, crop 224").

    Returns:
        The resized image (same dtype and channel layout as ``img``, contiguous) and
        the :class:`ResizeMeta` that :func:`scale_boxes` uses to invert the mapping.

    Raises:
        ShapeError: If ``img`` is not an image array.
        UsageError: If an option is invalid.
    """
    _check_image(img)
    h, w = _check_hw(size_hw, "size_hw")
    if not 0 <= pad_value <= 255:
        raise UsageError(f"pad_value must be in 0..255, got {pad_value}")
    if mode == "letterbox":
        if align == "center":
            out, scale, pad = _letterbox_center(img, h, w, pad_value)
        elif align == "top-left":
            out, scale, pad = _letterbox_top_left(img, h, w, pad_value)
        else:
            raise UsageError(f"unknown align {align!r}; expected 'center' or 'top-left'")
    elif mode == "stretch":
        oh, ow = img.shape[:2]
        out = img if (oh, ow) == (h, w) else _resize(img, (w, h))
        scale, pad = (w / ow, h / oh), (0, 0)
    elif mode == "crop":
        if not 0.0 < crop_fraction <= 1.0:
            raise UsageError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
        out, scale, pad = _center_crop(img, h, w, crop_fraction)
    else:
        raise UsageError(f"unknown resize mode {mode!r}; expected letterbox, stretch or crop")
    meta = ResizeMeta(
        orig_hw=(int(img.shape[0]), int(img.shape[1])),
        input_hw=(h, w),
        scale=scale,
        pad=pad,
        mode=mode,
    )
    return np.ascontiguousarray(out), meta


def scale_boxes(boxes_xyxy: np.ndarray, meta: ResizeMeta) -> np.ndarray:
    """Map boxes from model-input pixels back to original-image pixels.

    Inverts ``input = orig * scale + pad`` and clips to the original image, as
    Ultralytics' ``scale_boxes`` + ``clip_boxes`` do (with the exact pads used).

    Args:
        boxes_xyxy: ``(n, 4)`` boxes ``x1, y1, x2, y2`` in input pixels.
        meta: The mapping returned by :func:`resize_image`.

    Returns:
        A new ``float32`` array ``(n, 4)`` in original-image pixels.

    Raises:
        ShapeError: If ``boxes_xyxy`` is not ``(n, 4)``.
        UsageError: For ``crop``: boxes outside the crop cannot be recovered.
    """
    boxes = np.asarray(boxes_xyxy)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ShapeError(f"boxes must have shape (n, 4), got {boxes.shape}")
    if meta.mode == "crop":
        raise UsageError(
            "boxes cannot be mapped back through a centre crop",
            hint="use resize mode 'letterbox' or 'stretch' for detection models",
        )
    pad = np.array([meta.pad[0], meta.pad[1]] * 2, dtype=np.float32)
    gain = np.array([meta.scale[0], meta.scale[1]] * 2, dtype=np.float32)
    out = (boxes.astype(np.float32) - pad) / gain
    oh, ow = meta.orig_hw
    np.clip(out[:, 0::2], 0, ow, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0, oh, out=out[:, 1::2])
    return out


def _per_channel(values: Sequence[float], channels: int, what: str) -> list[float]:
    """Broadcast ``mean``/``std`` to ``channels`` values (length 1, C, or all equal)."""
    vals = [float(v) for v in values]
    if len(vals) == channels:
        return vals
    if len(vals) == 1 or (vals and all(v == vals[0] for v in vals)):
        return [vals[0]] * channels
    raise UsageError(f"{what} has {len(vals)} values but the tensor has {channels} channel(s)")


_CV_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


def _split(im: np.ndarray) -> list[np.ndarray]:
    """Split ``(H, W, C)`` into contiguous planes (OpenCV when it supports the dtype)."""
    if im.dtype in _CV_DTYPES:
        return list(cv2.split(im))
    return [np.ascontiguousarray(im[:, :, c]) for c in range(im.shape[2])]


def _bgr_to_rgb(im: np.ndarray) -> np.ndarray:
    """Swap the first and third channels of ``(H, W, 3)`` into a new contiguous array."""
    if im.dtype in _CV_DTYPES:
        return cv2.cvtColor(im, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(im[:, :, ::-1])


def _gray(im: np.ndarray, in_ch: int) -> np.ndarray:
    """Return a ``(H, W)`` grey plane: BGR converted with ``COLOR_BGR2GRAY``."""
    if in_ch == 1:
        return im.reshape(im.shape[0], im.shape[1])
    if im.dtype not in _CV_DTYPES:
        im = im.astype(np.float32)
    return cv2.cvtColor(im, cv2.COLOR_BGR2GRAY)


def _reciprocal_int(scale: float) -> int | None:
    """Return ``k`` when ``scale == 1/k`` for an integer ``k > 1`` (e.g. 1/255), else None."""
    if scale <= 0:
        return None
    k = round(1.0 / scale)
    if k > 1 and abs(1.0 / k - scale) <= 1e-12 * scale:
        return int(k)
    return None


def to_tensor(
    images: Sequence[np.ndarray] | np.ndarray,
    *,
    color: Literal["rgb", "bgr"] = "rgb",
    scale: float = 1 / 255,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    layout: Literal["NCHW", "NHWC"] = "NCHW",
    dtype: DTypeLike = np.float32,
    grayscale: bool = False,
) -> np.ndarray:
    """Stack resized images into a normalised, contiguous batch tensor.

    Computes ``((x * scale) - mean) / std`` per channel in the output dtype. A
    ``scale`` of ``1/k`` for an integer ``k`` (``1/255``) is applied as a division by
    ``k``, so the result equals PyTorch-style ``x / 255`` bit for bit. Each image costs
    one pass per channel (two or three more with a non-trivial mean/std).

    Args:
        images: Images of identical shape: ``(H, W, 3)`` BGR (as OpenCV reads them), or
            with ``grayscale=True`` also ``(H, W)`` / ``(H, W, 1)``. A 4-D array
            ``(N, H, W, C)`` works too.
        color: Channel order of the OUTPUT (``"rgb"`` swaps the BGR input). Ignored for
            grayscale.
        scale: Multiplier applied first (``1/255`` maps 0-255 to 0-1).
        mean: Per-channel mean in scaled units and OUTPUT channel order (one value, or
            one per channel).
        std: Per-channel standard deviation, like ``mean``.
        layout: ``"NCHW"`` or ``"NHWC"``.
        dtype: Output dtype: a float type, or an integer type (e.g. ``uint8`` for
            quantised inputs) when scale is 1, mean 0 and std 1.
        grayscale: Produce one channel: BGR images are converted with
            ``cv2.COLOR_BGR2GRAY``; single-channel images are used as they are.

    Returns:
        A C-contiguous array ``(N, C, H, W)`` or ``(N, H, W, C)`` of ``dtype``.

    Raises:
        ShapeError: If the images are missing, of different shapes, or have the wrong
            number of channels.
        UsageError: If an option is invalid.
    """
    if len(images) == 0:
        raise ShapeError("to_tensor needs at least one image")
    if color not in ("rgb", "bgr"):
        raise UsageError(f"unknown color {color!r}; expected 'rgb' or 'bgr'")
    if layout not in ("NCHW", "NHWC"):
        raise UsageError(f"unknown layout {layout!r}; expected 'NCHW' or 'NHWC'")
    out_dtype = np.dtype(dtype)
    first = images[0]
    _check_image(first)
    shape = first.shape
    for i, im in enumerate(images):
        _check_image(im)
        if im.shape != shape:
            raise ShapeError(
                f"all images must have the same shape; image 0 is {shape}, image {i} is {im.shape}",
                hint="resize every image to the model input size first (resize_image)",
            )
    in_ch = 1 if first.ndim == 2 else first.shape[2]
    if grayscale:
        if in_ch not in (1, 3):
            raise ShapeError(f"grayscale needs 1- or 3-channel images, got shape {shape}")
        channels = 1
    else:
        if in_ch != 3:
            raise ShapeError(
                f"expected 3-channel BGR images, got shape {shape}",
                hint="pass grayscale=True for single-channel models",
            )
        channels = 3
    means = _per_channel(mean, channels, "mean")
    stds = _per_channel(std, channels, "std")
    if any(s == 0 for s in stds):
        raise UsageError(f"std must not contain zeros, got {list(std)}")
    identity = scale == 1 and all(m == 0 for m in means) and all(s == 1 for s in stds)
    if out_dtype.kind in "iub":
        if not identity:
            raise UsageError(
                f"dtype {out_dtype} needs scale=1, mean=0 and std=1 (raw pixels); "
                f"got scale={scale}, mean={means}, std={stds}"
            )
        work = out_dtype
    elif out_dtype.kind == "f":
        work = np.dtype(np.float64) if out_dtype == np.float64 else np.dtype(np.float32)
    else:
        raise UsageError(f"unsupported output dtype {out_dtype}")

    n = len(images)
    h, w = int(shape[0]), int(shape[1])
    nchw = layout == "NCHW"
    out = np.empty((n, channels, h, w) if nchw else (n, h, w, channels), dtype=work)
    k = _reciprocal_int(float(scale))
    scale_w = np.asarray(scale if work.kind == "f" else 1, dtype=work)  # 0-d: keeps dtype
    k_w = np.asarray(k or 1, dtype=work)
    do_mean = any(m != 0 for m in means)
    do_std = any(s != 1 for s in stds)
    swap = color == "rgb"

    def affine(src: np.ndarray, dst: np.ndarray) -> None:
        """``dst = src * scale`` (or ``src / k``), cast to ``work``, in one pass."""
        if scale == 1:
            dst[...] = src
        elif k is not None:
            np.divide(src, k_w, out=dst, casting="unsafe")
        else:
            np.multiply(src, scale_w, out=dst, casting="unsafe")

    if nchw:
        for i, im in enumerate(images):
            if grayscale:
                planes = [_gray(im, in_ch)]
            else:
                planes = _split(im)
                if swap:
                    planes = planes[::-1]
            for c, plane in enumerate(planes):
                dst = out[i, c]
                affine(plane, dst)
                if do_mean:
                    dst -= np.asarray(means[c], dtype=work)
                if do_std:
                    dst /= np.asarray(stds[c], dtype=work)
    else:
        row_mean = np.tile(np.asarray(means, dtype=work), w) if do_mean else None
        row_std = np.tile(np.asarray(stds, dtype=work), w) if do_std else None
        for i, im in enumerate(images):
            if grayscale:
                src = _gray(im, in_ch).reshape(h, w, 1)
            else:
                src = _bgr_to_rgb(im) if swap else im
            dst = out[i]
            affine(src, dst)
            rows = dst.reshape(h, w * channels)
            if row_mean is not None:
                rows -= row_mean
            if row_std is not None:
                rows /= row_std
    if out.dtype != out_dtype:
        out = out.astype(out_dtype)
    return out
