"""`cvdeploy zoo ...` and `cvdeploy demo`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cvdeploy.cli.common import (
    VerboseOpt,
    err_console,
    handle_errors,
    out_console,
    print_json,
    say_log,
    third_party_log,
    third_party_output_to_stderr,
)
from cvdeploy.errors import CheckFailed

SYNTHETIC_CLASSIFY_TRAIN = 600
"""Training images per class of `--data synthetic` for a classifier (3600 in all)."""
SYNTHETIC_CLASSIFY_VAL = 100
"""Validation images per class (600 in all)."""

zoo_app = typer.Typer(
    help="The bundled small detector and classifier: list, train.", no_args_is_help=True
)


@zoo_app.command("list")
@handle_errors
def zoo_list(
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List the shipped zoo models with their measured metrics."""
    from cvdeploy.zoo.registry import list_zoo

    entries = list_zoo()
    if json_out:
        print_json(
            [
                {
                    "name": e.name,
                    "task": e.task,
                    "architecture": e.architecture,
                    "classes": list(e.names),
                    "imgsz": e.imgsz,
                    "params": e.params,
                    "metrics": dict(e.metrics),
                    "weights": str(e.weights),
                }
                for e in entries
            ]
        )
        return
    t = Table(title="cvdeploy zoo")
    for c in ("name", "task", "params", "imgsz", "classes", "metrics (val split)"):
        t.add_column(c)
    for e in entries:
        t.add_row(
            e.name,
            e.task,
            f"{e.params / 1e6:.2f} M",
            str(e.imgsz),
            str(len(e.names)),
            ", ".join(f"{k} {v:.4f}" for k, v in e.metrics.items() if isinstance(v, float)),
        )
    out_console().print(t)


