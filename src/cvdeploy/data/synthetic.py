"""Seeded synthetic datasets of coloured shapes, for tests, demos and the zoo's training.

:func:`make_detection_dataset` writes an Ultralytics-YOLO folder (``images/``, ``labels/``,
``data.yaml``); :func:`make_classification_dataset` writes an ImageNet-style folder tree.
Every image is drawn from its own generator seeded by ``(seed, split, index)``, so the same
seed gives byte-identical files and changing one split's size does not change the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

__all__ = ["SHAPE_NAMES", "make_classification_dataset", "make_detection_dataset"]

SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
"""Class names, in class-index order."""

_SUB = 16  # fixed-point sub-pixel factor of cv2 drawing (shift=4)
_SPLIT_IDS = {"train": 0, "val": 1}


@dataclass(frozen=True)
class _Obj:
    """One shape to draw: class, centre and size in pixels, rotation in radians."""

    cls: int
    cx: float
    cy: float
    size: float
    angle: float


def _regular(n: int, r: float, angle: float, phase: float = 0.0) -> np.ndarray:
    t = angle + phase + np.arange(n) * (2 * math.pi / n)
    return np.stack((r * np.cos(t), r * np.sin(t)), 1)


def _polygon(obj: _Obj) -> np.ndarray | None:
    """Return the shape's outline relative to its centre, or None for circles and rings."""
    r = obj.size / 2
    if obj.cls == 1:  # square, circumscribed diameter = size
        return _regular(4, r, obj.angle, math.pi / 4)
    if obj.cls == 2:  # equilateral triangle
        return _regular(3, r, obj.angle, -math.pi / 2)
    if obj.cls == 3:  # five-pointed star
        outer = _regular(5, r, obj.angle, -math.pi / 2)
        inner = _regular(5, r * 0.42, obj.angle, -math.pi / 2 + math.pi / 5)
        return np.stack((outer, inner), 1).reshape(-1, 2)
    if obj.cls == 4:  # plus / cross with arms a third as wide as the shape
        a = r * 0.3
        b = math.sqrt(r * r - a * a)  # corners of the arms lie on the circumscribed circle
        pts = np.array(
            [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a),
             (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]
        )  # fmt: skip
        c, s = math.cos(obj.angle), math.sin(obj.angle)
        return pts @ np.array([[c, s], [-s, c]])
    return None


def _render(obj: _Obj, h: int, w: int, *, ox: float = 0.0, oy: float = 0.0) -> np.ndarray:
    """Draw the shape's anti-aliased coverage (uint8, 0..255) on an ``h x w`` canvas.

    ``ox, oy`` shift the shape (used to render on a padded canvas).
    """
    mask = np.zeros((h, w), np.uint8)
    cx, cy = obj.cx + ox, obj.cy + oy
    centre = (round(cx * _SUB), round(cy * _SUB))
    r = obj.size / 2
    if obj.cls in (0, 5):
        cv2.circle(mask, centre, round(r * _SUB), 255, -1, cv2.LINE_AA, 4)
        if obj.cls == 5:
            cv2.circle(mask, centre, round(r * 0.55 * _SUB), 0, -1, cv2.LINE_AA, 4)
        return mask
    poly = _polygon(obj)
    assert poly is not None
    pts = np.round((poly + np.array([cx, cy])) * _SUB).astype(np.int32)
    cv2.fillPoly(mask, [pts], 255, cv2.LINE_AA, 4)
    return mask


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured float32 ``[size, size, 3]`` background in 0..255."""
    xx = (np.arange(size, dtype=np.float32) / size)[None, :]
    yy = xx.T
    kind = rng.integers(4)
    img: np.ndarray
    c1, c2 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    if kind == 0:  # flat colour
        img = np.broadcast_to(c1, (size, size, 3)).astype(np.float32)
    elif kind == 1:  # linear gradient
        t = rng.uniform(0, 2 * math.pi)
        g = xx * math.cos(t) + yy * math.sin(t)
        g = (g - g.min()) / max(float(g.max() - g.min()), 1e-6)
        img = c1 + (c2 - c1) * g[..., None]
    elif kind == 2:  # stripes
        t, f = rng.uniform(0, math.pi), rng.uniform(2, 14)
        g = 0.5 + 0.5 * np.sin((xx * math.cos(t) + yy * math.sin(t)) * f * 2 * math.pi)
        c2 = c1 + rng.uniform(-90, 90, 3).astype(np.float32)
        img = c1 + (c2 - c1) * g[..., None]
    else:  # smooth random texture
        cells = int(rng.integers(3, 11))
        low = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
        img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
        img = img * float(rng.uniform(0.3, 0.8)) + c1 * 0.3
    img = np.ascontiguousarray(img, dtype=np.float32)
    for _ in range(int(rng.integers(0, 6))):  # soft distractor blobs
        cx, cy = int(rng.integers(size)), int(rng.integers(size))
        ax, ay = int(rng.integers(size // 20, size // 4)), int(rng.integers(size // 20, size // 4))
        k = int(rng.integers(3, 10)) * 2 + 1
        half = max(ax, ay) + k
        blob = np.zeros((2 * half + 1, 2 * half + 1), np.float32)
        cv2.ellipse(blob, (half, half), (ax, ay), float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        blob = cv2.GaussianBlur(blob, (k, k), 0) * float(rng.uniform(0.2, 0.6))
        crop, sl = _clip(blob, cx - half, cy - half, size)
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        img[sl] += (colour - img[sl]) * crop[..., None]
    return img


def _sample_size(rng: np.random.Generator, scale: float) -> float:
    if rng.random() < 0.12:
        return float(rng.uniform(9, 16)) * scale
    return float(math.exp(rng.uniform(math.log(16), math.log(110)))) * scale


def _pick_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour far enough (in RGB distance) from the mean colour ``under`` it."""
    best, best_d = rng.uniform(0, 255, 3), -1.0
    for _ in range(12):
        c = rng.uniform(0, 255, 3)
        d = float(np.linalg.norm(c - under))
        if d > best_d:
            best, best_d = c, d
        if d >= 90:
            break
    return best


