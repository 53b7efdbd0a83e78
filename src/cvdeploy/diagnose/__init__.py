"""The diagnose stage: ``cvdeploy doctor`` and drift monitoring.

Public API (other stages, the CLI and workflows use these, never the modules behind them):

- :func:`run_doctor` with :class:`DoctorOptions` -> :class:`DoctorReport` (ranked
  :class:`Finding` objects, per-section measurements); :func:`write_html` renders it;
- drift: :func:`record_reference` (``cvdeploy eval`` summarises the validation images into
  the bundle), :func:`load_reference` -> :class:`ReferenceSummary`, :func:`collect` /
  :func:`image_features` / :func:`result_features` (per-image statistics),
  :func:`compare` -> :class:`DriftReport` (KS with Holm, class mix, MMD, C2ST at a
  calibrated false-alarm rate), :func:`decode_for_features`;
- the pieces: :func:`compare_layers` (layer-wise localisation), :func:`score_variants` and
  :func:`infer_fed_pipeline` (preprocessing audit), :class:`TappedModel` (layer outputs).

scipy and matplotlib (``pip install 'cvdeploy[diagnose]'``) are imported when used.
"""

from cvdeploy.diagnose.doctor import SECTIONS, DoctorOptions, run_doctor
from cvdeploy.diagnose.drift import (
    ALPHA,
    DriftReport,
    ImageSource,
    ReferenceRecord,
    ReferenceSummary,
    collect,
    compare,
    decode_for_features,
    feature_side,
    jpeg_reduction,
    load_reference,
    record_reference,
    reference_check,
    summarize_drift,
)
from cvdeploy.diagnose.features import (
    IMAGE_FEATURES,
    FeatureTable,
    image_features,
    prediction_features,
    result_features,
)
from cvdeploy.diagnose.findings import DoctorReport, Finding, Section
from cvdeploy.diagnose.html import write_html
from cvdeploy.diagnose.layerwise import LayerReport, compare_layers, float_source
from cvdeploy.diagnose.preprocess_audit import (
    FedReport,
    VariantReport,
    fault_tensors,
    infer_fed_pipeline,
    score_variants,
)
from cvdeploy.diagnose.taps import TappedModel

__all__ = [
    "ALPHA",
    "IMAGE_FEATURES",
    "SECTIONS",
    "DoctorOptions",
    "DoctorReport",
    "DriftReport",
    "FeatureTable",
    "FedReport",
    "Finding",
    "ImageSource",
    "LayerReport",
    "ReferenceRecord",
    "ReferenceSummary",
    "Section",
    "TappedModel",
    "VariantReport",
    "collect",
    "compare",
    "compare_layers",
    "decode_for_features",
    "fault_tensors",
    "feature_side",
    "float_source",
    "image_features",
    "infer_fed_pipeline",
    "jpeg_reduction",
    "load_reference",
    "prediction_features",
    "record_reference",
    "reference_check",
    "result_features",
    "run_doctor",
    "score_variants",
    "summarize_drift",
    "write_html",
]
