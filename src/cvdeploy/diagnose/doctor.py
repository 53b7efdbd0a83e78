"""``cvdeploy doctor``: why did accuracy drop after deployment? Ranked findings with evidence.

:func:`run_doctor` goes through the troubleshooting checklist, each step a section of the
:class:`~cvdeploy.diagnose.findings.DoctorReport`:

1. ``environment``: differences from where each artifact was made and measured;
2. ``integrity``: file checksums, and the parity gate re-run on the user's images;
3. ``accuracy``: every artifact evaluated with one protocol on the labelled set (``data``);
4. ``layers``: where an artifact's activations start to differ from its float source, and
   for INT8 which layers to keep in float (tried and measured);
5. ``preprocessing``: whether a variant of the spec's pipeline scores clearly better, on the
   labelled set and on production images, and what pipeline the production inputs show;
6. ``drift``: production images against the reference summary.

A section that cannot run (no labelled data, no production images, no float source) is
``skipped`` with the reason; the bundle is never changed (trials run on a copy).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvdeploy.bundle import Bundle
from cvdeploy.data.io import read_image
from cvdeploy.diagnose import checks
from cvdeploy.diagnose.controlled import ControlledReport, evaluate_all
from cvdeploy.diagnose.drift import (
    ALPHA,
    ImageSource,
    ReferenceSummary,
    collect,
    compare,
    dataset_images,
    load_reference,
    sources_from_paths,
    summarize_drift,
)
from cvdeploy.diagnose.findings import DoctorReport, Finding, Section
from cvdeploy.diagnose.labels import Labelled, load_labelled
from cvdeploy.diagnose.layerwise import (
    JUMP_SHARE_MIN,
    LOST_DB,
    SHARE_TOP,
    LayerReport,
    LayerStat,
    compare_layers,
    float_source,
    placebo_layers,
    try_keep_float,
)
from cvdeploy.diagnose.preprocess_audit import (
    FedReport,
    VariantReport,
    infer_fed_pipeline,
    score_variants,
)
from cvdeploy.diagnose.taps import tappable
from cvdeploy.errors import CvdeployError, InputError, UsageError
from cvdeploy.pipeline import Predictor

SECTIONS = ("environment", "integrity", "accuracy", "layers", "preprocessing", "drift")
SIGNIFICANT_DROP = 0.005
"""An artifact losing at least this much mAP50-95 (or top-1) against FP32 is looked into."""
Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class DoctorOptions:
    """What :func:`run_doctor` looks at.

    Attributes:
        data: A labelled set (as ``cvdeploy eval --data``).
        split: Its split.
        production: Production images as files (or logged model inputs, ``.npy``).
        production_sources: Production images already read (a request log).
        artifact: The artifact to diagnose in depth (layers, preprocessing, drift; default:
            the recommended or first runnable one, and for layers every artifact that lost
            accuracy).
        sections: Sections to run (default: all that the inputs allow). Naming ``layers``
            explicitly makes a missing float source an error instead of a skip.
        max_images: Most labelled images evaluated (``None``: all).
        layer_images: Images of the layer comparison.
        audit_images: Images of each pipeline-variant score.
        parity_images: Images of the parity re-run.
        keep_float_trial: Re-quantize with the suggested layers kept in float and measure.
        layer_shares: Measure layers' shares of the output error (one end-to-end run per
            measured layer on two images): the layers to keep in float are chosen by it
            (otherwise by their isolated error).
        keep_float_noise: Calibration samples the keep-float trial re-quantizes from
            (without the kept layers) to measure the calibration noise its result is judged
            against (0: none; each costs a quantization and an evaluation, about a minute
            on YOLOX-Nano). With any, a placebo is re-quantized too: as many of the
            healthiest layers kept in float instead (:func:`layerwise.placebo_layers`).
        share_layers: Whose shares are measured: the union of this many layers with the
            largest isolated error and as many with the largest SQNR drop (each costs a
            model compilation); ``None``: every layer (slow on real models: minutes).
        alpha: False-alarm rate of the drift tests.
        threads: Runtime threads.
        progress: Show progress bars.
    """

    data: Path | None = None
    split: str = "val"
    production: Path | None = None
    production_sources: Sequence[ImageSource] | None = None
    artifact: str | None = None
    sections: tuple[str, ...] | None = None
    max_images: int | None = None
    layer_images: int = 8
    audit_images: int = 16
    parity_images: int = 16
    keep_float_trial: bool = True
    layer_shares: bool = True
    share_layers: int | None = SHARE_TOP
    keep_float_noise: int = 0
    alpha: float = ALPHA
    threads: int | None = None
    progress: bool = True


@dataclass(slots=True)
class _Inputs:
    labelled: Labelled | None = None
    prod_sources: list[ImageSource] = field(default_factory=list)
    prod_tensors: list[np.ndarray] = field(default_factory=list)
    prod_tensor_names: list[str] = field(default_factory=list)
    label_images: list[np.ndarray] | None = None


def _spread(n: int, k: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return sorted({round(float(x)) for x in np.linspace(0, n - 1, k)})


def _read_production(folder: Path) -> tuple[list[ImageSource], list[np.ndarray], list[str]]:
    from cvdeploy.data import IMAGE_SUFFIXES

    if not folder.exists():
        raise InputError(f"production folder {folder} does not exist", hint="check --production")
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    imgs = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    npys = [p for p in files if p.suffix.lower() == ".npy"]
    if not imgs and not npys:
        raise InputError(
            f"no images (or .npy model inputs) in {folder}",
            hint="give a folder of production images, or `cvdeploy logs export` output",
        )
    from cvdeploy.data import image_size

    for p in imgs:  # an unreadable image is bad input, named before any work is done
        image_size(p)
    tensors = []
    for p in npys:
        try:
            tensors.append(np.load(p, allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read model input {p}: {exc}") from exc
    return sources_from_paths(imgs), tensors, [p.name for p in npys]


def _decode_sources(sources: Sequence[ImageSource]) -> list[np.ndarray]:
    out = []
    for s in sources:
        if s.image is not None:
            out.append(s.image)
        elif s.path is not None:
            out.append(read_image(s.path))
        elif s.data is not None:
            from cvdeploy.data.io import decode_image_bytes

            out.append(decode_image_bytes(s.data, source=s.id))
    return out


def run_doctor(
    bundle: Bundle | Path | str,
    options: DoctorOptions | None = None,
    *,
    log: Log | None = None,
) -> DoctorReport:
    """Run the checks and rank the findings (see the module docstring).

    Args:
        bundle: The bundle (loaded without stopping at the first altered file: the
            integrity section names them all).
        options: See :class:`DoctorOptions`.
        log: Called with one line per step.

    Raises:
        UsageError: Neither labelled data nor production images were given, an unknown
            section, or ``layers`` asked for explicitly on a bundle without a float source.
        InputError: Data that cannot be read (missing folder, no images, an image that does
            not decode).
    """
    t_start = time.perf_counter()
    opts = options or DoctorOptions()
    say: Log = log or (lambda _m: None)
    b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle, verify=False)
    if opts.sections is not None:
        unknown = [s for s in opts.sections if s not in SECTIONS]
        if unknown:
            raise UsageError(
                f"unknown section(s) {', '.join(unknown)}", hint=f"use {', '.join(SECTIONS)}"
            )
    wanted = tuple(opts.sections or SECTIONS)
    if opts.data is None and opts.production is None and not opts.production_sources:
        raise UsageError(
            "doctor needs images to look at: labelled data (--data) and/or production images "
            "(--production DIR or --logs LOGDIR)",
            hint="e.g. `cvdeploy doctor BUNDLE --data val.yaml --production prod-images/`",
        )
    if opts.artifact is not None:
        b.artifact(opts.artifact)  # unknown id: exit 2 with the list
    report = DoctorReport(
        bundle=str(b.path),
        name=b.name,
        inputs={
            "data": None if opts.data is None else str(opts.data),
            "production": None if opts.production is None else str(opts.production),
            "logged_requests": len(opts.production_sources or []),
            "artifact": opts.artifact,
        },
    )
    inp = _Inputs()
    if opts.data is not None:
        say(f"reading {opts.data}")
        inp.labelled = load_labelled(b, opts.data, split=opts.split)
        if len(inp.labelled) == 0:
            raise InputError(f"{opts.data} holds no image", hint="check --data and --split")
        if opts.max_images is not None and len(inp.labelled) > opts.max_images:
            keep = _spread(len(inp.labelled), opts.max_images)
            inp.labelled = _subset(inp.labelled, keep)
    if opts.production is not None:
        srcs, tens, names = _read_production(opts.production)
        inp.prod_sources.extend(srcs)
        inp.prod_tensors.extend(tens)
        inp.prod_tensor_names.extend(names)
    if opts.production_sources:
        inp.prod_sources.extend(opts.production_sources)
    report.inputs["production_images"] = len(inp.prod_sources)
    report.inputs["production_tensors"] = len(inp.prod_tensors)
    focus = opts.artifact or Predictor.from_bundle(b, None).artifact_id

    def run(name: str, fn: Callable[[], tuple[list[Finding], dict[str, Any]]]) -> None:
        if name not in wanted:
            return
        t0 = time.perf_counter()
        say(f"{name}...")
        try:
            found, data = fn()
        except InputError:
            raise  # bad input: exit 2, whatever the section
        except CvdeployError as exc:
            if isinstance(exc, UsageError) and opts.sections is not None:
                raise  # a section asked for by name that cannot run on this bundle
            report.sections[name] = Section(name, "failed", exc.message, time.perf_counter() - t0)
            say(f"  failed: {exc.message}")
            return
        if _SKIPPED in data:
            report.sections[name] = Section(name, "skipped", str(data[_SKIPPED]))
            say(f"  skipped: {data[_SKIPPED]}")
            return
        report.findings.extend(found)
        report.sections[name] = Section(name, "ran", "", time.perf_counter() - t0, data)

    run("environment", lambda: checks.environment_findings(b))
    run("integrity", lambda: _integrity(b, inp, opts))
    controlled: dict[str, ControlledReport] = {}
    run("accuracy", lambda: _accuracy(b, inp, opts, controlled))
    run("layers", lambda: _layers(b, inp, opts, controlled.get("report"), focus, say))
    refs: dict[str, ReferenceSummary | None] = {}
    run("preprocessing", lambda: _preprocessing(b, inp, opts, focus, refs))
    run("drift", lambda: _drift(b, inp, opts, focus, refs))
    report.inputs["artifact_examined"] = focus
    report.extras["names"] = list(b.spec.names)
    if "report" in controlled:
        report.extras["results"] = controlled["report"].results
    report.seconds = time.perf_counter() - t_start
    return report


_SKIPPED = "__skipped__"


def _skip(reason: str) -> tuple[list[Finding], dict[str, Any]]:
    """What a section that cannot run returns (it is then listed as skipped, with why)."""
    return [], {_SKIPPED: reason}


def _subset(lab: Labelled, keep: Sequence[int]) -> Labelled:
    return Labelled(
        task=lab.task,
        name=lab.name,
        paths=[lab.paths[i] for i in keep],
        image_ids=[lab.image_ids[i] for i in keep],
        boxes=[lab.boxes[i] for i in keep] if lab.boxes else [],
        classes=[lab.classes[i] for i in keep] if lab.classes else [],
        labels=[lab.labels[i] for i in keep] if lab.labels else [],
        dataset=lab.dataset,
    )


def _some_images(inp: _Inputs, k: int) -> list[np.ndarray]:
    if inp.labelled is not None:
        return [read_image(inp.labelled.paths[i]) for i in _spread(len(inp.labelled), k)]
    srcs = [inp.prod_sources[i] for i in _spread(len(inp.prod_sources), k)]
    return _decode_sources(srcs)


# sections ----------------------------------------------------------------------------------------
def _integrity(
    b: Bundle, inp: _Inputs, opts: DoctorOptions
) -> tuple[list[Finding], dict[str, Any]]:
    found, files = checks.file_findings(b)
    bad = {p["owner"] for p in files["problems"]}
    data: dict[str, Any] = {"files": files, "parity": []}
    images = _some_images(inp, opts.parity_images) if (inp.labelled or inp.prod_sources) else []
    if images:
        pf, rows = checks.parity_findings(b, images, skip=sorted(bad), threads=opts.threads)
        found.extend(pf)
        data["parity"] = rows
    return found, data


def _accuracy(
    b: Bundle, inp: _Inputs, opts: DoctorOptions, out: dict[str, ControlledReport]
) -> tuple[list[Finding], dict[str, Any]]:
    if inp.labelled is None:
        return _skip("no labelled data (--data)")
    rep = evaluate_all(b, inp.labelled, progress=opts.progress, threads=opts.threads)
    out["report"] = rep
    found: list[Finding] = []
    names = b.spec.names
    ref = rep.row(rep.reference) if rep.reference else None
    for row in rep.rows:
        if row.status != "ok" or ref is None or row.artifact == rep.reference:
            continue
        if row.delta is None or row.delta > -SIGNIFICANT_DROP:
            continue
        drop = -row.delta
        worst = list(row.per_class_delta.items())[:3]
        metric = "mAP50-95" if rep.metric == "map50_95" else "top-1"
        evidence = [
            f"{metric} {row.score:.4f} against {ref.score:.4f} for {rep.reference} "
            f"(-{drop:.4f}) on {rep.images} images of {rep.dataset}, one protocol",
        ]
        if rep.metric == "map50_95":
            evidence.append(
                f"at conf {b.spec.decoder.conf}: TP {row.tp} ({row.tp - ref.tp:+d}), FP {row.fp} "
                f"({row.fp - ref.fp:+d}), missed {row.fn} ({row.fn - ref.fn:+d})"
            )
        if worst:
            evidence.append(
                "largest per-class drops: " + ", ".join(f"{k} {v:+.3f}" for k, v in worst)
            )
        if row.agreement is not None:
            evidence.append(
                f"its detections agree with {rep.reference}'s at {row.agreement:.0%} (F1)"
            )
        found.append(
            Finding(
                kind="accuracy",
                severity="critical" if drop >= 0.05 else "warning",
                title=f"{row.artifact} loses {drop:.4f} {metric} against {rep.reference}",
                evidence=evidence,
                fix="see the layer findings for where it diverges; for INT8, keep the named "
                "layers in float (`cvdeploy quantize --keep-float`) or calibrate on more "
                "representative images",
                artifact=row.artifact,
                impact=drop,
                data={"row": row.artifact},
            )
        )
    _ = names
    return found, _controlled_dict(rep)


def _controlled_dict(rep: ControlledReport) -> dict[str, Any]:
    from dataclasses import asdict

    return {
        "dataset": rep.dataset,
        "images": rep.images,
        "reference": rep.reference,
        "metric": rep.metric,
        "rows": [asdict(r) for r in rep.rows],
        "gallery": rep.gallery,
    }


def _layer_targets(
    b: Bundle, rep: ControlledReport | None, opts: DoctorOptions, focus: str
) -> list[str]:
    if opts.artifact is not None:
        return [opts.artifact]
    arts = [a for a in b.manifest.artifacts if tappable(a) and a.precision != "fp32"]
    if rep is not None:
        lost = [
            r.artifact
            for r in sorted(rep.rows, key=lambda r: r.delta if r.delta is not None else 0)
            if r.delta is not None and r.delta <= -SIGNIFICANT_DROP
        ]
        arts = [a for a in arts if a.id in lost]
    ids = [a.id for a in arts]
    if focus in ids:
        ids.remove(focus)
        ids.insert(0, focus)
    return ids[:2]


def _layers(
    b: Bundle,
    inp: _Inputs,
    opts: DoctorOptions,
    rep: ControlledReport | None,
    focus: str,
    say: Log,
) -> tuple[list[Finding], dict[str, Any]]:
    explicit = opts.sections is not None and "layers" in opts.sections
    targets = _layer_targets(b, rep, opts, focus)
    if not targets:
        return _skip(
            "no reduced-precision ONNX/OpenVINO artifact lost accuracy"
            if rep is not None
            else "no reduced-precision ONNX/OpenVINO artifact"
        )
    images = _some_images(inp, opts.layer_images)
    found: list[Finding] = []
    data: dict[str, Any] = {"reports": []}
    for aid in targets:
        try:
            src = float_source(b, aid)
        except UsageError:
            if explicit:
                raise
            return _skip(f"{aid}: no FP32 ONNX/OpenVINO artifact to compare with")
        say(f"  comparing {aid} with {src.id} layer by layer on {len(images)} images")
        lr = compare_layers(
            b,
            aid,
            images,
            source=src.id,
            threads=opts.threads,
            progress=opts.progress,
            attribute=2 if opts.layer_shares else 0,
            share_top=opts.share_layers,
        )
        if (
            opts.keep_float_trial
            and lr.keep_float
            and inp.labelled is not None
            and inp.labelled.task == "detect"
            and rep is not None
            and (row := rep.row(aid)) is not None
            and row.delta is not None
            and row.delta <= -SIGNIFICANT_DROP
            and b.artifact(aid).produced_by.tool.startswith("quantize:")
            and opts.data is not None
        ):
            say(f"  re-quantizing {aid} with {len(lr.keep_float)} layer(s) kept in float")
            try:
                lr.trial = try_keep_float(
                    b,
                    aid,
                    lr.keep_float,
                    opts.data,
                    noise=opts.keep_float_noise,
                    placebo=placebo_layers(lr.layers, lr.keep_float)
                    if opts.keep_float_noise > 0
                    else (),
                    known=None  # the table's scores, when it saw the trial's images
                    if opts.max_images is not None or opts.split != "val"
                    else {r.artifact: r.score for r in rep.rows if r.score is not None},
                    progress=opts.progress,
                )
            except CvdeployError as exc:
                lr.trial = {"error": exc.message}
        data["reports"].append(lr.to_dict())
        found.extend(_layer_findings(lr))
    return found, data


def _lost_channels(st: LayerStat) -> str:
    """Evidence: the layer's error sits in a few output channels."""
    shown = ", ".join(str(c) for c in st.lost_channels[:8])
    more = len(st.lost_channels) - 8
    return (
        f"{st.layer}: {len(st.lost_channels)} of {st.channels} output channels are lost when it "
        f"is fed the float activations (SQNR under {LOST_DB:.0f} dB and as far below the "
        f"median channel: channel{'s' if len(st.lost_channels) > 1 else ''} "
        f"{shown}{f' and {more} more' if more > 0 else ''}; the median channel "
        f"{st.channel_median_db:.1f} dB): the error sits in a few channels, as when a "
        "per-tensor input scale rounds small channels to zero and the layer reads each "
        "channel alone (depthwise); per-channel activation quantization avoids it too "
        "(`--engine nncf`, or `--backend openvino`)"
    )


