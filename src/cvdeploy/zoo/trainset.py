"""In-memory YOLO-format training data with mosaic, affine, flip and HSV augmentation.

Images are read once with OpenCV (converted to RGB, longest side resized to ``imgsz``) and
kept in memory as uint8; labels come from the Ultralytics ``labels/`` folder that mirrors
``images/``. Batches are built in the calling process: on a two-core machine this is faster
than worker processes, which would compete with the training step for the same cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from cvdeploy.errors import DatasetError, LabelError

__all__ = ["AugmentConfig", "YoloTrainSet", "read_data_yaml"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
PAD_VALUE = 114


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths (YOLOv8-like defaults).

    Attributes:
        mosaic: Probability of a 4-image mosaic.
        scale: Random zoom range ``1 +- scale``.
        translate: Random shift, as a fraction of the image side.
        fliplr: Probability of a horizontal flip.
        flipud: Probability of a vertical flip.
        hsv_h: Hue gain range.
        hsv_s: Saturation gain range.
        hsv_v: Value gain range.
    """

    mosaic: float = 1.0
    scale: float = 0.5
    translate: float = 0.1
    fliplr: float = 0.5
    flipud: float = 0.5
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4


def read_data_yaml(data: Path) -> tuple[dict[str, list[Path]], list[str]]:
    """Read an Ultralytics ``data.yaml``.

    Args:
        data: Path of the yaml file (or of a folder holding ``data.yaml``).

    Returns:
        ``({"train": [image folders], "val": [...]}, names in class order)``.

    Raises:
        DatasetError: If the file is missing or malformed.
    """
    data = Path(data)
    if data.is_dir():
        data = data / "data.yaml"
    if not data.is_file():
        raise DatasetError(f"dataset file not found: {data}", hint="pass a data.yaml or its folder")
    try:
        cfg = yaml.safe_load(data.read_text())
    except yaml.YAMLError as exc:
        raise DatasetError(f"cannot parse {data}: {exc}") from exc
    if not isinstance(cfg, dict) or "names" not in cfg or "train" not in cfg:
        raise DatasetError(f"{data} needs at least 'train' and 'names' keys")
    root = Path(cfg.get("path") or ".")
    if not root.is_absolute():
        root = (data.parent / root).resolve()
    raw_names = cfg["names"]
    if isinstance(raw_names, dict):
        names = [str(raw_names[k]) for k in sorted(raw_names, key=int)]
    elif isinstance(raw_names, list):
        names = [str(n) for n in raw_names]
    else:
        raise DatasetError(f"'names' in {data} must be a list or a mapping index -> name")
    splits: dict[str, list[Path]] = {}
    for split in ("train", "val"):
        entry = cfg.get(split)
        if entry is None:
            continue
        entries = entry if isinstance(entry, list) else [entry]
        splits[split] = [p if (p := Path(str(e))).is_absolute() else root / p for e in entries]
    return splits, names


