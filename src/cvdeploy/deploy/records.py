"""One JSON record per image: what `cvdeploy batch` writes, in-process or on a Ray actor."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cvdeploy.errors import CvdeployError
from cvdeploy.pipeline import Predictor, Thresholds

__all__ = ["predict_records"]


def predict_records(
    predictor: Predictor, paths: Sequence[str], names: Sequence[str], thresholds: Thresholds
) -> list[dict[str, Any]]:
    """One output record per path (an unreadable image gets an ``error`` record)."""
    from cvdeploy.data.io import read_image

    records: list[dict[str, Any] | None] = []
    images, where = [], []
    for i, p in enumerate(paths):
        try:
            img = read_image(Path(p))
        except CvdeployError as exc:
            records.append({"image": str(p), "error": exc.message})
            continue
        records.append(None)
        images.append(img)
        where.append(i)
    if images:
        run = predictor.run_batch(images, thresholds=thresholds)
        for i, img, res in zip(where, images, run.results, strict=True):
            records[i] = {
                "image": str(paths[i]),
                "width": int(img.shape[1]),
                "height": int(img.shape[0]),
                "results": res.to_dicts(names),
                "artifact": predictor.artifact_id,
            }
    return [r for r in records if r is not None]
