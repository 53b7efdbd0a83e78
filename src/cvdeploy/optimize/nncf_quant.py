"""OpenVINO INT8 through NNCF post-training quantization.

The FP32 source is the bundle's OpenVINO FP32 IR, or its ONNX FP32 model converted on the
fly with ``openvino.convert_model``. Calibration images go through the bundle spec's
preprocessing. The detection head's decoding subgraph is found on the OpenVINO graph
(:func:`float_head_ops`) and passed to NNCF as an ``IgnoredScope``. With a budget,
``nncf.quantize_with_accuracy_control`` reverts the most harmful quantizers until the mAP
drop (our COCO evaluation through the Predictor) fits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvdeploy.errors import BackendUnavailable, ModelLoadError, UsageError
from cvdeploy.optimize.backend import (
    QuantizeContext,
    QuantizedModel,
    candidate_predictor,
    match_patterns,
)
from cvdeploy.optimize.calibration import EvalSet
from cvdeploy.pipeline.predictor import Predictor

OV_COMPUTE = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")
_OV_PASS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze")
_OV_SKIP = ("Constant", "Parameter", "Result", "ShapeOf", "Convert")
NNCF_ESTIMATORS = {"minmax": None, "percentile": "MEAN_QUANTILE", "entropy": "HISTOGRAM"}
"""How ``--method`` maps to NNCF's activation range estimators (``None``: NNCF's default)."""


def _import() -> tuple[Any, Any]:
    try:
        import nncf
        import openvino as ov
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BackendUnavailable(
            "OpenVINO INT8 needs openvino and nncf, which are not installed",
            hint="pip install cvdeploy[openvino]",
        ) from exc
    return ov, nncf


def read_ov_model(path: Path, fmt: str) -> Any:
    """Read an OpenVINO IR, or convert an ONNX file with ``openvino.convert_model``."""
    ov, _ = _import()
    try:
        if fmt == "openvino":
            return ov.Core().read_model(str(path))
        return ov.convert_model(str(path))
    except Exception as exc:  # openvino raises RuntimeError/OpConversionFailure
        raise ModelLoadError(
            f"OpenVINO could not read {path.name}: {str(exc).strip().splitlines()[0]}",
            hint="check the FP32 artifact with `cvdeploy info` / `cvdeploy predict`",
        ) from exc


def float_head_ops(model: Any) -> list[str]:
    """Friendly names of the OpenVINO ops that decode the head (kept in float).

    Walks back from every Result through ops that are not convolutions or MatMuls; a
    convolution fed by a SoftMax (YOLOv8's DFL) is included. Constants, parameters and
    shape computations are left out (NNCF does not quantize them).
    """

    def fed_by_softmax(op: Any) -> bool:
        cur = op.input_value(0).get_node()
        while cur.get_type_name() in _OV_PASS:
            cur = cur.input_value(0).get_node()
        return str(cur.get_type_name()).startswith("SoftMax") or cur.get_type_name() == "Softmax"

    keep: dict[str, None] = {}
    stack = [r.input_value(0).get_node() for r in model.get_results()]
    seen: set[str] = set()
    while stack:
        op = stack.pop()
        name = op.get_friendly_name()
        if name in seen:
            continue
        seen.add(name)
        kind = op.get_type_name()
        if kind in _OV_SKIP:
            continue
        if kind in OV_COMPUTE and not fed_by_softmax(op):
            continue
        keep[name] = None
        stack.extend(v.get_node() for v in op.input_values())
    order = [op.get_friendly_name() for op in model.get_ordered_ops()]
    return [n for n in order if n in keep]


@dataclass(frozen=True, slots=True)
class NncfOptions:
    """Options of the NNCF call.

    Attributes:
        method: ``minmax``, ``percentile`` or ``entropy`` (see :data:`NNCF_ESTIMATORS`).
        per_channel: Per-channel weight scales.
        ignored: Op names kept in float.
        preset: ``mixed`` (symmetric weights, asymmetric activations) or ``performance``.
    """

    method: str = "minmax"
    per_channel: bool = True
    ignored: tuple[str, ...] = ()
    preset: str = "mixed"

    def record(self) -> dict[str, Any]:
        """Provenance options."""
        return {
            "method": self.method,
            "nncf_range_estimator": NNCF_ESTIMATORS.get(self.method) or "default (min/max)",
            "per_channel": self.per_channel,
            "preset": self.preset,
        }


def nncf_quantize_kwargs(options: NncfOptions, subset_size: int) -> dict[str, Any]:
    """Keyword arguments of ``nncf.quantize`` for these options (any NNCF backend).

    ``nncf.quantize_with_accuracy_control`` names the advanced parameters
    ``advanced_quantization_parameters``; its caller renames that one key.
    """
    _, nncf = _import()
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        QuantizationParameters,
    )
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    if options.method not in NNCF_ESTIMATORS:
        raise UsageError(f"unknown calibration method {options.method!r}")
    adv: dict[str, Any] = {}
    est = NNCF_ESTIMATORS[options.method]
    if est is not None:
        adv["activations_range_estimator_params"] = getattr(RangeEstimatorParametersSet, est)
    if not options.per_channel:
        adv["weights_quantization_params"] = QuantizationParameters(per_channel=False)
    preset = {
        "mixed": nncf.QuantizationPreset.MIXED,
        "performance": nncf.QuantizationPreset.PERFORMANCE,
    }
    return {
        "preset": preset[options.preset],
        "subset_size": subset_size,
        "ignored_scope": nncf.IgnoredScope(names=list(options.ignored), validate=False),
        "advanced_parameters": AdvancedQuantizationParameters(**adv) if adv else None,
    }


def quantize_ov(
    model: Any,
    paths: Sequence[Path],
    predictor: Predictor,
    *,
    options: NncfOptions,
) -> Any:
    """``nncf.quantize`` on an OpenVINO model with calibration images."""
    _, nncf = _import()
    from cvdeploy.data.io import read_image

    def transform(p: Path) -> np.ndarray:
        return predictor.preprocess([read_image(p)])[0]

    ds = nncf.Dataset(list(paths), transform)
    return nncf.quantize(model, ds, **nncf_quantize_kwargs(options, len(paths)))


def validation_fn(predictor: Predictor, evalset: EvalSet) -> Callable[[Any, Any], float]:
    """Our mAP50-95 over an OpenVINO compiled model, for NNCF's accuracy control.

    The returned function takes the compiled model and an iterable of ``(image_id, path)``
    items, runs each through ``predictor``'s preprocessing, the compiled model and
    ``predictor``'s postprocessing, and scores with pycocotools.
    """
    from cvdeploy.data.io import read_image

    def fn(compiled: Any, items: Any) -> float:
        outs = list(compiled.outputs)
        preds = []
        for iid, path in items:
            x, metas = predictor.preprocess([read_image(path)])
            res = compiled(x)
            raw = [np.asarray(res[o]) for o in outs]
            preds.append((iid, predictor.postprocess(raw, metas)[0]))
        return evalset.score(preds)

    return fn


def quantize_ov_with_accuracy_control(
    model: Any,
    paths: Sequence[Path],
    predictor: Predictor,
    evalset: EvalSet,
    *,
    options: NncfOptions,
    max_drop: float,
) -> Any:
    """``nncf.quantize_with_accuracy_control`` with our mAP as the validation function.

    ``predictor`` must use the evaluation thresholds
    (:data:`cvdeploy.optimize.calibration.EVAL_THRESHOLDS`).
    """
    _, nncf = _import()
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    from cvdeploy.data.io import read_image

    def transform(p: Path) -> np.ndarray:
        return predictor.preprocess([read_image(p)])[0]

    calib = nncf.Dataset(list(paths), transform)
    items = list(zip(evalset.image_ids, evalset.paths, strict=True))

    def val_transform(item: tuple[int, Path]) -> np.ndarray:
        return transform(item[1])

    val = nncf.Dataset(items, val_transform)
    kwargs = nncf_quantize_kwargs(options, len(paths))
    kwargs["advanced_quantization_parameters"] = kwargs.pop("advanced_parameters")
    return nncf.quantize_with_accuracy_control(
        model,
        calib,
        val,
        validation_fn(predictor, evalset),
        max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            num_ranking_workers=1, ranking_subset_size=min(len(items), 64)
        ),
        **kwargs,
    )


def save_ov(model: Any, xml: Path) -> Path:
    """Write an OpenVINO model as IR (``.xml`` + ``.bin``), weights kept as quantized."""
    ov, _ = _import()
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml


def quantize_openvino(ctx: QuantizeContext) -> tuple[QuantizedModel, dict[str, Any] | None]:
    """The OpenVINO backend of :func:`cvdeploy.optimize.quantize.quantize_bundle`.

    Writes ``model.xml``/``model.bin`` to ``tmp/out``. With ``opts.max_drop`` NNCF's
    accuracy control reverts quantizers until our mAP drop fits; the result is then
    re-evaluated here, and a model that still breaks the budget is refused.

    Raises:
        CheckFailed: The budget could not be met ("could not meet the budget; best found").
    """
    bundle, source, cal, src_pred = ctx.bundle, ctx.source, ctx.calibration, ctx.source_predictor
    evalset, fp32_map, opts, tmp, say = ctx.evalset, ctx.fp32_map, ctx.options, ctx.workdir, ctx.log
    from cvdeploy.errors import CheckFailed
    from cvdeploy.optimize.calibration import predictor_map

    converted = source.format != "openvino"
    say(
        f"reading {source.id}"
        + (" (converting ONNX with openvino.convert_model)" if converted else "")
    )
    model = read_ov_model(bundle.model_file(source), source.format)
    head = float_head_ops(model)
    names = [op.get_friendly_name() for op in model.get_ordered_ops()]
    user = match_patterns(names, opts.keep_float)
    nopts = NncfOptions(
        method=opts.method, per_channel=opts.per_channel, ignored=tuple(dict.fromkeys(head + user))
    )
    total_compute = sum(1 for op in model.get_ordered_ops() if op.get_type_name() in OV_COMPUTE)
    if opts.max_drop is not None and evalset is not None and fp32_map is not None:
        say(f"NNCF accuracy-controlled quantization (max drop {opts.max_drop} mAP50-95)")
        qmodel = quantize_ov_with_accuracy_control(
            model, cal.paths, src_pred, evalset, options=nopts, max_drop=opts.max_drop
        )
    else:
        say(f"NNCF post-training quantization on {cal.count} images")
        qmodel = quantize_ov(model, cal.paths, src_pred, options=nopts)
    out_dir = tmp / "out"
    out_dir.mkdir()
    save_ov(qmodel, out_dir / "model.xml")
    fq = sum(1 for op in qmodel.get_ordered_ops() if op.get_type_name() == "FakeQuantize")
    facts = {
        **nopts.record(),
        "head_float": head,
        "converted_from_onnx": converted,
        "fake_quantize_ops": fq,
        "compute_ops": total_compute,
    }
    cand = QuantizedModel(
        directory=out_dir,
        main_file="model.xml",
        format="openvino",
        io=source.io,
        kept_float=list(user),
        facts=facts,
    )
    if opts.max_drop is None or evalset is None or fp32_map is None:
        return cand, None
    with candidate_predictor(bundle, cand, "candidate") as p:
        m = predictor_map(p, evalset)
    drop = fp32_map - m
    budget = {
        "max_drop": opts.max_drop,
        "fp32_map50_95": fp32_map,
        "map50_95": m,
        "drop": drop,
        "met": drop <= opts.max_drop,
        "fake_quantize_ops": fq,
    }
    say(f"  accuracy control result: mAP50-95 {m:.4f} (drop {drop:.4f})")
    if drop > opts.max_drop:
        raise CheckFailed(
            f"could not meet the budget of {opts.max_drop:.4f} mAP50-95 (FP32 {fp32_map:.4f}); "
            f"best found: drop {drop:.4f} (mAP50-95 {m:.4f}) after NNCF reverted the most "
            f"harmful quantizers ({fq} FakeQuantize ops left); nothing was saved",
            hint="allow a larger --max-drop, calibrate on more images, or try --method "
            "percentile/entropy",
        )
    return cand, budget
