"""The optimize stage: INT8 post-training quantization with accuracy control.

Public API:

- :func:`quantize_bundle` with :class:`QuantizeOptions` -> :class:`QuantizeReport`
- :func:`explain_artifact` -> :class:`Explanation` (why INT8 is not faster)
- :func:`build_calibration_set` -> :class:`CalibrationSet` (calibration hygiene)

Heavy imports (onnxruntime.quantization, openvino, nncf) happen inside the backend modules.
"""

from cvdeploy.optimize.calibration import CalibrationSet, build_calibration_set
from cvdeploy.optimize.explain import (
    Explanation,
    Finding,
    explain_artifact,
    measure_latency,
    measure_side_by_side,
)
from cvdeploy.optimize.quantize import (
    BACKENDS,
    QuantizeOptions,
    QuantizeReport,
    quantize_bundle,
)

__all__ = [
    "BACKENDS",
    "CalibrationSet",
    "Explanation",
    "Finding",
    "QuantizeOptions",
    "QuantizeReport",
    "build_calibration_set",
    "explain_artifact",
    "measure_latency",
    "measure_side_by_side",
    "quantize_bundle",
]