_NOT_FELT_FIX = (
    "nothing for this layer's sake; if accuracy falls short, the layers whose error reaches "
    "the output are the ones to keep in float (the keep-float finding)"
)


def _unfelt(group: list[LayerStat]) -> list[str]:
    """Evidence that a jump does not reach the output (empty: it does, or not measured).

    A layer can sit under the jump threshold and still not matter: a coarse layer whose
    error the layers after it absorb (the demo's healthy INT8 has one at 11.9 dB whose own
    error accounts for none of the output's). A jump is a warning only when its own error
    is at least :data:`JUMP_SHARE_MIN` of the output's, or when that was not measured.
    """
    shares = [s.output_share for s in group]
    if not group or any(x is None for x in shares):
        return []
    total = sum(x for x in shares if x is not None)
    if total >= JUMP_SHARE_MIN:
        return []
    who = f"{group[0].layer}'s" if len(group) == 1 else f"these {len(group)} layers'"
    return [
        f"taking {who} own error out changes the output error by {-total:+.0%}: the output "
        f"does not feel it (under {JUMP_SHARE_MIN:.0%}), so the model is coarse there, not "
        "broken; reported, not a warning"
    ]


def _layer_findings(lr: LayerReport) -> list[Finding]:
    out: list[Finding] = []
    local = [s.local_db for s in lr.layers]
    med = float(np.median(local)) if local else math.nan
    if lr.first_jump is not None and lr.jump_quantizer is not None:
        group = [s for k in lr.jump_layers if (s := lr.layer(k)) is not None]
        names = ", ".join(f"{s.layer} ({s.local_db:.1f} dB)" for s in group)
        unfelt = _unfelt(group)
        out.append(
            Finding(
                kind="layers",
                severity="info" if unfelt else "warning",
                title=f"{lr.artifact}: the error jumps at quantizer {lr.jump_quantizer}, the input "
                f"of {len(group)} layers",
                evidence=[
                    f"fed the float source's activations, every layer reading "
                    f"{lr.jump_quantizer}'s output is an outlier: {names} (the median layer: "
                    f"{med:.1f} dB; threshold {lr.threshold_db:.1f} dB): the fault is in "
                    "the quantizer they share (its range), not in one layer's weights",
                    *unfelt,
                    f"compared with {lr.source} on {lr.images} images, {len(lr.layers)} layers "
                    "matched by name",
                ],
                fix=_NOT_FELT_FIX
                if unfelt
                else f"check the calibration range of {lr.jump_quantizer} (calibration images "
                "like the production ones, --method percentile); or keep the layers it feeds "
                "in float: `cvdeploy quantize BUNDLE --calib DATA --overwrite "
                + " ".join(f"--keep-float '{k}'" for k in lr.jump_layers)
                + "`",
                artifact=lr.artifact,
                data={
                    "layer": lr.first_jump,
                    "quantizer": lr.jump_quantizer,
                    "layers": lr.jump_layers,
                    "local_db": {s.layer: s.local_db for s in group},
                },
            )
        )
    elif lr.first_jump is not None:
        st = lr.layer(lr.first_jump)
        assert st is not None
        unfelt = _unfelt([st])
        out.append(
            Finding(
                kind="layers",
                severity="info" if unfelt else "warning",
                title=f"{lr.artifact}: the error jumps at layer {lr.first_jump} ({st.op_type})",
                evidence=[
                    f"fed the float source's activations, {lr.first_jump} alone has an SQNR of "
                    f"{st.local_db:.1f} dB (the median layer: {med:.1f} dB; threshold "
                    f"{lr.threshold_db:.1f} dB), cosine {st.cosine:.4f} end to end",
                    *([_lost_channels(st)] if st.lost_channels else []),
                    *unfelt,
                    f"compared with {lr.source} on {lr.images} images, {len(lr.layers)} layers "
                    "matched by name",
                ],
                fix=_NOT_FELT_FIX
                if unfelt
                else f"check how {lr.first_jump} was converted or quantized (its weights, its "
                "quantization scale); keep it in float: `cvdeploy quantize BUNDLE --calib DATA "
                f"--keep-float '{lr.first_jump}' --overwrite`",
                artifact=lr.artifact,
                data={"layer": lr.first_jump, "local_db": st.local_db},
            )
        )
    if lr.keep_float:
        t = lr.trial or {}
        shares = any(s.output_share is not None for s in lr.layers)
        evidence = [
            (
                "taking their own error out removes the most output error: "
                + ", ".join(
                    f"{k} ({s.output_share:.0%})"
                    for k in lr.keep_float
                    if (s := lr.layer(k)) and s.output_share is not None
                )
                if shares
                else f"the {len(lr.keep_float)} layer(s) with the largest isolated error: "
                + ", ".join(
                    f"{k} ({s.local_db:.1f} dB)" for k in lr.keep_float if (s := lr.layer(k))
                )
            ),
            *(
                _lost_channels(s)
                for k in lr.keep_float
                if (s := lr.layer(k)) is not None and s.lost_channels
            ),
        ]
        rec = t.get("recovered")
        severity = "info"
        if "map_keep" in t:
            evidence.append(
                f"re-quantized with them in float: mAP50-95 {t['map_int8']:.4f} -> "
                f"{t['map_keep']:.4f} (FP32 {t['map_fp32']:.4f}): "
                + (f"{rec:.0%} of the gap closed" if rec is not None else "no gap to close")
                + (
                    ""
                    if t.get("keep_passes_gate", True)
                    else "; the INT8 integrity gate still refuses that artifact (measured on "
                    "a scratch copy): keep more layers in float or use another engine"
                )
            )
            noisy = False
            if "noise_sd" in t:
                noisy = bool(t["within_noise"])
                evidence.append(
                    f"calibration noise: re-quantized from {len(t['noise_maps'])} other "
                    "calibration sample(s), mAP50-95 "
                    + ", ".join(f"{m:.4f}" for m in t["noise_maps"])
                    + f" (sd {t['noise_sd']:.4f}): the keep-float change of "
                    f"{t['map_keep'] - t['map_int8']:+.4f} is "
                    + ("within" if noisy else "beyond")
                    + " two standard deviations"
                    + (
                        "; the whole INT8 gap is within them too: no layer is to blame, "
                        "the loss is calibration noise (calibrate on more images)"
                        if t.get("gap_within_noise")
                        else ""
                    )
                )
            if "map_placebo" in t:
                moved = t["map_placebo"] - t["map_int8"]
                noisy = noisy or not t["beyond_placebo"]
                evidence.append(
                    f"placebo: keeping {len(t['placebo_keep'])} healthy layer(s) in float "
                    f"instead ({', '.join(t['placebo_keep'])}) moves mAP50-95 by {moved:+.4f}: "
                    "the keep-float change is "
                    + ("larger" if t["beyond_placebo"] else "no larger")
                    + " than what changing what is quantized does by itself"
                )
            severity = "warning" if rec is not None and rec >= 0.5 and not noisy else "info"
        elif "error" in t:
            evidence.append(f"the re-quantization trial failed: {t['error']}")
        out.append(
            Finding(
                kind="layers",
                severity=severity,  # type: ignore[arg-type]
                title=f"{lr.artifact}: keep {len(lr.keep_float)} layer(s) in float"
                + (f" to recover {rec:.0%} of the INT8 loss" if rec is not None else ""),
                evidence=evidence,
                fix=str(t.get("command"))
                if t.get("command")
                else "cvdeploy quantize BUNDLE --calib DATA --overwrite "
                + " ".join(f"--keep-float '{k}'" for k in lr.keep_float),
                artifact=lr.artifact,
                impact=(t["map_keep"] - t["map_int8"]) if "map_keep" in t else None,
                data={"keep_float": lr.keep_float, "trial": t},
            )
        )
    return out


