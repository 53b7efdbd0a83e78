"""The quantize stage: INT8 post-training quantization with accuracy control.

``quantize_bundle`` picks the FP32 source artifact, builds a calibration set (hygiene
checked, see :mod:`cvdeploy.optimize.calibration`), quantizes with the backend's maintained
tool (NNCF for OpenVINO, ONNX Runtime ``quantize_static`` Q/DQ for ONNX Runtime and
TensorRT), keeps the detection head's decoding in float, passes the result through the
integrity gate against its FP32 source (INT8 tolerances) and only then adds it to the
bundle through :meth:`~cvdeploy.bundle.Bundle.edit`. With ``eval_data`` the mAP of both is
recorded (``evaluate_bundle`` metrics checks); with ``max_drop`` the mAP drop must fit the
budget or nothing is saved. Finally FP32 and INT8 are timed side by side and, when INT8 is
not at least 1.3x faster, :func:`cvdeploy.optimize.explain.explain_artifact` says why.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvdeploy.bench import SIDE_BY_SIDE_ROUNDS, Latency, measure_side_by_side
from cvdeploy.bundle import Artifact, Bundle, Provenance
from cvdeploy.data.io import read_image
from cvdeploy.environment import fingerprint
from cvdeploy.errors import CheckFailed, UsageError
from cvdeploy.optimize.backend import (
    ARTIFACT_IDS,
    NNCF_ENGINE_HINT,
    QUANTIZERS,
    Log,
    QuantizeBackend,
    QuantizeContext,
    QuantizedModel,
    QuantizeOptions,
    candidate_predictor,
)
from cvdeploy.optimize.calibration import (
    EVAL_THRESHOLDS,
    CalibrationSet,
    EvalSet,
    build_calibration_set,
    predictor_map,
)
from cvdeploy.optimize.explain import Explanation, explain_artifact
from cvdeploy.pipeline.predictor import Predictor, Thresholds
from cvdeploy.verify import ParityResult, check_parity, evaluate_bundle, tolerance_for

GATE_IMAGES = 16
LATENCY_IMAGES = 20


@dataclass(slots=True)
class Variant:
    """One row of the result table."""

    artifact: str
    precision: str
    size_mb: float
    map50_95: float | None = None
    p50_ms: float | None = None
    inference_p50_ms: float | None = None


@dataclass(slots=True)
class QuantizeReport:
    """What ``cvdeploy quantize`` prints (and ``--json`` dumps)."""

    bundle: str
    artifact: str
    source: str
    backend: str
    calibration: dict[str, Any]
    head_float: list[str]
    kept_float: list[str]
    parity: dict[str, Any]
    rows: list[Variant]
    map_drop: float | None = None
    budget: dict[str, Any] | None = None
    speedup: float | None = None
    explanation: Explanation | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def choose_source(bundle: Bundle, backend: str, source: str | None) -> Artifact:
    """The FP32 artifact to quantize for a backend.

    OpenVINO takes an OpenVINO FP32 IR, else converts the ONNX FP32 model; ONNX Runtime and
    TensorRT need the ONNX FP32 model.
    """
    if source is not None:
        art = bundle.artifact(source)
        if art.precision != "fp32":
            raise UsageError(f"source artifact {art.id!r} is {art.precision}, not fp32")
        return art
    order = ("openvino", "onnx") if backend == "openvino" else ("onnx",)
    for fmt in order:
        for a in bundle.manifest.artifacts:
            if a.format == fmt and a.precision == "fp32":
                return a
    have = ", ".join(f"{a.id} ({a.format} {a.precision})" for a in bundle.manifest.artifacts)
    raise UsageError(
        f"bundle {bundle.name!r} has no FP32 {' or '.join(order)} artifact to quantize "
        f"(artifacts: {have or 'none'})",
        hint="export one first: `cvdeploy export BUNDLE --format onnx`; an INT8 model "
        "imported as is can only be diagnosed with `cvdeploy quantize --explain BUNDLE`",
    )


def _source_predictor(bundle: Bundle, source: Artifact) -> Predictor:
    return Predictor.from_bundle(bundle, source.id, thresholds=EVAL_THRESHOLDS, batch=1)


def quantize_bundle(
    bundle: Bundle | Path | str,
    calib: Path | str,
    *,
    options: QuantizeOptions | None = None,
    log: Log | None = None,
) -> QuantizeReport:
    """Quantize a bundle's FP32 model to INT8, verify it, record it, and time it.

    Args:
        bundle: The bundle (or its directory).
        calib: Calibration images: dataset yaml, COCO json, folder or image.
        options: See :class:`QuantizeOptions`.
        log: Called with progress notes and warnings (default: silent).

    Returns:
        The report (the artifact is in the bundle).

    Raises:
        UsageError: Bad options, too few calibration images, no FP32 source.
        CheckFailed: The INT8 model failed the integrity gate, or the mAP budget could not
            be met (nothing is saved in either case).
    """
    opts = options or QuantizeOptions()
    say: Log = log or (lambda _msg: None)
    b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    if b.spec.task != "detect" and opts.eval_data is not None:
        raise UsageError("--eval-data/--max-drop support detectors only for now")
    art_id = ARTIFACT_IDS[opts.backend]
    if any(a.id == art_id for a in b.manifest.artifacts) and not opts.overwrite:
        raise UsageError(f"artifact {art_id!r} already exists in {b.path}", hint="pass --overwrite")
    cal = build_calibration_set(calib, size=opts.calib_size, method=opts.method, force=opts.force)
    if opts.backend == "openvino" and opts.source is None:
        b = _ensure_openvino_fp32(b, Path(calib), say)
    source = choose_source(b, opts.backend, opts.source)
    notes = list(cal.warnings)
    for w in cal.warnings:
        say(f"warning: {w}")
    evalset = EvalSet.load(opts.eval_data, b.spec.names) if opts.eval_data else None
    with tempfile.TemporaryDirectory(prefix="cvdeploy-quant-") as tmp_s:
        tmp = Path(tmp_s)
        with _source_predictor(b, source) as src_pred:
            fp32_map = None
            if evalset is not None and opts.max_drop is not None:
                say(f"evaluating {source.id} on {evalset.data} ({len(evalset.paths)} images)")
                fp32_map = predictor_map(src_pred, evalset)
            backend: QuantizeBackend = QUANTIZERS.get(opts.backend)
            cand, budget = backend(
                QuantizeContext(
                    bundle=b,
                    source=source,
                    calibration=cal,
                    source_predictor=src_pred,
                    evalset=evalset,
                    fp32_map=fp32_map,
                    options=opts,
                    workdir=tmp,
                    log=say,
                )
            )
            parity = _gate(b, source, cand, art_id, cal, opts, say)
        _save(b, source, cand, art_id, cal, parity, budget, opts)
    say(f"added {art_id} to {b.path}")
    if opts.backend == "tensorrt":
        notes.append(
            f"{art_id} is the explicitly quantized (symmetric Q/DQ) graph TensorRT builds an "
            "INT8 engine from: run `cvdeploy export BUNDLE --format tensorrt:int8` on a "
            "machine with an NVIDIA GPU (checked here on ONNX Runtime CPU only)"
        )
        say(notes[-1])
    return _finish(b, source, art_id, cand, cal, parity, budget, notes, opts, say)


def _ensure_openvino_fp32(b: Bundle, data: Path, say: Log) -> Bundle:
    """Add an ``openvino-fp32`` artifact (the export stage, with its gate) when there is none.

    INT8 is then compared with FP32 on the same runtime. Without the OpenVINO exporter the
    ONNX FP32 model is converted inside the quantization instead (and said so).
    """
    if any(a.format == "openvino" and a.precision == "fp32" for a in b.manifest.artifacts):
        return b
    from cvdeploy.export import EXPORTERS, export_model

    if "openvino" not in EXPORTERS.names() or not EXPORTERS.availability("openvino").available:
        say("no OpenVINO exporter here: converting the ONNX FP32 model inside the quantization")
        return b
    say("exporting openvino-fp32 first (FP32 on the same runtime, through the export gate)")
    rep = export_model(b.path, formats=["openvino"], data=data)
    if not rep.ok:
        msgs = "; ".join(f"{o.artifact_id}: {o.message}" for o in rep.outcomes)
        raise CheckFailed(f"could not export the OpenVINO FP32 source: {msgs}")
    return Bundle.load(b.path)


def _gate(
    b: Bundle,
    source: Artifact,
    cand: QuantizedModel,
    art_id: str,
    cal: CalibrationSet,
    opts: QuantizeOptions,
    say: Log,
) -> ParityResult:
    """The integrity gate against the FP32 source, on held-out images where possible."""
    if opts.eval_data is not None:
        pool = list(EvalSet.load(opts.eval_data, b.spec.names).paths)
    elif b.sample_images():
        pool = b.sample_images()
    else:
        pool = list(cal.paths)
    if len(pool) > GATE_IMAGES:
        idx = np.linspace(0, len(pool) - 1, GATE_IMAGES).round().astype(int)
        pool = [pool[i] for i in idx]
    images = [read_image(p) for p in pool]
    tol = tolerance_for("int8")
    if opts.gate_cosine is not None:
        tol = dataclasses.replace(tol, cosine_min=opts.gate_cosine)
    say(
        f"integrity gate: {art_id} against {source.id} on {len(images)} images (int8 "
        f"tolerances{'' if opts.gate_cosine is None else f', cosine >= {opts.gate_cosine}'})"
    )
    gate_src = Predictor.from_bundle(b, source.id, batch=1)
    with gate_src, candidate_predictor(b, cand, art_id, thresholds=Thresholds()) as cpred:
        parity = check_parity(gate_src, cpred, images, precision="int8", tolerance=tol)
    if not parity.passed and opts.save_refused:
        say(f"{art_id} failed the integrity gate (saved anyway: save_refused)")
    elif not parity.passed:
        raise CheckFailed(
            f"{art_id} failed the integrity gate against {source.id}: "
            + "; ".join(parity.failures)
            + " (nothing was saved)",
            hint="try --method entropy or percentile, more calibration images, "
            "--keep-float for sensitive layers, or --max-drop with --eval-data"
            + (
                f"; {NNCF_ENGINE_HINT} (`cvdeploy doctor` names such layers)"
                if opts.backend == "onnxruntime" and opts.engine == "ort"
                else ""
            )
            + (
                "; only the raw-output cosine failed while detections agree: if the mAP "
                "on --eval-data is acceptable, --gate-cosine sets a lower (recorded) bound"
                if all("cosine" in f for f in parity.failures)
                else ""
            ),
        )
    return parity


def _save(
    b: Bundle,
    source: Artifact,
    cand: QuantizedModel,
    art_id: str,
    cal: CalibrationSet,
    parity: ParityResult,
    budget: dict[str, Any] | None,
    opts: QuantizeOptions,
) -> None:
    details = {"artifact": art_id, "source": source.id, "backend": opts.backend}
    with b.edit(action="quantize", details=details) as edit:
        d = edit.artifact_dir(art_id, replace=opts.overwrite)
        for f in cand.directory.iterdir():
            if f.is_file():
                shutil.copyfile(f, d / f.name)
        edit.add_artifact(
            artifact_id=art_id,
            format=cand.format,
            precision="int8",
            io=cand.io,
            main_file=cand.main_file,
            produced_by=Provenance(
                tool=f"quantize:{opts.backend}",
                source=source.id,
                options={
                    "backend": opts.backend,
                    **cal.record(),
                    **cand.facts,
                    "keep_float_patterns": list(opts.keep_float),
                    "kept_float": cand.kept_float,
                    "max_drop": opts.max_drop,
                    "budget": budget,
                },
            ),
            environment=fingerprint(),
            checks=[parity.to_check(source=source.id)],
        )


def _size_mb(a: Artifact) -> float:
    return round(a.size_bytes / 1e6, 3)


def _recorded_map(a: Artifact, data: Path) -> float | None:
    want = str(Path(data).resolve())
    for c in reversed(a.checks):
        if c.kind == "metrics" and c.data.get("data") == want:
            v = c.data.get("metrics", {}).get("map50_95")
            return float(v) if v is not None else None
    return None


def _finish(
    b: Bundle,
    source: Artifact,
    art_id: str,
    cand: QuantizedModel,
    cal: CalibrationSet,
    parity: ParityResult,
    budget: dict[str, Any] | None,
    notes: list[str],
    opts: QuantizeOptions,
    say: Log,
) -> QuantizeReport:

    maps: dict[str, float | None] = {"fp32": None, "int8": None}
    if opts.eval_data is not None:
        for key, aid in (("fp32", source.id), ("int8", art_id)):
            known = _recorded_map(b.artifact(aid), opts.eval_data)
            if known is not None:
                maps[key] = known
                continue
            say(f"evaluating {aid} on {opts.eval_data}")
            rep = evaluate_bundle(b, opts.eval_data, artifact=aid, progress=opts.progress)
            maps[key] = float(rep.metrics["map50_95"])
    lat: dict[str, Latency] = {}
    explanation = None
    speedup = None
    if opts.measure:
        pool = (
            list(EvalSet.load(opts.eval_data, b.spec.names).paths)
            if opts.eval_data
            else list(cal.paths)
        )[:LATENCY_IMAGES]
        images = pool
        say(
            f"timing {source.id} and {art_id} on {len(images)} images, alternating in "
            f"{SIDE_BY_SIDE_ROUNDS} rounds (warm-up + median)"
        )
        lat = measure_side_by_side(
            b, {"fp32": source.id, "int8": art_id}, images, threads=opts.threads
        )
        speedup = lat["fp32"].p50_ms / lat["int8"].p50_ms
        explanation = explain_artifact(
            b, art_id, images=images, source_id=source.id, latency=lat, threads=opts.threads
        )
    rows = []
    for key, aid in (("fp32", source.id), ("int8", art_id)):
        a = b.artifact(aid)
        la = lat.get(key)
        rows.append(
            Variant(
                artifact=aid,
                precision=a.precision,
                size_mb=_size_mb(a),
                map50_95=maps[key],
                p50_ms=la.p50_ms if la else None,
                inference_p50_ms=la.inference_p50_ms if la else None,
            )
        )
    drop = None
    if maps["fp32"] is not None and maps["int8"] is not None:
        drop = maps["fp32"] - maps["int8"]
    return QuantizeReport(
        bundle=str(b.path),
        artifact=art_id,
        source=source.id,
        backend=opts.backend,
        calibration=cal.record(),
        head_float=list(cand.facts.get("head_float", [])),
        kept_float=cand.kept_float,
        parity={
            "passed": parity.passed,
            "images": parity.images,
            "cosine": [o.cosine for o in parity.outputs],
            "match_fraction": parity.match_fraction,
            "score_diff_mean": parity.score_diff_mean,
        },
        rows=rows,
        map_drop=drop,
        budget=budget,
        speedup=speedup,
        explanation=explanation,
        notes=notes,
    )
