"""Per-image statistics that drift is measured on: image properties and predictions.

Image properties are computed on a *canonical* copy of each image, resized (INTER_AREA) so
that its longer side is at most ``side`` pixels (the model input's longer side by default):
sharpness and noise then describe what the model sees, and an image decoded at reduced
scale (the server's libjpeg DCT scaling) gives the same figures as the full decode.

- ``brightness``, ``contrast``: mean and standard deviation of the grey image (0..255);
- ``saturation``: mean HSV saturation (0..255);
- ``sharpness``: log10 of the variance of the Laplacian (lower: blurrier);
- ``noise``: Immerkaer's fast estimate of the noise standard deviation (grey levels);
- ``mean_b``, ``mean_g``, ``mean_r``: channel means, in the order OpenCV reads them;
- ``width``, ``height``, ``aspect``: of the original image (``aspect`` = width / height);
- ``jpeg_quality``: estimated from the file's luminance quantization table (IJG scale),
  NaN for other formats or when the file bytes are not known.

Prediction statistics per image (at the spec's default confidence threshold):
``detections``, ``mean_conf``, ``max_conf``, ``box_area`` (median box area over image
area) for detectors; ``top1_conf`` and ``entropy`` for classifiers; plus class counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from cvdeploy.pipeline.results import Classification, Detections

IMAGE_FEATURES: tuple[str, ...] = (
    "brightness",
    "contrast",
    "saturation",
    "sharpness",
    "noise",
    "mean_b",
    "mean_g",
    "mean_r",
    "width",
    "height",
    "aspect",
    "jpeg_quality",
)
DETECT_FEATURES: tuple[str, ...] = ("detections", "mean_conf", "max_conf", "box_area")
CLASSIFY_FEATURES: tuple[str, ...] = ("top1_conf", "entropy")
DEFAULT_SIDE = 640

# The IJG (libjpeg) standard luminance quantization table at quality 50; the order does not
# matter here (only its sum is used).
_STD_LUMA = np.array(
    [
        *(16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40),
        *(57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35),
        *(55, 64, 81, 104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112),
        *(100, 103, 99),
    ],
    dtype=np.float64,
)
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


def prediction_features(task: str) -> tuple[str, ...]:
    """The prediction statistics of a task."""
    return CLASSIFY_FEATURES if task == "classify" else DETECT_FEATURES


def canonical(img: np.ndarray, side: int = DEFAULT_SIDE) -> np.ndarray:
    """The image resized (INTER_AREA, aspect kept) so its longer side is at most ``side``."""
    h, w = img.shape[:2]
    s = side / max(h, w)
    if s >= 1.0:
        return img
    return cv2.resize(
        img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA
    )


def jpeg_quality(data: bytes | None) -> float:
    """The IJG quality (1..100) a JPEG's luminance table corresponds to, else NaN."""
    if not data or data[:2] != b"\xff\xd8":
        return math.nan
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker == 0xDA:  # start of scan: no table after it matters
            break
        seg = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xDB:
            j, end = i + 4, min(i + 2 + seg, n)
            while j < end:
                pq, tq = data[j] >> 4, data[j] & 0x0F
                size = 128 if pq else 64
                table = data[j + 1 : j + 1 + size]
                if len(table) < size:
                    return math.nan
                if tq == 0:
                    vals = np.frombuffer(table, dtype=">u2" if pq else np.uint8).astype(np.float64)
                    scale = 100.0 * vals.sum() / _STD_LUMA.sum()
                    q = 5000.0 / scale if scale > 100 else (200.0 - scale) / 2.0
                    return float(min(100.0, max(1.0, q)))
                j += 1 + size
        i += 2 + seg
    return math.nan


