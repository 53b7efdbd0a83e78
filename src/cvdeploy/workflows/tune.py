"""``cvdeploy tune``: the fastest deployment of a bundle on this machine within an accuracy floor.

1. **Candidate artifacts**: every artifact of the requested formats x precisions; the missing
   ones are made through the public stages (:func:`cvdeploy.export.export_model` for
   FP32/FP16, :func:`cvdeploy.optimize.quantize_bundle` for INT8, calibrating on the
   dataset's images), each with its own parity gate. A candidate that cannot be made is a
   ``failed`` row, never fatal.
2. **Candidate settings** per artifact (:mod:`cvdeploy.workflows.tune_space`).
3. **Accuracy** (mAP50-95, or top-1 for classifiers) on the dataset with
   :func:`~cvdeploy.verify.evaluate.evaluate_bundle`, once per artifact (and OpenVINO
   inference precision hint): threads, streams, graph optimisation and execution mode do not
   change the numbers. The floor is ``--min-map`` or the FP32 reference minus ``--max-drop``
   (default 0.01). A candidate below it is ``too-inaccurate`` and is not timed.
4. **Latency** end to end with :func:`~cvdeploy.bench.harness.bench_artifact` (file read,
   preprocessing, inference, decoding + NMS; warm-up excluded), ranked by p50 (``latency``)
   or by images/s with several requests in flight (``throughput``).
5. **Recording**: all of this runs on a hard-linked working copy of the bundle; the bundle
   itself changes in one atomic :meth:`~cvdeploy.bundle.Bundle.edit` at the end (new
   artifacts, their metrics checks, and ``recommended`` = artifact + runner options), which
   :meth:`~cvdeploy.pipeline.predictor.Predictor.from_bundle` and so eval, bench and serve use
   by default. When no candidate keeps the floor nothing is recorded.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cvdeploy.bench import BenchConfig, bench_artifact, not_applicable
from cvdeploy.bundle import Artifact, Bundle, Check, RuntimeConfig, now
from cvdeploy.errors import CheckFailed, CvdeployError, DatasetError, UsageError
from cvdeploy.progress import track
from cvdeploy.workflows.tune_report import (
    Accuracy,
    Candidate,
    EvaluateFn,
    Log,
    MeasureFn,
    Measurement,
    Recommendation,
    TuneOptions,
    TuneReport,
    finite,
)
from cvdeploy.workflows.tune_space import (
    QUANTIZE_BACKENDS,
    ArtifactPlan,
    Settings,
    default_threads,
    plan_artifacts,
    runtime_available,
    settings_grid,
)

REFERENCE_ORDER = ("onnx", "openvino", "torch", "tflite", "tensorrt")
"""Formats searched, in order, for the FP32 reference artifact."""


# default measurement and evaluation ---------------------------------------------------------
def bench_measure(
    bundle: Bundle, artifact_id: str, settings: Settings, images: Sequence[Path], opts: TuneOptions
) -> Measurement:
    """Time one candidate with the bench harness (cold start and warm-up excluded)."""
    conc = 1
    if opts.target == "throughput":
        conc = opts.concurrency or os.cpu_count() or 1
    cfg = BenchConfig(
        batch=1, imgsz=opts.imgsz, concurrency=conc, warmup=opts.warmup, iters=opts.iters
    )
    r = bench_artifact(
        bundle, artifact_id, images, config=cfg, options=settings.options(), environment={}
    )
    return Measurement(r.e2e_ms, r.throughput_ips, finite(r.pre_post_share))


def eval_accuracy(
    bundle: Bundle, artifact_id: str, settings: Settings, data: Path, opts: TuneOptions
) -> Accuracy:
    """Evaluate one artifact on the dataset (nothing recorded; ``tune`` records at the end)."""
    from cvdeploy.verify.evaluate import Protocol, evaluate_bundle

    rep = evaluate_bundle(
        bundle,
        data,
        artifact=artifact_id,
        split=opts.split,
        protocol=Protocol(imgsz=opts.imgsz),
        options=settings.options(),
        record=False,
        progress=False,
    )
    key = "top1" if bundle.spec.task == "classify" else "map50_95"
    value = rep.metrics.get(key)
    if not isinstance(value, int | float):
        raise DatasetError(f"the evaluation of {artifact_id} produced no {key}")
    return Accuracy(float(value), rep.metrics, rep.dataset, rep.images, rep.protocol)


# the search ---------------------------------------------------------------------------------
def _dataset_images(bundle: Bundle, data: Path, split: str, limit: int) -> list[Path]:
    if bundle.spec.task == "classify":
        from cvdeploy.data.folder import load_classification_dataset

        paths = [it.path for it in load_classification_dataset(data, split=split).items]
    else:
        from cvdeploy.data import load_detection_dataset

        paths = [it.path for it in load_detection_dataset(data, split=split).items]
    if not paths:
        raise DatasetError(f"{data} has no {split} images", hint="pass --data with images")
    if len(paths) > limit:
        step = len(paths) / limit
        paths = [paths[int(i * step)] for i in range(limit)]
    return paths


def _link(src: str, dst: str) -> None:
    """Hard-link a file (copy across file systems). Bundle edits never write through links."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _reference(bundle: Bundle) -> Artifact:
    for fmt in REFERENCE_ORDER:
        for a in bundle.manifest.artifacts:
            if a.format == fmt and a.precision == "fp32" and runtime_available(fmt) is None:
                return a
    raise UsageError(
        f"bundle {bundle.name!r} has no FP32 artifact that runs here to measure the "
        "reference accuracy",
        hint="give an absolute floor with --min-map, or export an FP32 artifact first",
    )


