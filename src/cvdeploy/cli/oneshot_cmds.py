"""`cvdeploy deploy`: one command from a model file to a measured, servable deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
from cvdeploy.cli.tune_cmds import print_tune_summary
from cvdeploy.errors import CheckFailed


def _csv(value: str | None) -> tuple[str, ...] | None:
    items = tuple(p.strip().lower() for p in (value or "").split(",") if p.strip())
    return items or None


@handle_errors
def deploy_cmd(
    model: Annotated[
        str,
        typer.Argument(
            help="an ONNX file, an OpenVINO IR (.xml or its folder), a zoo model (detector-n), "
            "a training checkpoint, or a bundle"
        ),
    ],
    data: Annotated[
        Path,
        typer.Option(
            help="labelled images (data.yaml, COCO json, class folders): accuracy, latency "
            "and INT8 calibration"
        ),
    ],
    out: Annotated[Path, typer.Option(help="folder for the bundle and report.html")] = Path(
        "deploy-out"
    ),
    target: Annotated[
        str, typer.Option(help="latency (p50, one at a time) or throughput (images/s)")
    ] = "latency",
    max_drop: Annotated[
        float | None,
        typer.Option(help="largest accuracy drop below the source (default 0.01 mAP50-95)"),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(help="model family of an ONNX/IR without metadata: yolox | yolov5 | ..."),
    ] = None,
    formats: Annotated[
        str | None, typer.Option(help="formats to try (default: onnx, openvino, tflite)")
    ] = None,
    precisions: Annotated[
        str | None,
        typer.Option(help="precisions to try (default: all; bf16/FP16 only where native)"),
    ] = None,
    force: Annotated[bool, typer.Option(help="calibrate INT8 on fewer than 100 images")] = False,
    budget_minutes: Annotated[
        float | None, typer.Option(help="stop trying candidates after this long")
    ] = None,
    threads: Annotated[
        str | None, typer.Option(help="intra-op thread counts to try, e.g. 1,2")
    ] = None,
    iters: Annotated[
        int, typer.Option(help="timed requests per candidate (the benchmark takes twice as many)")
    ] = 30,
    serve: Annotated[
        bool, typer.Option("--serve", help="serve the result on 127.0.0.1 when done")
    ] = False,
    port: Annotated[
        int, typer.Option(help="port of the server (printed command or --serve)")
    ] = 8000,
    overwrite: Annotated[bool, typer.Option(help="replace what --out holds")] = False,
    verbose: VerboseOpt = False,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Import, evaluate, tune (every format and precision here, each through its gate), bench
    and report a model, then print the command that serves it (or serve it with --serve).

    cvdeploy's answer to `yolo benchmark`: accuracy-gated, tuned, and ready to serve.
    """
    from cvdeploy.workflows import deploy_model

    con = err_console()
    log = None if verbose else third_party_log("deploy")
    with third_party_output_to_stderr(log):
        rep = deploy_model(
            model,
            data,
            out=out,
            target=target,
            max_drop=max_drop,
            formats=_csv(formats),
            precisions=_csv(precisions),
            preset=preset,
            calib_force=force,
            budget_minutes=budget_minutes,
            threads=tuple(int(t) for t in threads.split(",") if t.strip()) if threads else None,
            tune_iters=iters,
            bench_iters=2 * iters,
            overwrite=overwrite,
            port=port,
            say=lambda m: con.print(m, markup=False, highlight=False) if m else None,
            progress=not json_out,
        )
    say_log(log)
    if json_out:
        print_json(rep.to_dict())
        if rep.recommended is None:
            raise typer.Exit(CheckFailed.exit_code)
        return
    t = Table(title=f"{rep.model}: every artifact, gated and measured here")
    for col, just in (
        ("artifact", "left"),
        ("computes", "left"),
        ("MB", "right"),
        (rep.metric.replace("map50_95", "mAP50-95"), "right"),
        ("drop", "right"),
        ("p50 ms", "right"),
    ):
        t.add_column(col, justify=just, no_wrap=col == "artifact")  # type: ignore[arg-type]
    best: dict[str, tuple[float | None, float | None, float | None]] = {}
    for c in rep.tune.candidates:
        if c.measurement is None:
            continue
        ms = c.measurement.e2e_ms.p50
        seen = best.get(c.artifact, (None, None, None))[0]
        if seen is None or ms < seen:
            best[c.artifact] = (ms, c.accuracy, c.drop)
    from cvdeploy.bundle import Bundle

    b = Bundle.load(rep.bundle)
    for a in b.manifest.artifacts:
        p50, acc, drop = best.get(a.id, (None, None, None))
        met = a.latest("metrics")
        if acc is None and met is not None:  # evaluated, not timed (the torch source)
            acc = (met.data.get("metrics") or {}).get(rep.metric)
        star = "*" if a.id == rep.recommended else ""
        t.add_row(
            a.id + star,
            a.runtime_precision,
            f"{a.size_bytes / 1e6:.1f}",
            "-" if acc is None else f"{acc:.4f}",
            "-" if drop is None else f"{drop:+.4f}",
            "-" if p50 is None else f"{p50:.2f}",
        )
    t.caption = "* = recommended (recorded in the bundle); p50 end to end, file read to detections"
    out_console().print(t)
    print_tune_summary(rep.tune, bundle_json=rep.bundle / "bundle.json")
    for note in rep.notes:
        if note not in rep.tune.notes:
            con.print(f"note: {escape(note)}", soft_wrap=True)
    con.print(f"report: {rep.report.resolve()}", soft_wrap=True)
    con.print(f"done in {rep.seconds:.0f} s", soft_wrap=True)
    if rep.recommended is None:
        raise CheckFailed(
            "no artifact kept the accuracy floor: nothing was recommended",
            hint="allow a larger --max-drop, or look at the reasons above",
        )
    if serve:
        _serve(rep.bundle, port)
        return
    for line in rep.next_steps:
        out_console().print(line, markup=False, highlight=False, soft_wrap=True)


def _serve(bundle: Path, port: int) -> None:
    """Serve the deployed bundle on 127.0.0.1 (as `cvdeploy serve BUNDLE --port PORT`)."""
    from cvdeploy.cli.serve_cmds import serve_cmd

    serve_cmd(source=bundle, port=port, host="127.0.0.1")
