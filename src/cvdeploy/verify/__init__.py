"""The verify stage: is an artifact right? The parity gate and COCO metrics.

Public API:

- :func:`check_parity` -> :class:`ParityResult`: a candidate against its source on real
  images, with the tolerance of its precision (:func:`tolerance_for`, :data:`TOLERANCES`);
  :func:`match_detections`, the gate's one-to-one matching of two detection sets;
- :func:`evaluate_bundle` with :class:`Protocol` -> :class:`EvalReport`: mAP (pycocotools)
  or top-1/top-5 on a labelled dataset, recorded in the bundle;
- :func:`evaluate_detections` / :func:`evaluate_classification`: the metrics alone;
- :func:`recheck_parity` -> :class:`Recheck`: an artifact run beside its source again
  (before a registry rollback puts it back into service).
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
    match_detections,
    tolerance_for,
)
from cvdeploy.verify.recheck import Recheck, recheck_parity

__all__ = [
    "TOLERANCES",
    "ClassificationMetrics",
    "DetectionMetrics",
    "EvalReport",
    "ParityResult",
    "Protocol",
    "Recheck",
    "Tolerance",
    "check_parity",
    "evaluate_bundle",
    "evaluate_classification",
    "evaluate_detections",
    "match_detections",
    "recheck_parity",
    "tolerance_for",
]
