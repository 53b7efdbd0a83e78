"""The verify stage: is an artifact right? The parity gate and COCO metrics.

Public API:

- :func:`check_parity` -> :class:`ParityResult`: a candidate against its source on real
  images, with the tolerance of its precision (:func:`tolerance_for`, :data:`TOLERANCES`);
- :func:`evaluate_bundle` with :class:`Protocol` -> :class:`EvalReport`: mAP (pycocotools)
  or top-1/top-5 on a labelled dataset, recorded in the bundle;
- :func:`evaluate_detections` / :func:`evaluate_classification`: the metrics alone.
"""

from cvdeploy.verify.evaluate import EvalReport, Protocol, evaluate_bundle
from cvdeploy.verify.metrics import (
    ClassificationMetrics,
    DetectionMetrics,
    evaluate_classification,
    evaluate_detections,
)
from cvdeploy.verify.parity import (
    TOLERANCES,
    ParityResult,
    Tolerance,
    check_parity,
    tolerance_for,
)

__all__ = [
    "TOLERANCES",
    "ClassificationMetrics",
    "DetectionMetrics",
    "EvalReport",
    "ParityResult",
    "Protocol",
    "Tolerance",
    "check_parity",
    "evaluate_bundle",
    "evaluate_classification",
    "evaluate_detections",
    "tolerance_for",
]