def _reference_settings(ref: Artifact) -> Settings:
    """Default settings: the runner computes the FP32 reference in FP32 (pinned)."""
    return Settings()


def _make(
    work: Bundle, plan: ArtifactPlan, data: Path, opts: TuneOptions, log: Log
) -> tuple[Bundle, list[str]]:
    """Make a missing artifact in the working copy; return the reloaded copy and new ids."""
    before = {a.id for a in work.manifest.artifacts}
    if plan.make == "quantize":
        from cvdeploy.optimize import QuantizeOptions, quantize_bundle

        log(f"quantizing {plan.format}:int8 (calibration: {opts.calib or data})")
        quantize_bundle(
            work,
            opts.calib or data,
            options=QuantizeOptions(
                backend=QUANTIZE_BACKENDS[plan.format],
                force=opts.calib_force,
                gate_cosine=opts.gate_cosine,
                measure=False,
                progress=False,
            ),
            log=lambda m: log(m.replace(str(work.path), "the working copy")),
        )
    else:
        from cvdeploy.export import ExportOptions, export_model

        log(f"exporting {plan.format}:{plan.precision}")
        rep = export_model(
            work.path,
            formats=[f"{plan.format}:{plan.precision}"],
            options=ExportOptions(imgsz=opts.imgsz),
            data=data,
        )
        bad = [o for o in rep.outcomes if o.status != "added"]
        if bad:
            raise UsageError("; ".join(f"{o.artifact_id}: {o.status} {o.message}" for o in bad))
    work = Bundle.load(work.path, verify=False)
    new = [a.id for a in work.manifest.artifacts if a.id not in before]
    return work, new