@zoo_app.command("train")
@handle_errors
def zoo_train(
    data: Annotated[
        Path,
        typer.Option(
            help="YOLO data.yaml (detector) or class-folder tree "
            "(classifier); `--data synthetic` generates one (shapes: a detection set for "
            "detectors, a class-folder set for classifiers)"
        ),
    ],
    model: Annotated[
        str, typer.Option(help="detector-n | detector-s | detector-p | classifier-n")
    ] = "detector-n",
    epochs: Annotated[
        int | None, typer.Option(help="epochs (default: until the time budget)")
    ] = None,
    minutes: Annotated[float | None, typer.Option(help="wall-clock training budget")] = None,
    imgsz: Annotated[
        int | None, typer.Option(help="training input size (default: detector 256, classifier 64)")
    ] = None,
    batch: Annotated[
        int | None, typer.Option(help="batch size (default: detector 8, classifier 64)")
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    threads: Annotated[int | None, typer.Option(help="torch threads")] = None,
    out: Annotated[Path, typer.Option(help="run folder (checkpoints, bundle)")] = Path(
        "runs/train"
    ),
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Train a zoo model, then evaluate the best checkpoint through the eval stage."""
    from cvdeploy.data.synthetic import make_classification_dataset, make_detection_dataset
    from cvdeploy.errors import UsageError
    from cvdeploy.export import create_torch_bundle
    from cvdeploy.verify.evaluate import evaluate_bundle
    from cvdeploy.zoo.models import model_task

    if epochs is None and minutes is None:
        raise UsageError("give --epochs N or --minutes M")
    task = model_task(model)
    if imgsz is None:
        imgsz = 256 if task == "detect" else 64
    if str(data) == "synthetic":
        if task == "detect":
            data = make_detection_dataset(out / "data", seed=seed)
        else:
            data = make_classification_dataset(
                out / "data",
                n_per_class_train=SYNTHETIC_CLASSIFY_TRAIN,
                n_per_class_val=SYNTHETIC_CLASSIFY_VAL,
                imgsz=imgsz,
                seed=seed,
            )
    budget = minutes * 60 if minutes is not None else None
    t0 = time.perf_counter()
    if task == "detect":
        from cvdeploy.zoo.train import train_detector as train
    else:
        from cvdeploy.zoo.classify_train import train_classifier as train  # type: ignore[assignment]
    kwargs: dict[str, Any] = {} if batch is None else {"batch": batch}
    best: Path = train(
        model=model,
        data=data,
        out_dir=out,
        epochs=epochs,
        time_budget_s=budget,
        imgsz=imgsz,
        **kwargs,
        seed=seed,
        threads=threads,
        progress=not json_out,
    ).best
    t_train = time.perf_counter() - t0
    bundle = create_torch_bundle(str(best), out=out / "bundle", data=data, overwrite=True)
    rep = evaluate_bundle(
        bundle, data, artifact="torch-fp32", progress=not json_out, dataset_label="train-val"
    )
    result = {
        "model": model,
        "checkpoint": str(best),
        "bundle": str(bundle.path),
        "metrics": rep.metrics,
        "train_seconds": round(t_train, 1),
    }
    if json_out:
        print_json(result)
        return
    m = rep.metrics
    key = "map50_95" if "map50_95" in m else "top1"
    out_console().print(
        f"trained {model} in {t_train / 60:.1f} min: {key} {m[key]:.4f} on the val split; "
        f"checkpoint {best}; bundle {bundle.path}"
    )


@handle_errors
def demo_cmd(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("demo-out"),
    val_images: Annotated[int, typer.Option(help="size of the generated val set")] = 120,
    verbose: VerboseOpt = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="print one JSON object (steps still go to stderr)")
    ] = False,
) -> None:
    """Run the whole path on the shipped detector: bundle, export, verify, eval, report."""
    from cvdeploy.workflows.demo import run_demo

    con = err_console()
    log = None if verbose else third_party_log("demo")
    with third_party_output_to_stderr(log):
        res = run_demo(
            out, say=lambda s: con.print(s, markup=False, highlight=False), val_images=val_images
        )
    say_log(log)
    if json_out:
        print_json(
            {
                "bundle": res.bundle,
                "report": res.report.resolve(),
                "artifacts": res.rows,
                "refused": [{"artifact": a, "reason": r} for a, r in res.refused],
                "skipped_formats": res.skipped_formats,
                "seconds": res.seconds,
                "next_steps": res.next_steps,
            }
        )
        if res.refused:
            raise typer.Exit(CheckFailed.exit_code)
        return
    t = Table(title="demo artifacts (synthetic val set)")
    for c in ("artifact", "computes", "size MB", "mAP50-95", "mAP50", "ms/image", "parity"):
        t.add_column(c)
    for r in res.rows:
        t.add_row(
            r["id"],
            r["inference_precision"],
            f"{r['size_mb']:.2f}",
            "-" if r["map50_95"] is None else f"{r['map50_95']:.4f}",
            "-" if r["map50"] is None else f"{r['map50']:.4f}",
            "-" if r["e2e_ms"] is None else f"{r['e2e_ms']:.1f}",
            "-" if r["parity"] is None else ("pass" if r["parity"] else "FAIL"),
        )
    for aid, _ in res.refused:
        t.add_row(aid, "-", "-", "-", "-", "-", "REFUSED", style="bold red")
    con = out_console()
    con.print(t)
    for aid, reason in res.refused:
        con.print(f"[red]{aid} refused:[/] {escape(reason)}")
    con.print(f"demo finished in {res.seconds:.0f} s")
    con.print(f"bundle: {res.bundle}")
    con.print(f"report: {res.report.resolve()}")
    for line in res.next_steps:  # how to serve the bundle and call it
        con.print(line, markup=False, highlight=False, soft_wrap=True)
    if res.refused:  # the last line says what failed
        ids = ", ".join(aid for aid, _ in res.refused)
        con.print(
            f"[bold red]demo failed: {len(res.refused)} announced artifact(s) refused: {ids} "
            "(reasons above and in report.html)[/]"
        )
        raise typer.Exit(CheckFailed.exit_code)
