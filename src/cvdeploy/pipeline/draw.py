"""Draw detections and classifications on images (for ``predict --save`` and reports)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from cvdeploy.pipeline.results import Classification, Detections


def _color(class_id: int) -> tuple[int, int, int]:
    # A fixed, well-spread palette by hashing the class id (BGR).
    rng = np.random.default_rng(class_id * 7919 + 17)
    c = rng.integers(40, 255, size=3)
    return int(c[0]), int(c[1]), int(c[2])


def draw(
    image: np.ndarray, result: Detections | Classification, names: Sequence[str]
) -> np.ndarray:
    """Return a copy of ``image`` (BGR) with boxes and labels, or the top classes, drawn."""
    out = image.copy()
    h, w = out.shape[:2]
    thick = max(1, round(min(h, w) / 300))
    scale = max(0.4, min(h, w) / 900)
    if isinstance(result, Classification):
        for i, (cid, p) in enumerate(result.top_k(3)):
            label = f"{names[cid] if cid < len(names) else cid} {p:.2f}"
            for color, width in (((0, 0, 0), thick + 2), ((255, 255, 255), thick)):  # outlined
                cv2.putText(
                    out,
                    label,
                    (8, int(24 * scale * (i + 1)) + 4),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    scale,
                    color,
                    width,
                    cv2.LINE_AA,
                )
        return out
    for box, score, cid in zip(result.boxes, result.scores, result.class_ids, strict=True):
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        color = _color(int(cid))
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick, cv2.LINE_AA)
        label = f"{names[int(cid)] if int(cid) < len(names) else int(cid)} {float(score):.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        y_text = y1 - 4 if y1 - th - base - 4 > 0 else y1 + th + 4
        x_text = max(0, min(x1, w - tw - 3))  # the label stays inside the image
        cv2.rectangle(out, (x_text, y_text - th - 2), (x_text + tw + 2, y_text + base), color, -1)
        cv2.putText(
            out,
            label,
            (x_text + 1, y_text),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (0, 0, 0),
            thick,
            cv2.LINE_AA,
        )
    return out