def _out_of_time(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _error_text(exc: BaseException) -> str:
    """The reason, without the stage's hint (which names the stage command's own flags)."""
    if isinstance(exc, CvdeployError):
        return exc.message.splitlines()[0]
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _fix_for(plan: ArtifactPlan, exc: BaseException) -> str:
    """What the user can do about a candidate that could not be made, in tune's terms."""
    if plan.make == "quantize" and "calibration image(s) from" in _error_text(exc):
        return (
            "calibrate on 100 images or more (--data or --calib), or pass --force to accept fewer"
        )
    if plan.make == "quantize":
        backend = QUANTIZE_BACKENDS.get(plan.format, plan.format)
        engine = " --engine nncf" if backend == "onnxruntime" else ""
        return (
            f"quantize it yourself with the options that keep it accurate (`cvdeploy quantize "
            f"BUNDLE --data DATA --backend {backend}{engine}`, or --method entropy, "
            "--keep-float NODES), then run tune again: tune tries the artifacts the bundle has"
        )
    if plan.precision == "int8-bf16":
        return "it is made from the INT8 artifact: make that one first (see the INT8 row)"
    if isinstance(exc, CheckFailed):
        return (
            "the exported artifact does not compute what its source computes on this machine: "
            "drop this precision from --precisions, or report the operator"
        )
    if isinstance(exc, CvdeployError) and exc.exit_code == 2:
        return f"tune cannot make {plan.format}:{plan.precision} here; leave it out of --precisions"
    return "an unexpected error: run the stage alone to see it in full, and report it"


def tune_bundle(
    bundle: Bundle | Path | str,
    data: Path | str,
    *,
    options: TuneOptions | None = None,
    measure: MeasureFn | None = None,
    evaluate: EvaluateFn | None = None,
    log: Log | None = None,
) -> TuneReport:
    """Find the fastest configuration that keeps the accuracy floor and record it.

    Args:
        bundle: The bundle (or its directory).
        data: Labelled dataset (YOLO yaml, COCO json, class folders) for accuracy, latency
            images and (by default) INT8 calibration.
        options: See :class:`TuneOptions`.
        measure: Latency measurement (default :func:`bench_measure`; tests inject fakes).
        evaluate: Accuracy evaluation (default :func:`eval_accuracy`).
        log: Called with progress notes (artifact creation, failures).

    Returns:
        The report; ``report.recommended`` is ``None`` when no candidate keeps the floor, in
        which case the bundle was not changed.

    Raises:
        UsageError: Bad options; no FP32 reference for a relative floor.
        DatasetError: The dataset is empty or malformed (from the reference evaluation).
    """
    opts = options or TuneOptions()
    say: Log = log or (lambda _m: None)
    measure_fn = measure or bench_measure
    evaluate_fn = evaluate or eval_accuracy
    b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    data_p = Path(data)
    if not data_p.exists():
        raise DatasetError(f"dataset {data_p} does not exist", hint="pass --data DATA.yaml")
    t_start = time.monotonic()
    deadline = t_start + opts.budget_minutes * 60 if opts.budget_minutes else None
    metric = "top1" if b.spec.task == "classify" else "map50_95"
    threads: Sequence[int | None] = opts.threads or default_threads()
    from cvdeploy.environment import fingerprint

    env = fingerprint()
    flags = env.get("cpu", {}).get("flags", [])
    plans, notes = plan_artifacts(
        b, formats=opts.formats, precisions=opts.precisions, cpu_flags=flags
    )
    images = _dataset_images(b, data_p, opts.split, opts.images)
    tmp = Path(tempfile.mkdtemp(prefix=f".{b.path.name}.tune-", dir=b.path.resolve().parent))
    try:
        work = Bundle(tmp / "bundle", b.manifest)
        shutil.copytree(b.path, work.path, copy_function=_link)
        candidates: list[Candidate] = []
        created: list[str] = []
        runnable: list[tuple[Artifact, bool]] = []
        # 1. candidate artifacts (a progress bar while missing ones are made)
        to_make = sum(p.artifact_id is None for p in plans)
        for plan in track(
            plans,
            total=len(plans),
            description="making artifacts",
            enabled=opts.progress and to_make > 0,
        ):
            label = f"{plan.format}-{plan.precision}"
            if plan.artifact_id is not None:
                runnable.append((work.artifact(plan.artifact_id), False))
                continue
            if _out_of_time(deadline):
                msg = "time budget spent before it was made"
                candidates.append(
                    Candidate(
                        label,
                        plan.format,
                        plan.precision,
                        None,
                        True,
                        "skipped",
                        msg,
                        fix="give tune a larger --budget-minutes",
                    )
                )
                continue
            try:
                work, new = _make(work, plan, data_p, opts, say)
            except Exception as exc:  # a candidate that fails is reported, never fatal
                msg = f"could not be made ({plan.make}): {_error_text(exc)}"
                say(f"{label}: could not be made (the reason is in the summary at the end)")
                candidates.append(
                    Candidate(
                        label,
                        plan.format,
                        plan.precision,
                        None,
                        True,
                        "failed",
                        msg,
                        fix=_fix_for(plan, exc),
                    )
                )
                continue
            created.extend(new)
            for aid in new:
                a = work.artifact(aid)
                if (a.format, a.precision) == (plan.format, plan.precision):
                    runnable.append((a, True))
        # 2. the reference and the floor
        cache: dict[tuple[str, tuple[Any, ...]], Accuracy | BaseException] = {}
        ref_info: dict[str, Any] = {}
        if opts.min_map is not None:
            floor = opts.min_map
            with contextlib.suppress(UsageError):
                ref_info = {"artifact": _reference(work).id}
        else:
            ref = _reference(work)
            say(f"evaluating the FP32 reference {ref.id}")
            ref_settings = _reference_settings(ref)
            ref_acc = evaluate_fn(work, ref.id, ref_settings, data_p, opts)
            cache[(ref.id, ref_settings.accuracy_key())] = ref_acc
            floor = ref_acc.value - opts.drop
            ref_info = {"artifact": ref.id, "accuracy": ref_acc.value, "dataset": ref_acc.dataset}
        ref_value = ref_info.get("accuracy")
        # 3. candidate settings
        for art, made in runnable:
            why = not_applicable(art, batch=1, imgsz=opts.imgsz)
            if why is not None:
                candidates.append(
                    Candidate(art.id, art.format, art.precision, None, made, "failed", why)
                )
                continue
            candidates.extend(
                Candidate(art.id, art.format, art.precision, s, made)
                for s in settings_grid(art.format, threads=threads, cpu_flags=flags)
            )
        # 4. accuracy and latency, candidate by candidate
        todo = [c for c in candidates if c.settings is not None]
        for c in track(todo, total=len(todo), description="tune", enabled=opts.progress):
            assert c.settings is not None
            if _out_of_time(deadline):
                c.status, c.message = "skipped", "time budget spent"
                c.fix = "give tune a larger --budget-minutes"
                continue
            key = (c.artifact, c.settings.accuracy_key())
            if key not in cache:
                try:
                    cache[key] = evaluate_fn(work, c.artifact, c.settings, data_p, opts)
                except Exception as exc:
                    cache[key] = exc
                    say(f"{c.artifact}: evaluation failed (the reason is in the summary)")
            acc = cache[key]
            if isinstance(acc, BaseException):
                c.status, c.message = "failed", f"evaluation failed: {_error_text(acc)}"
                c.fix = "run `cvdeploy eval BUNDLE --artifact ID --data DATA` to see it in full"
                continue
            c.accuracy = acc.value
            c.drop = None if ref_value is None else ref_value - acc.value
            if acc.value < floor:
                c.status = "too-inaccurate"
                c.message = f"{metric} {acc.value:.4f} < floor {floor:.4f} (not timed)"
                continue
            try:
                c.measurement = measure_fn(work, c.artifact, c.settings, images, opts)
            except Exception as exc:
                c.status, c.message = "failed", f"runtime error: {_error_text(exc)}"
                c.fix = "run `cvdeploy bench BUNDLE --artifact ID` to see it in full"
                continue
            c.round_p50s = [c.measurement.e2e_ms.p50]
            c.status = "ok"
        _remeasure_leaders(candidates, work, images, opts, measure_fn, deadline, say)
        if ref_value is None and "artifact" in ref_info:  # --min-map: drops where known
            ref_art = work.artifact(ref_info["artifact"])
            found = cache.get((ref_art.id, _reference_settings(ref_art).accuracy_key()))
            if isinstance(found, Accuracy):
                ref_info["accuracy"] = ref_value = found.value
                for c in candidates:
                    if c.accuracy is not None:
                        c.drop = ref_value - c.accuracy
        # 5. the winner, recorded in one atomic edit
        best = _best(candidates, opts.target)
        candidates.sort(key=lambda c: c.settings is None)  # rows never tried go last
        report = TuneReport(
            bundle=b.name,
            metric=metric,
            target=opts.target,
            floor=floor,
            reference=ref_info,
            candidates=candidates,
            recommended=None,
            created=created,
            notes=notes,
        )
        if best is not None:
            report.recommended = _recommendation(best, opts, metric, floor, ref_info, env, cache)
            report.kept = _record(b, work, report, best, cache, data_p, opts.keep)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.seconds = time.monotonic() - t_start
    return report


def _rank_key(target: str) -> Any:
    def key(m: Measurement) -> float:
        return -m.throughput_ips if target == "throughput" else m.e2e_ms.p50

    return key


def _remeasure_leaders(
    candidates: Sequence[Candidate],
    work: Bundle,
    images: Sequence[Path],
    opts: TuneOptions,
    measure_fn: MeasureFn,
    deadline: float | None,
    say: Log,
) -> None:
    """Measure the leading candidates again in interleaved rounds; keep each one's median.

    One pass over the grid measures each candidate once, minutes apart: on a shared or
    throttling machine the p50 of the same configuration drifts between such runs by more
    than the differences being ranked. The leaders are measured again, alternating their
    order each round, and each keeps its median measurement.
    """
    key = _rank_key(opts.target)
    ok = [(c, c.measurement) for c in candidates if c.status == "ok" and c.measurement]
    ok.sort(key=lambda t: key(t[1]))
    if len(ok) < 2 or opts.final_rounds < 1:
        return
    runs: dict[int, list[Measurement]] = {id(c): [m] for c, m in ok[: opts.final_top]}
    top = [c for c, _ in ok[: opts.final_top]]
    for r in range(opts.final_rounds):
        for c in top if r % 2 else list(reversed(top)):
            if _out_of_time(deadline):
                break
            assert c.settings is not None
            try:
                runs[id(c)].append(measure_fn(work, c.artifact, c.settings, images, opts))
            except Exception as exc:  # keep the measurements it has
                say(f"{c.artifact} ({c.settings.label()}): re-measurement failed: {exc}")
    for c in top:
        ms = sorted(runs[id(c)], key=key)
        c.measurement = ms[len(ms) // 2]
        c.round_p50s = [m.e2e_ms.p50 for m in runs[id(c)]]
        if len(ms) > 1:
            c.message = f"median of {len(ms)} interleaved measurements"


def _best(candidates: Sequence[Candidate], target: str) -> Candidate | None:
    ok = [c for c in candidates if c.status == "ok" and c.measurement is not None]
    if not ok:
        return None
    if target == "throughput":
        return max(ok, key=lambda c: c.measurement.throughput_ips if c.measurement else 0.0)
    return min(ok, key=lambda c: c.measurement.e2e_ms.p50 if c.measurement else math.inf)


def _recommendation(
    c: Candidate,
    opts: TuneOptions,
    metric: str,
    floor: float,
    ref_info: dict[str, Any],
    env: dict[str, Any],
    cache: dict[tuple[str, tuple[Any, ...]], Accuracy | BaseException],
) -> Recommendation:
    assert c.settings is not None and c.measurement is not None and c.accuracy is not None
    acc = cache[(c.artifact, c.settings.accuracy_key())]
    dataset = acc.dataset if isinstance(acc, Accuracy) else ""
    m = c.measurement
    cpu = env.get("cpu", {})
    return Recommendation(
        artifact=c.artifact,
        options=RuntimeConfig.model_validate(c.settings.to_dict()),
        target="throughput" if opts.target == "throughput" else "latency",
        metric=metric,
        accuracy=c.accuracy,
        floor=floor,
        reference=ref_info,
        dataset=dataset,
        e2e_ms={k: v for k, v in m.e2e_ms.to_dict().items() if k in ("p50", "p90", "n")},
        throughput_ips=finite(m.throughput_ips),
        conditions={
            "cpu": cpu.get("model"),
            "logical_cores": cpu.get("logical_cores"),
            "batch": 1,
            "imgsz": list(opts.imgsz) if opts.imgsz else None,
            "concurrency": (opts.concurrency or os.cpu_count() or 1)
            if opts.target == "throughput"
            else 1,
            "warmup": opts.warmup,
            "iters": opts.iters,
            "includes": "file read + decode, preprocessing, inference, decoding + NMS",
            "versions": env.get("packages", {}),
        },
        measured=now().isoformat(),
    )


def _sources(work: Bundle, artifact_id: str) -> list[str]:
    """The artifact and the chain of artifacts it was made from."""
    out: list[str] = []
    aid: str | None = artifact_id
    ids = {a.id for a in work.manifest.artifacts}
    while aid is not None and aid in ids and aid not in out:
        out.append(aid)
        aid = work.artifact(aid).produced_by.source
    return out


def _record(
    bundle: Bundle,
    work: Bundle,
    report: TuneReport,
    best: Candidate,
    cache: dict[tuple[str, tuple[Any, ...]], Accuracy | BaseException],
    data: Path,
    keep: str,
) -> list[str]:
    """Copy the kept new artifacts, their metrics and the recommendation into the bundle."""
    assert report.recommended is not None
    kept = list(report.created)
    if keep == "recommended":  # only the recommended artifact and the chain it was made from
        chain = set(_sources(work, best.artifact))
        kept = [a for a in kept if a in chain]
    details = {
        "recommended": best.artifact,
        "settings": best.settings.to_dict() if best.settings else None,
        "target": report.target,
        "floor": report.floor,
        "candidates": len(report.candidates),
        "added": kept,
    }
    with bundle.edit(action="tune", details=details) as edit:
        for aid in kept:
            art = work.artifact(aid)
            src_dir = work.path / aid
            dst = edit.artifact_dir(aid, replace=True)
            shutil.copytree(src_dir, dst, dirs_exist_ok=True, copy_function=_link)
            main = Path(art.files[0].path).relative_to(aid).as_posix()
            edit.add_artifact(
                artifact_id=aid,
                format=art.format,
                precision=art.precision,
                io=art.io,
                produced_by=art.produced_by,
                environment=art.environment,
                checks=art.checks,
                main_file=main,
                inference_precision=art.runtime_precision,
            )
        ids = {a.id for a in edit.manifest.artifacts}
        for (aid, key), acc in cache.items():
            if isinstance(acc, Accuracy) and aid in ids and acc.metrics:
                edit.add_check(
                    aid,
                    Check(
                        kind="metrics",
                        name=acc.dataset,
                        data={
                            "metrics": acc.metrics,
                            "images": acc.images,
                            "protocol": acc.protocol,
                            "data": str(data.resolve()),
                            "settings": dict(key),
                            "by": "tune",
                        },
                    ),
                )
        edit.set_recommended(report.recommended)
    return kept