def image_features(
    img: np.ndarray,
    *,
    data: bytes | None = None,
    size: tuple[int, int] | None = None,
    side: int = DEFAULT_SIDE,
) -> np.ndarray:
    """The :data:`IMAGE_FEATURES` of one image (BGR or grey ``uint8``).

    Args:
        img: The decoded image (possibly decoded at reduced scale).
        data: The encoded file (for ``jpeg_quality``), when known.
        size: The original ``(width, height)`` when ``img`` was decoded at reduced scale.
        side: Longer side of the canonical copy the pixel statistics are computed on.
    """
    w0, h0 = size if size is not None else (img.shape[1], img.shape[0])
    im = canonical(img, side)
    if im.ndim == 2 or im.shape[2] == 1:
        gray = im.reshape(im.shape[0], im.shape[1])
        bgr = np.repeat(gray[:, :, None], 3, axis=2)
    else:
        bgr = im[:, :, :3]
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    g32 = gray.astype(np.float32)
    mean, std = cv2.meanStdDev(g32)
    sat = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)[:, :, 1]
    lap = cv2.Laplacian(g32, cv2.CV_32F)
    sharp = math.log10(float(lap.var()) + 1e-3)
    hh, ww = gray.shape
    if hh > 2 and ww > 2:
        resp = cv2.filter2D(g32, cv2.CV_32F, _NOISE_KERNEL)[1:-1, 1:-1]
        noise = math.sqrt(math.pi / 2.0) * float(np.abs(resp).sum()) / (6.0 * (ww - 2) * (hh - 2))
    else:
        noise = math.nan
    ch = cv2.mean(bgr)
    return np.array(
        [
            float(mean[0, 0]),
            float(std[0, 0]),
            float(sat.mean()),
            sharp,
            noise,
            ch[0],
            ch[1],
            ch[2],
            float(w0),
            float(h0),
            float(w0) / float(h0),
            jpeg_quality(data),
        ],
        dtype=np.float64,
    )


def result_features(
    result: Detections | Classification,
    *,
    conf: float,
    num_classes: int,
    image_size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Prediction statistics and class counts of one result.

    Args:
        result: Detections (original-image coordinates) or class probabilities.
        conf: Detections scoring below it are left out (the spec's default threshold).
        num_classes: Length of the class-count vector.
        image_size: ``(width, height)`` of the original image (for box areas).

    Returns:
        The :func:`prediction_features` values and the per-class counts.
    """
    counts = np.zeros(num_classes, dtype=np.float64)
    if isinstance(result, Classification):
        p = np.asarray(result.probs, dtype=np.float64)
        top = int(np.argmax(p))
        if 0 <= top < num_classes:
            counts[top] = 1.0
        q = np.clip(p, 1e-12, 1.0)
        return np.array([float(p[top]), float(-(q * np.log(q)).sum())]), counts
    keep = result.scores >= conf
    scores = result.scores[keep].astype(np.float64)
    ids = result.class_ids[keep].astype(np.int64)
    ids = ids[(ids >= 0) & (ids < num_classes)]
    np.add.at(counts, ids, 1.0)
    if scores.size == 0:
        return np.array([0.0, math.nan, math.nan, math.nan]), counts
    boxes = result.boxes[keep].astype(np.float64)
    w, h = image_size
    area = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    return (
        np.array(
            [
                float(scores.size),
                float(scores.mean()),
                float(scores.max()),
                float(np.median(area) / max(1.0, float(w * h))),
            ]
        ),
        counts,
    )


@dataclass(slots=True)
class FeatureTable:
    """Per-image statistics of a set of images (the reference, or a production window).

    Attributes:
        names: Feature names, one per column of ``values``.
        values: ``(images, features)`` float64; NaN where a value is unknown.
        classes: ``(images, classes)`` counts of predicted classes (no columns without
            predictions).
        embeddings: ``(images, dims)`` pooled backbone features, or ``None``.
        ids: Image identifiers (file names), for evidence.
    """

    names: tuple[str, ...]
    values: np.ndarray
    classes: np.ndarray
    embeddings: np.ndarray | None = None
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def column(self, name: str) -> np.ndarray:
        """One feature's values over the images."""
        return self.values[:, self.names.index(name)]

    def subset(self, rows: Sequence[int] | np.ndarray) -> FeatureTable:
        """The table restricted to some images."""
        idx = np.asarray(rows, dtype=np.int64)
        return FeatureTable(
            names=self.names,
            values=self.values[idx],
            classes=self.classes[idx],
            embeddings=None if self.embeddings is None else self.embeddings[idx],
            ids=[self.ids[i] for i in idx] if self.ids else [],
        )

    @staticmethod
    def concat(tables: Sequence[FeatureTable]) -> FeatureTable:
        """Rows of several tables with the same columns."""
        first = tables[0]
        embs = [t.embeddings for t in tables]
        return FeatureTable(
            names=first.names,
            values=np.concatenate([t.values for t in tables]),
            classes=np.concatenate([t.classes for t in tables]),
            embeddings=None
            if any(e is None for e in embs)
            else np.concatenate([e for e in embs if e is not None]),
            ids=[i for t in tables for i in t.ids],
        )
