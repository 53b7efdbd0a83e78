"""Typed results of one image: detections or a classification.

Both are frozen dataclasses holding numpy arrays with fixed dtypes, so downstream code
(metrics, the HTTP layer, reports) never has to guess shapes or dtypes. The arrays are
coerced and validated once, at construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cvdeploy.errors import ShapeError, UsageError

__all__ = ["Classification", "Detections"]


def _class_name(names: Sequence[str], class_id: int) -> str:
    """Return ``names[class_id]``, or the id as text when ``names`` does not cover it."""
    if 0 <= class_id < len(names):
        return names[class_id]
    return str(class_id)


@dataclass(frozen=True, slots=True, eq=False)
class Detections:
    """The detections of one image.

    Attributes:
        boxes: ``float32`` array ``(n, 4)``, ``x1, y1, x2, y2`` in pixels.
        scores: ``float32`` array ``(n,)``, sorted by descending score when produced by a
            decoder.
        class_ids: ``int64`` array ``(n,)``.

    Raises:
        ShapeError: If the arrays do not have the shapes above or disagree in length.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32)
        scores = np.asarray(self.scores, dtype=np.float32)
        class_ids = np.asarray(self.class_ids, dtype=np.int64)
        if boxes.size == 0 and boxes.ndim < 2:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ShapeError(f"Detections.boxes must have shape (n, 4), got {boxes.shape}")
        n = boxes.shape[0]
        if scores.shape != (n,) or class_ids.shape != (n,):
            raise ShapeError(
                f"Detections arrays disagree: boxes {boxes.shape}, scores {scores.shape}, "
                f"class_ids {class_ids.shape}; expected (n, 4), (n,), (n,)"
            )
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "class_ids", class_ids)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        """Return detections with no boxes."""
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            class_ids=np.zeros((0,), np.int64),
        )

    def to_dicts(self, names: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Convert to JSON-friendly dictionaries, one per detection.

        Args:
            names: Class names indexed by class id; an id outside ``names`` is named by
                its number.

        Returns:
            A list of ``{"box": [x1, y1, x2, y2], "score", "class_id", "class_name"}``
            with the box rounded to 2 decimals and plain Python numbers throughout.
        """
        boxes = np.round(self.boxes.astype(np.float64), 2).tolist()
        scores = self.scores.astype(np.float64).tolist()
        ids = self.class_ids.tolist()
        return [
            {
                "box": box,
                "score": score,
                "class_id": class_id,
                "class_name": _class_name(names, class_id),
            }
            for box, score, class_id in zip(boxes, scores, ids, strict=True)
        ]


@dataclass(frozen=True, slots=True, eq=False)
class Classification:
    """The class probabilities of one image.

    Attributes:
        probs: ``float32`` array ``(nc,)``.

    Raises:
        ShapeError: If ``probs`` is not one-dimensional.
    """

    probs: np.ndarray

    def __post_init__(self) -> None:
        probs = np.asarray(self.probs, dtype=np.float32)
        if probs.ndim != 1:
            raise ShapeError(f"Classification.probs must have shape (nc,), got {probs.shape}")
        object.__setattr__(self, "probs", probs)

    def __len__(self) -> int:
        return int(self.probs.shape[0])

    def top_k(self, k: int = 5) -> list[tuple[int, float]]:
        """Return the ``k`` most probable classes.

        Args:
            k: How many classes to return (fewer when there are fewer classes).

        Returns:
            ``(class_id, probability)`` pairs by descending probability; equal
            probabilities keep the lower class id first.

        Raises:
            UsageError: If ``k`` is not positive.
        """
        if k < 1:
            raise UsageError(f"top_k needs k >= 1, got {k}")
        order = np.argsort(-self.probs, kind="stable")[:k]
        return [(int(i), float(self.probs[i])) for i in order]

    def to_dicts(self, names: Sequence[str] = (), k: int = 5) -> list[dict[str, Any]]:
        """Convert the top ``k`` classes to JSON-friendly dictionaries.

        Args:
            names: Class names indexed by class id.
            k: How many classes to report.

        Returns:
            A list of ``{"class_id", "class_name", "score"}`` by descending score.
        """
        return [
            {"class_id": i, "class_name": _class_name(names, i), "score": p}
            for i, p in self.top_k(k)
        ]