def _label_path(img: Path) -> Path:
    parts = list(img.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _read_labels(path: Path, nc: int) -> np.ndarray:
    """Read ``cls cx cy w h`` rows (normalised); missing file = no objects."""
    if not path.is_file():
        return np.zeros((0, 5), np.float32)
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    try:
        arr = np.array([[float(v) for v in r[:5]] for r in rows], np.float32).reshape(-1, 5)
    except ValueError as exc:
        raise LabelError(f"malformed label file {path}: {exc}") from exc
    if len(arr) and (arr[:, 0].min() < 0 or arr[:, 0].max() >= nc):
        raise LabelError(f"class id out of range 0..{nc - 1} in {path}")
    return arr


class YoloTrainSet:
    """Images and labels of one split, cached in memory.

    Args:
        folders: Image folders of the split.
        names: Class names.
        imgsz: Training image side.
        read_labels: Read the label files (``False``: every image has none).
        align: Where an un-augmented image sits in its letterbox: ``center`` or
            ``top-left`` (the spec's ``preprocess.align``: a model fine-tuned and calibrated
            here sees its padding where it will see it deployed).
        pad_value: The letterbox's (and mosaic's) grey level (the spec's
            ``preprocess.pad_value``).
        resize: ``letterbox`` (the aspect ratio kept) or ``stretch`` (every image resized
            to ``imgsz x imgsz``, as a ``stretch`` spec feeds the model).
    """

    def __init__(
        self,
        folders: list[Path],
        *,
        names: list[str],
        imgsz: int,
        read_labels: bool = True,
        align: str = "center",
        pad_value: int = PAD_VALUE,
        resize: str = "letterbox",
    ) -> None:
        if align not in ("center", "top-left"):
            raise ValueError(f"align must be 'center' or 'top-left', got {align!r}")
        if resize not in ("letterbox", "stretch"):
            raise ValueError(f"resize must be 'letterbox' or 'stretch', got {resize!r}")
        files = sorted(
            p for f in folders for p in Path(f).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise DatasetError(f"no images found in {', '.join(map(str, folders))}")
        self.names = names
        self.imgsz = imgsz
        self.align = align
        self.pad_value = pad_value
        self.files = files
        self.images: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []  # [n, 5] cls, x1, y1, x2, y2 in cached-image pixels
        # every label file first: a bad one fails before any image is decoded
        normalised = [
            _read_labels(_label_path(f), len(names))
            if read_labels
            else np.zeros((0, 5), np.float32)
            for f in files
        ]
        for f, lab in zip(files, normalised, strict=True):
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if img is None:
                raise DatasetError(f"cannot decode image {f}")
            h, w = img.shape[:2]
            r = imgsz / max(h, w)
            if resize == "stretch" and (h, w) != (imgsz, imgsz):
                img = cv2.resize(img, (imgsz, imgsz), interpolation=cv2.INTER_LINEAR)
            elif resize == "letterbox" and r != 1:
                img = cv2.resize(img, (round(w * r), round(h * r)), interpolation=cv2.INTER_LINEAR)
            h, w = img.shape[:2]
            self.images.append(np.ascontiguousarray(img[..., ::-1]))
            xyxy = np.empty_like(lab)
            xyxy[:, 0] = lab[:, 0]
            xyxy[:, 1] = (lab[:, 1] - lab[:, 3] / 2) * w
            xyxy[:, 2] = (lab[:, 2] - lab[:, 4] / 2) * h
            xyxy[:, 3] = (lab[:, 1] + lab[:, 3] / 2) * w
            xyxy[:, 4] = (lab[:, 2] + lab[:, 4] / 2) * h
            self.labels.append(xyxy)

    def __len__(self) -> int:
        return len(self.files)

    def resized(self, imgsz: int) -> YoloTrainSet:
        """The same split cached at another training size (from the cached images: the
        files are not read again)."""
        out = object.__new__(YoloTrainSet)
        out.names, out.files, out.imgsz = self.names, self.files, imgsz
        out.align, out.pad_value = self.align, self.pad_value
        r = imgsz / self.imgsz
        out.images, out.labels = [], []
        for img, lab in zip(self.images, self.labels, strict=True):
            h, w = img.shape[:2]
            size = (max(1, round(w * r)), max(1, round(h * r)))
            out.images.append(cv2.resize(img, size, interpolation=cv2.INTER_LINEAR))
            scaled = lab.copy()
            scaled[:, 1:] *= np.array([size[0] / w, size[1] / h] * 2, dtype=scaled.dtype)
            out.labels.append(scaled)
        return out

    def _mosaic(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        s = self.imgsz
        canvas = np.full((2 * s, 2 * s, 3), self.pad_value, np.uint8)
        xc, yc = (int(v) for v in rng.uniform(s / 2, 3 * s / 2, 2))
        idx = [i, *rng.integers(0, len(self), 3).tolist()]
        out = []
        for k, j in enumerate(idx):
            img = self.images[j]
            h, w = img.shape[:2]
            if k == 0:  # top-left
                x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
                x1b, y1b = w - (x2a - x1a), h - (y2a - y1a)
            elif k == 1:  # top-right
                x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, 2 * s), yc
                x1b, y1b = 0, h - (y2a - y1a)
            elif k == 2:  # bottom-left
                x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(2 * s, yc + h)
                x1b, y1b = w - (x2a - x1a), 0
            else:  # bottom-right
                x1a, y1a, x2a, y2a = xc, yc, min(xc + w, 2 * s), min(2 * s, yc + h)
                x1b, y1b = 0, 0
            canvas[y1a:y2a, x1a:x2a] = img[y1b : y1b + (y2a - y1a), x1b : x1b + (x2a - x1a)]
            lab = self.labels[j].copy()
            lab[:, [1, 3]] += x1a - x1b
            lab[:, [2, 4]] += y1a - y1b
            out.append(lab)
        return canvas, np.concatenate(out)

    def sample(
        self,
        i: int,
        *,
        rng: np.random.Generator | None,
        aug: AugmentConfig | None,
        mosaic: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return image ``i`` (``[s, s, 3]`` uint8 RGB) and its ``[n, 5]`` (cls, xyxy) labels.

        Without ``aug`` (or ``rng``) the image is letterboxed (centred, or at the top left
        with ``align="top-left"``) with no augmentation; augmentation scales and translates
        it from there.
        """
        s = self.imgsz
        if aug is not None and rng is not None and mosaic:
            img, lab = self._mosaic(i, rng)
            cx = cy = float(s)  # the mosaic centre maps to the output centre
        else:
            img, lab = self.images[i], self.labels[i].copy()
            if self.align == "center":  # the image's centre maps to the output's centre
                cx, cy = img.shape[1] / 2, img.shape[0] / 2
            else:  # top-left: unscaled, the image's origin stays at the output's
                cx = cy = s / 2
        scale, tx, ty = 1.0, 0.0, 0.0
        if aug is not None and rng is not None:
            scale = float(rng.uniform(1 - aug.scale, 1 + aug.scale))
            tx, ty = (float(v) * s for v in rng.uniform(-aug.translate, aug.translate, 2))
        m = np.array([[scale, 0, s / 2 + tx - cx * scale], [0, scale, s / 2 + ty - cy * scale]])
        img = cv2.warpAffine(
            img, m, (s, s), flags=cv2.INTER_LINEAR, borderValue=(self.pad_value,) * 3
        )
        if len(lab):
            before = lab.copy()
            lab[:, [1, 3]] = lab[:, [1, 3]] * scale + m[0, 2]
            lab[:, [2, 4]] = lab[:, [2, 4]] * scale + m[1, 2]
            lab[:, 1:] = lab[:, 1:].clip(0, s)
            bw, bh = lab[:, 3] - lab[:, 1], lab[:, 4] - lab[:, 2]
            area0 = (before[:, 3] - before[:, 1]) * (before[:, 4] - before[:, 2]) * scale**2
            lab = lab[(bw > 2) & (bh > 2) & (bw * bh > 0.2 * area0)]
        if aug is not None and rng is not None:
            if rng.random() < aug.fliplr:
                img = img[:, ::-1]
                lab[:, [1, 3]] = s - lab[:, [3, 1]]
            if rng.random() < aug.flipud:
                img = img[::-1]
                lab[:, [2, 4]] = s - lab[:, [4, 2]]
            img = _hsv(np.ascontiguousarray(img), rng, aug)
        return np.ascontiguousarray(img), lab

    def batch(
        self,
        indices: list[int],
        *,
        rng: np.random.Generator | None = None,
        aug: AugmentConfig | None = None,
        mosaic: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Build a batch.

        Returns:
            ``(images [B, 3, s, s] float32 in [0, 1] (channels-last strides),
            targets [B, M, 5] as (cls, x1, y1, x2, y2) pixels, padding rows cls = -1)``.
        """
        imgs, labs = [], []
        for i in indices:
            use_mosaic = (
                mosaic and aug is not None and rng is not None and rng.random() < aug.mosaic
            )
            img, lab = self.sample(i, rng=rng, aug=aug, mosaic=use_mosaic)
            imgs.append(img)
            labs.append(lab)
        x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().div_(255.0)
        m = max((len(lb) for lb in labs), default=0)
        targets = torch.full((len(labs), m, 5), -1.0)
        for k, lb in enumerate(labs):
            if len(lb):
                targets[k, : len(lb)] = torch.from_numpy(lb)
        return x, targets


def _hsv(img: np.ndarray, rng: np.random.Generator, aug: AugmentConfig) -> np.ndarray:
    """Random hue/saturation/value gains through lookup tables (in place on a copy)."""
    r = rng.uniform(-1, 1, 3) * (aug.hsv_h, aug.hsv_s, aug.hsv_v) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_RGB2HSV))
    x = np.arange(256, dtype=np.float64)
    lut_h = ((x * r[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
