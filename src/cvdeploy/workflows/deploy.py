"""``cvdeploy deploy``: from a model file to a measured, servable deployment in one command.

The newcomer's path, and cvdeploy's answer to ``yolo benchmark``: where that exports and
times every format, this also gates every artifact against its source, measures its
accuracy, picks the fastest within the accuracy budget and leaves a bundle ready to serve.

1. **The bundle**: an ONNX file or OpenVINO IR is imported (an Ultralytics export is
   recognised from its metadata; otherwise the model family's ``preset`` is asked for in a
   clear error), a zoo model or a training checkpoint becomes a torch source with its ONNX
   export, an existing bundle is copied.
2. **The source's accuracy** on the labelled ``data`` (the eval stage).
3. **tune** over every format and precision this machine can run, each artifact made through
   its gate (the tune workflow), recording the recommended configuration.
4. **bench** of the recommended configuration (alternating rounds, the spread kept).
5. **report.html**: the artifacts with their accuracy, latency and parity, the Pareto plot,
   and every candidate that could not be made with its reason; then the serve command and a
   ``curl`` line that work as printed.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvdeploy.bench import html_fragment, run_sweep
from cvdeploy.bundle import Bundle
from cvdeploy.data import image_paths
from cvdeploy.errors import CheckFailed, InputError, UsageError
from cvdeploy.export import (
    ExportOptions,
    ImportOverrides,
    create_torch_bundle,
    export_model,
    import_model,
)
from cvdeploy.report import write_report
from cvdeploy.verify import evaluate_bundle
from cvdeploy.workflows.demo import serve_instructions
from cvdeploy.workflows.tune import tune_bundle
from cvdeploy.workflows.tune_report import TuneOptions, TuneReport

Say = Callable[[str], None]


@dataclass(slots=True)
class DeployReport:
    """What ``cvdeploy deploy`` did, found and recorded."""

    model: str
    bundle: Path
    report: Path
    source_artifact: str
    source_accuracy: float | None
    metric: str
    tune: TuneReport
    bench: dict[str, Any] | None
    next_steps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def recommended(self) -> str | None:
        """The recommended artifact (``None`` when no candidate kept the floor)."""
        rec = self.tune.recommended
        return rec.artifact if rec is not None else None

    def to_dict(self) -> dict[str, Any]:
        """The ``cvdeploy deploy --json`` object."""
        return {
            "model": self.model,
            "bundle": str(self.bundle),
            "report": str(self.report),
            "source": {"artifact": self.source_artifact, self.metric: self.source_accuracy},
            "recommended": self.tune.recommended.model_dump(mode="json")
            if self.tune.recommended
            else None,
            "tune": self.tune.to_dict(),
            "bench": self.bench,
            "next_steps": list(self.next_steps),
            "notes": list(self.notes),
            "seconds": self.seconds,
        }


def _make_bundle(
    model: str,
    out: Path,
    *,
    name: str,
    preset: str | None,
    data: Path,
    say: Say,
    overwrite: bool,
) -> Bundle:
    """The bundle for ``model``, in ``out``."""
    src = Path(model)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} exists and is not empty", hint="pass --overwrite or another --out")
    samples = image_paths(data, what="--data")[:8]
    if src.is_dir() and (src / "bundle.json").is_file():
        say(f"copying the bundle {src} to {out}")
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(src, out)
        return Bundle.load(out)
    if src.suffix.lower() in (".onnx", ".xml") or src.is_dir():
        say(f"importing {src}" + (f" (preset {preset})" if preset else ""))
        bundle, notes = import_model(
            src,
            out=out,
            name=name,
            overrides=ImportOverrides(preset=preset),
            overwrite=overwrite,
            samples=samples,
        )
        for n in notes:
            say(f"  note: {n}")
        return bundle
    if preset is not None:
        raise UsageError("--preset applies to ONNX files and OpenVINO IRs only")
    say(f"bundling {model} (torch source) and exporting it to ONNX through the gate")
    create_torch_bundle(model, out=out, data=data, overwrite=overwrite)
    rep = export_model(out, formats=["onnx"], data=data, options=ExportOptions())
    if not rep.ok:
        raise CheckFailed("; ".join(f"{o.artifact_id}: {o.message}" for o in rep.outcomes))
    return Bundle.load(out)


def deploy_model(
    model: str,
    data: Path | str,
    *,
    out: Path,
    target: str = "latency",
    max_drop: float | None = None,
    formats: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    preset: str | None = None,
    calib_force: bool = False,
    tune_iters: int = 30,
    bench_iters: int = 60,
    budget_minutes: float | None = None,
    threads: Sequence[int] | None = None,
    overwrite: bool = False,
    port: int = 8000,
    say: Say = print,
    progress: bool = True,
) -> DeployReport:
    """Take ``model`` to a measured, servable bundle in ``out`` (see the module docstring).

    Args:
        model: An ONNX file, an OpenVINO IR (``.xml`` or its folder), a zoo model name, a
            training checkpoint, or an existing bundle.
        data: A labelled dataset (data.yaml, COCO json; class folders for classifiers): the
            accuracy, the latency images and the INT8 calibration.
        out: The folder for the bundle and report.html.
        target: ``latency`` or ``throughput``.
        max_drop: Largest accuracy drop below the source (default 0.01).
        formats: Formats tune tries (default: every one that runs here).
        precisions: Precisions tune tries (default: all, reduced ones where native).
        preset: Model family of an ONNX/IR without metadata (``yolox``, ``yolov5``...).
        calib_force: Accept fewer than 100 calibration images for INT8.
        tune_iters: Timed requests per tune candidate.
        bench_iters: Timed requests of the final benchmark.
        budget_minutes: Stop tune after this long.
        threads: Intra-op thread counts tune tries (default: half the cores and all).
        overwrite: Replace what ``out`` holds.
        port: The port of the printed serve command.
        say: Where progress lines go.
        progress: Progress bars.
    """
    t0 = time.perf_counter()
    data = Path(data)
    if not data.exists():
        raise InputError(f"--data {data} does not exist", hint="give a labelled dataset")
    out = Path(out)
    bundle_dir = out / "bundle"
    if overwrite and bundle_dir.exists():
        shutil.rmtree(bundle_dir)
    say("[1/5] the bundle")
    b = _make_bundle(
        model,
        bundle_dir,
        name=out.resolve().name,
        preset=preset,
        data=data,
        say=say,
        overwrite=overwrite,
    )
    metric = "top1" if b.spec.task == "classify" else "map50_95"
    say(f"[2/5] evaluating the source on {data}")
    source = next(
        (
            a
            for fmt in ("torch", "onnx", "openvino")
            for a in b.manifest.artifacts
            if a.format == fmt
        ),
        b.manifest.artifacts[0],
    )
    ev = evaluate_bundle(b, data, artifact=source.id, progress=progress)
    src_acc = ev.metrics.get(metric)
    if isinstance(src_acc, float):
        say(f"      {source.id}: {metric} {src_acc:.4f}")
    say("[3/5] tune: every format and precision this machine can run, each through its gate")
    opts = TuneOptions(
        max_drop=max_drop,
        target=target,
        formats=tuple(formats) if formats else ("onnx", "openvino", "tflite"),
        precisions=tuple(precisions) if precisions else TuneOptions().precisions,
        calib_force=calib_force,
        iters=tune_iters,
        budget_minutes=budget_minutes,
        threads=tuple(threads) if threads else None,
        progress=progress,
    )
    tune = tune_bundle(Bundle.load(bundle_dir), data, options=opts, log=lambda m: say(f"      {m}"))
    b = Bundle.load(bundle_dir)
    notes = list(tune.notes)
    bench: dict[str, Any] | None = None
    sections: list[str] = []
    if tune.recommended is not None:
        say(f"[4/5] benchmarking the recommended configuration ({tune.recommended.artifact})")
        images = image_paths(data, what="--data")[:32]
        sweep = run_sweep(
            b,
            images,
            artifacts="all",
            iters=bench_iters,
            warmup=3,
            rounds=3,
            record=True,
            progress=progress,
        )
        bench = sweep.to_dict()
        notes.extend(sweep.notes)
        sections.append("<h2>Latency (cvdeploy bench)</h2>" + html_fragment(sweep))
    else:
        say("[4/5] no candidate kept the accuracy floor: nothing to benchmark")
    say("[5/5] writing report.html")
    refused = [
        (ids[0] if len(ids) == 1 else ", ".join(ids), reason + (f" (fix: {fix})" if fix else ""))
        for reason, fix, ids in tune.failure_summary()
    ]
    b = Bundle.load(bundle_dir)
    report = write_report(
        b,
        out / "report.html",
        dataset=None,
        title=f"cvdeploy deploy: {Path(model).name}",
        sections=sections,
        refused=refused,
    )
    sample = next(iter(b.sample_images()), None) or image_paths(data, what="--data")[0]
    steps = serve_instructions(bundle_dir, b.name, sample, port=port)
    return DeployReport(
        model=str(model),
        bundle=bundle_dir,
        report=report,
        source_artifact=source.id,
        source_accuracy=src_acc if isinstance(src_acc, float) else None,
        metric=metric,
        tune=tune,
        bench=bench,
        next_steps=steps,
        notes=notes,
        seconds=time.perf_counter() - t0,
    )
