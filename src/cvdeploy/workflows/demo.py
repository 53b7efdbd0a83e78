"""The end-to-end demo: shipped detector -> verified, measured deployment, no download.

Every step goes through the same public stage functions a user calls from the CLI.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2

from cvdeploy.bench.report import html_fragment
from cvdeploy.bench.sweep import run_sweep
from cvdeploy.bundle import Bundle
from cvdeploy.data.io import read_image
from cvdeploy.data.synthetic import make_detection_dataset
from cvdeploy.errors import CvdeployError, UsageError
from cvdeploy.export import EXPORTERS, ExportOptions, export_model
from cvdeploy.optimize import QuantizeOptions, quantize_bundle
from cvdeploy.pipeline.draw import draw
from cvdeploy.pipeline.predictor import Predictor
from cvdeploy.pipeline.results import Detections
from cvdeploy.precision import cpu_flags, native_precisions
from cvdeploy.report.html import artifact_row, write_report
from cvdeploy.verify.evaluate import evaluate_bundle

DEMO_MODEL = "detector-n"
DEMO_FORMATS = ("onnx", "openvino", "tflite")
NATIVE_EXTRAS = {"bf16": "openvino:bf16"}
"""Reduced-precision artifacts the demo adds where this CPU computes in them natively."""
VAL_IMAGES = 120
VAL_SEED = 20261129  # a fresh set: not the seed the shipped weights were validated on


@dataclass(slots=True)
class DemoResult:
    """What the demo produced."""

    out: Path
    bundle: Path
    report: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped_formats: dict[str, str] = field(default_factory=dict)
    refused: list[tuple[str, str]] = field(default_factory=list)
    """Announced artifacts that were not added, with the reason (the demo then fails)."""
    seconds: float = 0.0
    next_steps: list[str] = field(default_factory=list)
    """The command that serves the bundle and a ``curl`` line that calls it (said last)."""


def run_demo(
    out: Path,
    *,
    say: Callable[[str], None] = print,
    progress: bool = True,
    val_images: int = VAL_IMAGES,
    formats: tuple[str, ...] = DEMO_FORMATS,
    quantize: bool = True,
    bench_iters: int = 30,
    model: str = DEMO_MODEL,
) -> DemoResult:
    """Run the demo into ``out`` (replacing a previous demo there).

    Args:
        out: Output folder (bundle, data, predictions, report.html).
        say: Where step messages go.
        progress: Show progress bars.
        val_images: Size of the freshly generated synthetic val set.
        formats: Export formats to try (those unavailable here are skipped and said so); the
            reduced precisions of :data:`NATIVE_EXTRAS` this CPU has natively are added.
        quantize: Add an OpenVINO INT8 artifact (needs at least 100 val images).
        bench_iters: Measured requests per artifact in the benchmark step.
        model: The zoo model (or a checkpoint of `cvdeploy zoo train`) to deploy.
    """
    t0 = time.perf_counter()
    if out.exists() and not (out / ".cvdeploy-demo").exists() and any(out.iterdir()):
        raise UsageError(
            f"{out} exists and is not a cvdeploy demo folder", hint="choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / ".cvdeploy-demo").touch()
    fmts, skipped = [], {}
    for f in formats:
        if f not in EXPORTERS.names():
            skipped[f] = "no exporter registered"
            continue
        av = EXPORTERS.availability(f)
        if av.available:
            fmts.append(f)
        else:
            skipped[f] = str(av.reason)
    if "openvino" in fmts:
        here = native_precisions(cpu_flags())
        fmts.extend(t for p, t in NATIVE_EXTRAS.items() if p in here)
    refused: list[tuple[str, str]] = []
    steps = 3 + len(fmts) + int(quantize) + 3

    def step(i: int, text: str) -> None:
        say(f"[{i}/{steps}] {text}  ({time.perf_counter() - t0:.0f} s)")

    step(1, f"generating a fresh synthetic val set ({val_images} images, seed {VAL_SEED})")
    data_dir = out / "data"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_yaml = make_detection_dataset(data_dir, n_train=0, n_val=val_images, seed=VAL_SEED)

    step(
        2,
        f"bundling the shipped {model} and exporting {', '.join(fmts)} "
        "(each through the parity gate)",
    )
    for f, why in skipped.items():
        say(f"      skipped {f}: {why}")
    bundle_dir = out / "bundle"
    report = export_model(
        model,
        formats=fmts,
        out=bundle_dir,
        data=data_yaml,
        options=ExportOptions(),
        overwrite=True,
    )
    for o in report.outcomes:
        say(f"      {o.artifact_id}: {o.status} {o.message}")
        if o.status != "added":
            refused.append((o.artifact_id, f"{o.status}: {o.message}"))
    bundle = Bundle.load(bundle_dir)
    label = "synthetic-val"
    for i, art in enumerate(bundle.manifest.artifacts):
        step(3 + i, f"evaluating {art.id} on the synthetic val set")
        rep = evaluate_bundle(
            bundle, data_yaml, artifact=art.id, progress=progress, dataset_label=label
        )
        say(
            f"      mAP50-95 {rep.metrics['map50_95']:.4f}  mAP50 {rep.metrics['map50']:.4f}  "
            f"inference {rep.speed_ms['inference']:.1f} ms/image"
        )
    n = 3 + len(bundle.manifest.artifacts)
    if quantize:
        step(n, "quantizing to INT8 (OpenVINO NNCF on the val images) and evaluating it")
        n += 1
        try:
            q = quantize_bundle(
                bundle,
                data_yaml,
                options=QuantizeOptions(
                    backend="openvino",
                    calib_size=val_images,
                    force=True,
                    measure=False,
                    progress=False,
                    overwrite=True,
                ),
            )
            bundle = Bundle.load(bundle_dir)
            rep = evaluate_bundle(
                bundle, data_yaml, artifact=q.artifact, progress=progress, dataset_label=label
            )
            say(f"      {q.artifact}: mAP50-95 {rep.metrics['map50_95']:.4f}")
        except CvdeployError as exc:  # reported in the table and the report; the demo fails
            say(f"      INT8 not added: {exc}")
            refused.append(("openvino-int8", exc.message.splitlines()[0]))
    step(n, "benchmarking every artifact (warm-up excluded)")
    n += 1
    bundle = Bundle.load(bundle_dir)
    bench_images = sorted((data_dir / "images" / "val").iterdir())[:16]
    sweep = run_sweep(bundle, bench_images, artifacts="all", warmup=3, iters=bench_iters)
    sections = ["<h2>Latency (cvdeploy bench)</h2>" + html_fragment(sweep)]
    step(n, "predicting on 4 images and drawing the results")
    pred_dir = out / "predictions"
    pred_dir.mkdir(exist_ok=True)
    val_imgs = sorted((data_dir / "images" / "val").iterdir())[:4]
    drawn = []
    with Predictor.from_bundle(bundle, batch=1) as p:
        for path in val_imgs:
            img = read_image(path)
            (res,), _ = p.predict([img])
            dst = pred_dir / f"{path.stem}.jpg"
            if isinstance(res, Detections):  # drawn at 2x so that labels stay readable
                img = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
                res = Detections(boxes=res.boxes * 2, scores=res.scores, class_ids=res.class_ids)
            cv2.imwrite(str(dst), draw(img, res, bundle.spec.names))
            drawn.append(dst)
    step(n + 1, "writing report.html")
    bundle = Bundle.load(bundle_dir)
    html_file = write_report(
        bundle,
        out / "report.html",
        dataset=label,
        images=drawn,
        title=f"cvdeploy demo: {model}",
        sections=sections,
        refused=refused,
    )
    rows = [artifact_row(a, label) for a in bundle.manifest.artifacts]
    return DemoResult(
        out=out,
        bundle=bundle_dir,
        report=html_file,
        rows=rows,
        skipped_formats=skipped,
        refused=refused,
        seconds=time.perf_counter() - t0,
        next_steps=serve_instructions(bundle_dir, bundle.name, val_imgs[0]),
    )


def serve_instructions(bundle_dir: Path, name: str, image: Path, *, port: int = 8000) -> list[str]:
    """How to serve the demo bundle, and a ``curl`` line that sends it an image.

    The ``cvdeploy`` shown is the one of this environment (``.venv/bin/cvdeploy`` when the
    environment's ``bin`` is not on ``PATH``, as after ``make demo``).
    """
    return [
        f"serve it (ready once http://127.0.0.1:{port}/readyz answers 200):",
        f"  {_cli()} serve {shlex.quote(str(bundle_dir))} --port {port}",
        "then, from another terminal:",
        f"  curl -s -F image=@{shlex.quote(str(image))} "
        f"http://127.0.0.1:{port}/v1/models/{name}/predict",
    ]


def _cli() -> str:
    own = Path(sys.prefix) / "bin" / "cvdeploy"
    on_path = shutil.which("cvdeploy")
    if not own.is_file() or (on_path and Path(on_path).resolve() == own.resolve()):
        return "cvdeploy"
    try:
        return shlex.quote(str(own.absolute().relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(own.absolute()))
