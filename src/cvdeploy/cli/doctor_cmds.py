"""`cvdeploy doctor`: why did accuracy drop after deployment? And `cvdeploy logs drift`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cvdeploy.cli.common import err_console, handle_errors, out_console, print_json
from cvdeploy.cli.protect_cmds import KeyEnv, KeyFile
from cvdeploy.errors import CheckFailed, UsageError

if TYPE_CHECKING:
    from cvdeploy.diagnose import DoctorReport, ImageSource

_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def logged_sources(logdir: Path, *, limit: int | None = None) -> list[ImageSource]:
    """The sampled requests of a server's request log as doctor's production images, with
    the predictions the server returned (so the model is not run again for them)."""
    import numpy as np

    from cvdeploy.diagnose import ImageSource
    from cvdeploy.pipeline import Detections
    from cvdeploy.serve.logging_store import read_entries

    out: list[ImageSource] = []
    for r in read_entries(logdir, limit=limit):
        f = logdir / r["image"]
        if not f.is_file():  # rotated out
            continue
        res: Any = None  # classifiers log the top 5 only: their probabilities are recomputed
        outputs = r.get("outputs") or {}
        if "detections" in outputs:
            dets = outputs["detections"]
            res = Detections(
                boxes=np.array([d["box"] for d in dets], np.float32).reshape(-1, 4),
                scores=np.array([d["score"] for d in dets], np.float32),
                class_ids=np.array([d["class_id"] for d in dets], np.int64),
            )
        out.append(
            ImageSource(
                id=Path(r["image"]).name,
                path=f,
                size=(int(r["width"]), int(r["height"])),
                result=res,
            )
        )
    return out


def _print_report(rep: DoctorReport, html: Path | None) -> None:
    con = out_console()
    probs = rep.problems
    head = (
        "[bold green]healthy[/]: no problem found"
        if not probs
        else f"[bold red]{len(probs)} problem(s)[/]"
    )
    con.print(f"[bold]cvdeploy doctor[/] {escape(rep.name)} ({escape(rep.bundle)}): {head}")
    for name, sec in rep.sections.items():
        if sec.status != "ran":
            con.print(f"  [dim]{name}: {sec.status} ({escape(sec.reason)})[/]")
    for i, f in enumerate(rep.ranked(), 1):
        style = _STYLE.get(f.severity, "")
        con.print(f"\n[{style}]{i}. {f.severity.upper()}[/] [dim]{f.kind}[/] {escape(f.title)}")
        for e in f.evidence:
            con.print(f"   - {escape(e)}")
        if f.fix:
            con.print(f"   [green]fix:[/] {escape(f.fix)}")
    acc = rep.sections.get("accuracy")
    if acc is not None and acc.status == "ran":
        d = acc.data
        metric = "mAP50-95" if d.get("metric") == "map50_95" else "top-1"
        t = Table(title=f"controlled dataset: {d.get('dataset')} ({d.get('images')} images)")
        for c in ("artifact", "computes", metric, "vs ref", "TP/FP/missed", "agreement"):
            t.add_column(c)
        for r in d.get("rows") or []:
            if r["status"] != "ok":
                t.add_row(r["artifact"], "-", r["status"], escape(r["reason"])[:60], "", "")
                continue
            t.add_row(
                r["artifact"] + (" (ref)" if r["artifact"] == d.get("reference") else ""),
                str(r.get("inference_precision") or "-"),
                f"{r['score']:.4f}" if r.get("score") is not None else "-",
                "" if r.get("delta") is None else f"{r['delta']:+.4f}",
                f"{r['tp']}/{r['fp']}/{r['fn']}",
                "" if r.get("agreement") is None else f"{r['agreement']:.0%}",
            )
        con.print()
        con.print(t)
    con.print(f"\n[dim]{rep.seconds:.0f} s[/]")
    if html is not None:
        err_console().print(f"report: {html.resolve()}")


@handle_errors
def doctor_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory")],
    data: Annotated[
        Path | None,
        typer.Option(
            help="labelled set (YOLO data.yaml, COCO json, class-per-folder tree): the "
            "controlled-dataset table, layer comparison, spec check, drift reference"
        ),
    ] = None,
    production: Annotated[
        Path | None,
        typer.Option(
            help="production images (a folder; `cvdeploy logs export` output works), or "
            "model inputs as fed (.npy, one per input): preprocessing audit and drift"
        ),
    ] = None,
    logs: Annotated[
        Path | None,
        typer.Option(help="a server's --log-dir: its sampled requests are the production images"),
    ] = None,
    logs_limit: Annotated[
        int | None, typer.Option(help="with --logs: the newest N requests only")
    ] = None,
    artifact: Annotated[
        str | None,
        typer.Option(help="artifact to diagnose in depth (default: the recommended one)"),
    ] = None,
    only: Annotated[
        str | None,
        typer.Option(
            help="comma-separated sections: environment, integrity, accuracy, layers, "
            "preprocessing, drift (default: all the inputs allow)"
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="dataset split of --data")] = "val",
    max_images: Annotated[
        int | None, typer.Option(help="most labelled images evaluated (default: all)")
    ] = None,
    layer_images: Annotated[int, typer.Option(help="images of the layer comparison")] = 8,
    audit_images: Annotated[int, typer.Option(help="images per pipeline variant")] = 16,
    keep_float_trial: Annotated[
        bool,
        typer.Option(
            help="re-quantize an INT8 artifact that lost accuracy with the suggested layers "
            "in float, and measure (on a copy; the bundle is not changed)"
        ),
    ] = True,
    layer_shares: Annotated[
        bool,
        typer.Option(
            help="measure each layer's share of the output error (one run per layer): the "
            "layers to keep in float are chosen by it"
        ),
    ] = True,
    keep_float_noise: Annotated[
        int,
        typer.Option(
            min=0,
            help="with --keep-float-trial: also re-quantize from N random samples of the "
            "calibration set, so the trial's result is judged against the calibration noise "
            "(each about a minute on a small detector; 3 or more for a usable spread); and "
            "once with as many healthy layers kept in float instead (a placebo)",
        ),
    ] = 0,
    share_layers: Annotated[
        int,
        typer.Option(
            min=0,
            help="with --layer-shares: measure the shares of this many layers with the largest "
            "isolated error plus as many with the largest SQNR drop (each costs a model "
            "compilation); 0: every layer (minutes on a real detector)",
        ),
    ] = 8,
    alpha: Annotated[float, typer.Option(help="false-alarm rate of the drift tests")] = 0.05,
    threads: Annotated[int | None, typer.Option(help="runtime threads")] = None,
    html: Annotated[Path | None, typer.Option(help="write the HTML report here")] = None,
    key_file: KeyFile = None,
    key_env: KeyEnv = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Why did accuracy drop? Ranked findings, each with its evidence and the fix.

    Checks the environment (versions, CPU instructions, precision) against where each
    artifact was made and measured, file integrity and the parity gate on your images,
    every artifact on one labelled set (per-class and TP/FP/FN changes), where an
    artifact's layers diverge from the float model (and which to keep in float), the
    preprocessing (spec variants, what the production inputs show), and drift of the
    production images from the reference summary. Exit code 0: nothing found; 1: a
    problem was found; 2: bad input. Nothing in the bundle is changed.
    """
    if not 0 < alpha < 1:
        raise UsageError(f"--alpha must be in (0, 1), got {alpha}")
    if logs is not None and production is not None:
        raise UsageError("give --production or --logs, not both")
    from cvdeploy.bundle import Bundle
    from cvdeploy.cli.common import third_party_output_to_stderr
    from cvdeploy.diagnose import DoctorOptions, run_doctor, write_html
    from cvdeploy.security.crypto import key_from_options, model_loader

    b = Bundle.load(bundle, verify=False, loader=model_loader(key_from_options(key_file, key_env)))
    sources = None
    if logs is not None:
        sources = logged_sources(logs, limit=logs_limit)
        if not sources:
            raise UsageError(
                f"the request log {logs} holds no image",
                hint="serve with --sample-rate R --log-dir DIR and send requests first",
            )
    sections = tuple(s.strip() for s in only.split(",") if s.strip()) if only else None
    opts = DoctorOptions(
        data=data,
        split=split,
        production=production,
        production_sources=sources,
        artifact=artifact,
        sections=sections,
        max_images=max_images,
        layer_images=layer_images,
        audit_images=audit_images,
        keep_float_trial=keep_float_trial,
        layer_shares=layer_shares,
        share_layers=share_layers or None,
        keep_float_noise=keep_float_noise,
        alpha=alpha,
        threads=threads,
        progress=not json_out,
    )
    say = (lambda m: None) if json_out else (lambda m: err_console().print(f"[dim]{escape(m)}[/]"))
    with third_party_output_to_stderr():
        rep = run_doctor(b, opts, log=say)
    if html is not None:
        write_html(rep, html)
    if json_out:
        out = rep.to_dict()
        if html is not None:
            out["html"] = str(html)
        print_json(out)
    else:
        _print_report(rep, html)
    if rep.problems:
        raise typer.Exit(CheckFailed.exit_code)