def _render_local(obj: _Obj) -> tuple[np.ndarray, int, int]:
    """Draw the shape on a canvas just big enough; return it with its top-left corner."""
    r = obj.size / 2 + 2
    x0, y0 = math.floor(obj.cx - r), math.floor(obj.cy - r)
    x1, y1 = math.ceil(obj.cx + r), math.ceil(obj.cy + r)
    return _render(obj, y1 - y0, x1 - x0, ox=-x0, oy=-y0), x0, y0


def _clip(cov: np.ndarray, x0: int, y0: int, size: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Crop a local canvas to the image; return the crop and the image slices it covers."""
    h, w = cov.shape
    ix0, iy0 = max(x0, 0), max(y0, 0)
    ix1, iy1 = min(x0 + w, size), min(y0 + h, size)
    if ix1 <= ix0 or iy1 <= iy0:
        return cov[:0, :0], (slice(0, 0), slice(0, 0))
    crop = cov[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
    return crop, (slice(iy0, iy1), slice(ix0, ix1))


def _detection_image(
    rng: np.random.Generator, size: int, *, p_empty: float = 0.05, max_objects: int = 8
) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """Draw one image and return it (uint8 BGR) with its YOLO labels."""
    img = _background(rng, size)
    n_target = 0 if rng.random() < p_empty else int(rng.integers(1, max_objects + 1))
    scale = size / 256
    objs: list[tuple[_Obj, np.ndarray, tuple[slice, slice]]] = []
    visible: list[np.ndarray] = []  # full-image binary masks of the visible pixels
    counts: list[int] = []  # visible pixel counts
    areas: list[int] = []  # full (untruncated) areas
    for _ in range(n_target * 6):
        if len(objs) >= n_target:
            break
        s = _sample_size(rng, scale)
        obj = _Obj(
            cls=int(rng.integers(len(SHAPE_NAMES))),
            cx=float(rng.uniform(-0.15 * s, size + 0.15 * s)),
            cy=float(rng.uniform(-0.15 * s, size + 0.15 * s)),
            size=s,
            angle=float(rng.uniform(0, 2 * math.pi)),
        )
        local, x0, y0 = _render_local(obj)
        area = int((local >= 128).sum())
        cov, sl = _clip(local, x0, y0, size)
        m = cov >= 128
        n_in = int(m.sum())
        if area < 12 or n_in < 0.75 * area:  # tiny or mostly outside the image
            continue
        hidden = [int((v[sl] & m).sum()) for v in visible]
        if any(c - h < 0.6 * a for c, h, a in zip(counts, hidden, areas, strict=True)):
            continue  # would hide too much of an earlier shape
        for i, v in enumerate(visible):
            v[sl] &= ~m
            counts[i] -= hidden[i]
        full = np.zeros((size, size), bool)
        full[sl] = m
        objs.append((obj, cov, sl))
        visible.append(full)
        counts.append(n_in)
        areas.append(area)
    labels: list[tuple[int, float, float, float, float]] = []
    for (obj, cov8, sl), v in zip(objs, visible, strict=True):
        cov = cov8.astype(np.float32) / 255.0
        roi = img[sl]
        colour = _pick_colour(rng, roi[cov > 0.5].mean(0))
        ramp = np.linspace(-1, 1, cov.shape[1], dtype=np.float32)[None, :, None]
        fill = colour.astype(np.float32) * (1 + float(rng.uniform(-0.15, 0.15)) * ramp)
        roi += (fill - roi) * cov[..., None]
        rows, cols = np.flatnonzero(v.any(1)), np.flatnonzero(v.any(0))
        x1, x2, y1, y2 = int(cols[0]), int(cols[-1]) + 1, int(rows[0]), int(rows[-1]) + 1
        labels.append(
            (
                obj.cls,
                (x1 + x2) / 2 / size,
                (y1 + y2) / 2 / size,
                (x2 - x1) / size,
                (y2 - y1) / size,
            )
        )
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    img += rng.standard_normal(img.shape, dtype=np.float32) * float(rng.uniform(0, 12))
    return np.clip(img, 0, 255).round().astype(np.uint8), labels


def make_detection_dataset(
    out: Path, *, n_train: int = 2000, n_val: int = 200, imgsz: int = 256, seed: int = 0
) -> Path:
    """Write a seeded synthetic shape-detection dataset in Ultralytics-YOLO layout.

    The result has ``out/images/{train,val}/*.jpg``, ``out/labels/{train,val}/*.txt``
    (``cls cx cy w h``, normalised; empty file for an image without objects) and
    ``out/data.yaml`` (``path: .``, ``train``, ``val``, ``names``). Boxes are the tight
    boxes of each shape's visible pixels (after occlusion by later shapes and clipping).

    Args:
        out: Output folder (created; existing files of the same names are overwritten).
        n_train: Number of training images.
        n_val: Number of validation images.
        imgsz: Side of the square images, in pixels.
        seed: Seed; the same seed gives byte-identical files.

    Returns:
        The path of ``data.yaml``.
    """
    out = Path(out)
    for split, n in (("train", n_train), ("val", n_val)):
        img_dir, lbl_dir = out / "images" / split, out / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng([seed, _SPLIT_IDS[split], i])
            img, labels = _detection_image(rng, imgsz)
            stem = f"{split}_{i:06d}"
            cv2.imwrite(str(img_dir / f"{stem}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
            text = "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels)
            (lbl_dir / f"{stem}.txt").write_text(text)
    data = {
        "path": ".",
        "train": "images/train",
        "val": "images/val",
        "names": dict(enumerate(SHAPE_NAMES)),
    }
    yaml_path = out / "data.yaml"
    yaml_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return yaml_path


def make_classification_dataset(
    out: Path, *, n_per_class_train: int, n_per_class_val: int, imgsz: int = 64, seed: int = 0
) -> Path:
    """Write a seeded synthetic shape-classification dataset (ImageNet-style folders).

    Each image (``out/{train,val}/{class_name}/*.png``) shows one roughly centred shape of
    random size, rotation and colour on a textured background.

    Args:
        out: Output folder.
        n_per_class_train: Training images per class.
        n_per_class_val: Validation images per class.
        imgsz: Side of the square images, in pixels.
        seed: Seed; the same seed gives byte-identical files.

    Returns:
        ``out``.
    """
    out = Path(out)
    for split, n in (("train", n_per_class_train), ("val", n_per_class_val)):
        for cls, name in enumerate(SHAPE_NAMES):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                rng = np.random.default_rng([seed, _SPLIT_IDS[split], cls, i])
                img = _background(rng, imgsz)
                s = float(rng.uniform(0.45, 0.85)) * imgsz
                j = 0.08 * imgsz
                obj = _Obj(
                    cls=cls,
                    cx=imgsz / 2 + float(rng.uniform(-j, j)),
                    cy=imgsz / 2 + float(rng.uniform(-j, j)),
                    size=s,
                    angle=float(rng.uniform(0, 2 * math.pi)),
                )
                cov = _render(obj, imgsz, imgsz).astype(np.float32) / 255.0
                colour = _pick_colour(rng, img[cov > 0.5].mean(0))
                img += (colour - img) * cov[..., None]
                img += rng.standard_normal(img.shape, dtype=np.float32) * float(rng.uniform(0, 10))
                img_u8 = np.clip(img, 0, 255).round().astype(np.uint8)
                cv2.imwrite(str(folder / f"{name}_{i:05d}.png"), img_u8)
    return out