def _reference(
    b: Bundle,
    inp: _Inputs,
    opts: DoctorOptions,
    focus: str,
    cache: dict[str, ReferenceSummary | None],
) -> ReferenceSummary | None:
    if "ref" in cache:
        return cache["ref"]
    ref = load_reference(b, focus)
    if ref is None and opts.data is not None:
        paths = dataset_images(b, opts.data, split=opts.split)
        idx = _spread(len(paths), 300)
        table, used = collect(
            b,
            sources_from_paths([paths[i] for i in idx]),
            artifact=focus,
            progress=opts.progress,
            threads=opts.threads,
            label="reference (from --data)",
        )
        ref = ReferenceSummary.from_table(
            table, {**used, "dataset": str(opts.data), "recorded": False}
        )
    cache["ref"] = ref
    return ref


def _preprocessing(
    b: Bundle,
    inp: _Inputs,
    opts: DoctorOptions,
    focus: str,
    cache: dict[str, ReferenceSummary | None],
) -> tuple[list[Finding], dict[str, Any]]:
    if inp.labelled is None and not inp.prod_sources and not inp.prod_tensors:
        return _skip("no images")
    found: list[Finding] = []
    data: dict[str, Any] = {}
    pred = Predictor.from_bundle(b, focus, batch=1)
    spec = b.spec
    with pred:
        lab_rep: VariantReport | None = None
        prod_rep: VariantReport | None = None
        if inp.labelled is not None:
            idx = _spread(len(inp.labelled), opts.audit_images)
            imgs = [read_image(inp.labelled.paths[i]) for i in idx]
            lab_rep = score_variants(
                pred, imgs, labels=inp.labelled, label_index=idx, progress=opts.progress
            )
            data["labelled"] = lab_rep.to_dict()
        if inp.prod_sources and inp.labelled is None:
            # without labels, the model's confidence is the only score (the labelled set,
            # when given, is the authority on the spec; the images as sent are read below)
            srcs = [inp.prod_sources[i] for i in _spread(len(inp.prod_sources), opts.audit_images)]
            prod_rep = score_variants(pred, _decode_sources(srcs), progress=opts.progress)
            data["production"] = prod_rep.to_dict()
        ref = None
        try:
            ref = _reference(b, inp, opts, focus, cache)
        except CvdeployError:
            ref = None
        means = aspects = None
        if ref is not None:
            t = ref.table
            means = np.stack([t.column("mean_b"), t.column("mean_g"), t.column("mean_r")], 1)
            aspects = t.column("aspect")
        fed: list[FedReport] = []
        if inp.prod_tensors:
            fed.append(
                infer_fed_pipeline(
                    inp.prod_tensors[:64],
                    spec,
                    kind="tensor",
                    reference_means=means,
                    reference_aspects=aspects,
                    pred=pred,
                )
            )
        if inp.prod_sources:
            srcs = [inp.prod_sources[i] for i in _spread(len(inp.prod_sources), 32)]
            fed.append(
                infer_fed_pipeline(
                    _decode_sources(srcs),
                    spec,
                    kind="image",
                    reference_means=means,
                    reference_aspects=aspects,
                    pred=pred,
                )
            )
        data["fed"] = [f.to_dict() for f in fed]
    metric_name = {"f1": "F1 per image", "top1": "top-1", "confidence": "confidence"}
    if lab_rep is not None and lab_rep.winner:
        found.append(_variant_finding(lab_rep, spec, where="labelled", names=metric_name))
    if (
        prod_rep is not None
        and prod_rep.winner
        and (lab_rep is None or lab_rep.winner != prod_rep.winner)
    ):
        found.append(
            _variant_finding(
                prod_rep,
                spec,
                where="production" if lab_rep is not None else "production-only",
                names=metric_name,
            )
        )
    for f in fed:
        diffs = f.differences
        if not diffs:
            continue
        what = "model inputs" if f.kind == "tensor" else "images"
        found.append(
            Finding(
                kind="preprocessing",
                severity="critical",
                title=f"the production {what} were prepared differently from the spec: "
                + ", ".join(f"{d.field} {_show(d.fed)} (spec: {_show(d.spec)})" for d in diffs),
                evidence=[f"{d.field}: {d.evidence}" for d in diffs]
                + [f"from {f.inputs} logged {what}"],
                fix="fix the production pipeline (the spec is what the model was validated "
                "with): " + "; ".join(_fed_fix(d.field, d.spec, f.kind) for d in diffs),
                data=f.to_dict(),
            )
        )
    return found, data


