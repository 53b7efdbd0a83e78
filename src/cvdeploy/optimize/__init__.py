"""The optimize stage: INT8 post-training quantization with accuracy control.

Public API:

- :func:`quantize_bundle` with :class:`QuantizeOptions` -> :class:`QuantizeReport`
- :func:`explain_artifact` -> :class:`Explanation` (why INT8 is not faster)
- :func:`build_calibration_set` -> :class:`CalibrationSet` (calibration hygiene;
  :data:`MIN_CALIBRATION_IMAGES` without ``force``)
- :data:`QUANTIZERS`: the backends by name (:class:`QuantizeContext` in, a
  :class:`QuantizedModel` out; see :mod:`cvdeploy.optimize.backend`)

Heavy imports (onnxruntime.quantization, openvino, nncf) happen inside the backend modules.
"""

from cvdeploy.optimize.backend import (
    ARTIFACT_IDS,
    BACKENDS,
    QUANTIZERS,
    QuantizeContext,
    QuantizedModel,
    QuantizeOptions,
    candidate_predictor,
)
from cvdeploy.optimize.calibration import (
    MIN_IMAGES as MIN_CALIBRATION_IMAGES,
)
from cvdeploy.optimize.calibration import (
    CalibrationSet,
    build_calibration_set,
    list_calibration_images,
)
from cvdeploy.optimize.explain import Explanation, Finding, explain_artifact
from cvdeploy.optimize.quantize import QuantizeReport, quantize_bundle

__all__ = [
    "ARTIFACT_IDS",
    "BACKENDS",
    "MIN_CALIBRATION_IMAGES",
    "QUANTIZERS",
    "CalibrationSet",
    "Explanation",
    "Finding",
    "QuantizeContext",
    "QuantizeOptions",
    "QuantizeReport",
    "QuantizedModel",
    "build_calibration_set",
    "candidate_predictor",
    "explain_artifact",
    "list_calibration_images",
    "quantize_bundle",
]
