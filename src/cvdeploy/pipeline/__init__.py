"""The pipeline: preprocess (spec) -> Runner -> decode + NMS (spec), with stage timings.

:class:`Predictor` is the one loop that eval, bench, serve, the parity gate and calibration
run; see :mod:`cvdeploy.pipeline.predictor`.
"""

from cvdeploy.pipeline.predictor import (
    FORMAT_PREFERENCE,
    Predictor,
    StageTimes,
    Thresholds,
    select_artifact,
)
from cvdeploy.pipeline.results import Classification, Detections

__all__ = [
    "FORMAT_PREFERENCE",
    "Classification",
    "Detections",
    "Predictor",
    "StageTimes",
    "Thresholds",
    "select_artifact",
]