def _show(v: Any) -> str:
    if isinstance(v, float):
        return "1/255" if abs(v - 1 / 255) < 1e-9 else f"{v:g}"
    return str(v)


def _fed_fix(field_name: str, spec_value: Any, kind: str) -> str:
    if kind == "image":
        return {
            "color": "send the images with their channels as the camera/file has them (a "
            "BGR/RGB swap happens before sending)",
            "resize": "send the original images; the server resizes them as the spec says",
            "align": "send the original images",
            "pad_value": "send the original images",
        }.get(field_name, "send the original images")
    return {
        "color": f"feed {spec_value} channel order",
        "scale": f"multiply pixels by {_show(spec_value)}",
        "mean_std": "normalise with the spec's mean/std",
        "resize": f"resize with {spec_value}",
        "align": f"place the resized image at the {spec_value}",
        "pad_value": f"pad with grey {spec_value}",
    }.get(field_name, f"use {field_name}={spec_value}")


def _variant_finding(
    rep: VariantReport, spec: Any, *, where: str, names: dict[str, str]
) -> Finding:
    last = rep.rounds[len(rep.winner) - 1] if rep.winner else []
    best = max((v for v in last if v.clearly_better), key=lambda v: v.mean)
    changes = ", ".join(f"{k}={_show(v)}" for k, v in rep.winner)
    current = ", ".join(f"{k}={_show(_spec_value(spec, k))}" for k, _ in rep.winner)
    metric = names.get(rep.metric, rep.metric)
    evidence = [
        f"on {rep.images} {'labelled' if where == 'labelled' else 'production'} images: "
        f"{metric} {rep.spec_score:.3f} with the spec, {rep.best_score:.3f} with {changes} "
        f"(one-sided Wilcoxon p={best.p_adjusted:.2g}, Holm-adjusted)",
    ]
    if where == "labelled":
        title = (
            f"the spec's preprocessing looks wrong: {changes} scores clearly better "
            f"(spec: {current})"
        )
        fix = (
            "the model was trained with " + changes + ": correct the bundle's spec (re-import "
            "with the right flags, e.g. `cvdeploy import MODEL --out BUNDLE "
            + " ".join(_import_flag(k, v) for k, v in rep.winner)
            + " --overwrite`) and re-run eval"
        )
    elif where == "production":
        title = (
            f"production images arrive differently: on them {changes} scores clearly better, "
            "while on the labelled set the spec does"
        )
        fix = (
            "the production pipeline is wrong, not the spec: see what the production images "
            "show below"
        )
    else:
        title = f"on production images {changes} scores clearly better than the spec ({current})"
        fix = (
            "either the spec is wrong (check it on labelled data: `cvdeploy doctor BUNDLE --data "
            "VAL`) or the production images arrive differently"
        )
    if where != "labelled":
        evidence.append(
            "scored by the model's own confidence (no labels): a wrong pipeline can also make "
            "a model confidently wrong, so confirm on labelled images"
        )
    return Finding(
        kind="preprocessing",
        severity="critical" if where == "labelled" else "warning",
        title=title,
        evidence=evidence,
        fix=fix,
        impact=rep.best_score - rep.spec_score if rep.metric != "confidence" else None,
        data={"winner": rep.winner, "where": where},
    )