@handle_errors
def logs_drift(
    logdir: Annotated[Path, typer.Argument(help="the server's --log-dir")],
    bundle: Annotated[Path, typer.Argument(help="the bundle served (holds the reference)")],
    limit: Annotated[int | None, typer.Option(help="the newest N requests only")] = None,
    alpha: Annotated[float, typer.Option(help="false-alarm rate")] = 0.05,
    json_out: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Drift of the logged requests against the bundle's reference summary (the drift
    section of `cvdeploy doctor BUNDLE --logs LOGDIR`). Exit 1 on drift."""
    from cvdeploy.bundle import Bundle
    from cvdeploy.diagnose import DoctorOptions, run_doctor

    b = Bundle.load(bundle, verify=False)
    sources = logged_sources(logdir, limit=limit)
    if not sources:
        raise UsageError(f"the request log {logdir} holds no image")
    rep = run_doctor(
        b,
        DoctorOptions(
            production_sources=sources, sections=("drift",), alpha=alpha, progress=not json_out
        ),
    )
    sec = rep.sections["drift"]
    if json_out:
        print_json({"status": sec.status, "reason": sec.reason, **(sec.data.get("report") or {})})
    else:
        con = out_console()
        if sec.status != "ran":
            con.print(f"drift: {sec.status} ({escape(sec.reason)})")
        else:
            d = sec.data["report"]
            con.print(
                f"drift: [bold]{d['verdict']}[/] (p={d['p_value']:.3g}, {d['n_window']} logged "
                f"images against {d['n_ref']} reference images)"
            )
            for f in rep.findings:
                for e in f.evidence:
                    con.print(f"  - {escape(e)}")
    if sec.status == "ran" and sec.data["report"]["verdict"] == "drift":
        raise typer.Exit(CheckFailed.exit_code)