def _spec_value(spec: Any, key: str) -> Any:
    pp = spec.preprocess
    if key == "mean_std":
        return "none" if all(m == 0 for m in pp.mean) else "custom"
    if key == "interp":
        return "linear"
    return getattr(pp, key, None)


def _import_flag(k: str, v: Any) -> str:
    if k == "pad_value":
        return f"--pad {v}"
    if k == "mean_std":
        return (
            "--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225"
            if v == "imagenet"
            else "--mean 0,0,0 --std 1,1,1"
        )
    if k == "interp":
        return "(interpolation: resize with INTER_" + str(v).upper() + " before sending)"
    return f"--{k} {_show(v)}"


def _drift(
    b: Bundle,
    inp: _Inputs,
    opts: DoctorOptions,
    focus: str,
    cache: dict[str, ReferenceSummary | None],
) -> tuple[list[Finding], dict[str, Any]]:
    if not inp.prod_sources:
        return _skip("no production images (--production or --logs)")
    ref = _reference(b, inp, opts, focus, cache)
    if ref is None:
        return _skip(
            "no drift reference: record one with `cvdeploy eval BUNDLE --data VAL`, or give --data"
        )
    window, _ = collect(
        b,
        inp.prod_sources,
        artifact=ref.meta.get("artifact") or focus,
        embeddings=ref.has_embeddings,
        embedding_layer=ref.meta.get("embedding_layer"),
        progress=opts.progress,
        threads=opts.threads,
        label="production images",
    )
    dr = compare(ref, window, alpha=opts.alpha)
    data = {
        "report": dr.to_dict(),
        "reference": {k: v for k, v in ref.meta.items() if k != "environment"},
        "ref_values": {n: ref.table.column(n).tolist() for n in ref.table.names},
        "window_values": {n: window.column(n).tolist() for n in window.names},
    }
    found: list[Finding] = []
    if dr.verdict == "drift":
        found.append(
            Finding(
                kind="drift",
                severity="warning",
                title=f"production images have drifted from the reference ({len(dr.drifted)} "
                f"test(s) at a {dr.alpha:.0%} false-alarm rate, p={dr.p_value:.2g})",
                evidence=[
                    *summarize_drift(dr, b.spec.names)[:8],
                    f"{dr.n_window} production images against {dr.n_ref} reference images",
                ],
                fix="label a sample of production images and evaluate on them (`cvdeploy eval "
                "BUNDLE --data PROD`); if accuracy dropped, add such images to training; check "
                "camera settings (exposure, focus, compression) for the statistics that moved",
                data={"drifted": dr.drifted, "p_value": dr.p_value},
            )
        )
    elif dr.verdict == "too small to tell":
        found.append(
            Finding(
                kind="drift",
                severity="info",
                title=f"{dr.n_window} production images are too few to tell whether they drifted",
                evidence=[
                    f"the smallest shift this window can detect is a KS distance of "
                    f"{dr.min_detectable_ks:.2f}; "
                    + (
                        f"a moderate shift needs about {dr.window_needed} images"
                        if dr.window_needed
                        else f"the reference itself ({dr.n_ref} images) is too small: record "
                        "one of more images (`cvdeploy eval BUNDLE --data VAL`)"
                    )
                ],
                fix="collect more production images (e.g. `cvdeploy serve --sample-rate 0.05 "
                "--log-dir LOGS`, then `cvdeploy doctor BUNDLE --logs LOGS`)",
            )
        )
    return found, data
