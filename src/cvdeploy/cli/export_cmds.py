"""`cvdeploy export`: produce deployable artifacts, each through the parity gate."""

from __future__ import annotations

from dataclasses import asdict
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
    parse_imgsz,
    print_json,
    say_log,
    third_party_log,
    third_party_output_to_stderr,
)
from cvdeploy.errors import CheckFailed


@handle_errors
def export_cmd(
    source: Annotated[
        str,
        typer.Argument(
            help="zoo name (detector-n), training checkpoint (.pt), module:factory (with --spec), "
            "an existing bundle directory, or an .onnx file (imported into --out first)"
        ),
    ],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="comma-separated targets, each FORMAT or FORMAT:PRECISION, e.g. "
            "onnx,openvino:bf16,tflite (formats: onnx, openvino, tflite, and tensorrt, which "
            "needs an NVIDIA GPU and has not yet been run on one by this project; precisions: "
            "fp32, fp16, bf16 and int8-bf16 for openvino where the CPU has them natively, "
            "int8 for tensorrt from a Q/DQ ONNX)",
        ),
    ] = "onnx",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="bundle directory")] = None,
    imgsz: Annotated[str | None, typer.Option(help="input size N or H,W")] = None,
    batch: Annotated[int, typer.Option(help="fixed batch size")] = 1,
    dynamic: Annotated[bool, typer.Option(help="dynamic batch dimension")] = False,
    half: Annotated[bool, typer.Option(help="FP16 weights where the format supports it")] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset")] = 17,
    simplify: Annotated[
        bool,
        typer.Option(
            help="simplify the ONNX graph with onnxslim (kept only if outputs stay equal)"
        ),
    ] = True,
    spec: Annotated[
        Path | None, typer.Option(help="spec yaml/json for a module:factory source")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="real images for the parity gate (folder or dataset yaml); default: the bundle's "
            "samples, or generated synthetic images for zoo models"
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace existing artifacts / bundle")] = False,
    verbose: VerboseOpt = False,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Export a model to deployment formats; every artifact must pass the parity gate."""
    from cvdeploy.export import ExportOptions, export_model

    opts = ExportOptions(
        imgsz=parse_imgsz(imgsz),
        batch=batch,
        dynamic=dynamic,
        opset=opset,
        simplify=simplify,
        half=half,
    )
    log = None if verbose else third_party_log("export")
    with third_party_output_to_stderr(log):
        report = export_model(
            source,
            formats=format.split(","),
            out=out,
            options=opts,
            spec_file=spec,
            data=data,
            overwrite=overwrite,
        )
    say_log(log)
    if json_out:
        print_json(
            {
                "bundle": str(report.bundle),
                "source": report.source,
                "ok": report.ok,
                "notes": report.notes,
                "outcomes": [
                    {
                        "artifact": o.artifact_id,
                        "status": o.status,
                        "message": o.message,
                        "parity": None
                        if o.parity is None
                        else {
                            "passed": o.parity.passed,
                            "match_fraction": o.parity.match_fraction,
                            "outputs": [asdict(s) for s in o.parity.outputs],
                        },
                    }
                    for o in report.outcomes
                ],
            }
        )
    else:
        t = Table(title=f"export from {report.source} -> {report.bundle}")
        for c in ("artifact", "status", "parity (cosine / max abs err / matched)", "note"):
            t.add_column(c)
        for o in report.outcomes:
            p = o.parity
            par = (
                "-"
                if p is None
                else (
                    f"{min(s.cosine for s in p.outputs):.6f} / "
                    f"{max(s.max_abs for s in p.outputs):.2e} / {p.match_fraction:.1%}"
                )
            )
            t.add_row(o.artifact_id, o.status, par, escape(o.message))
        out_console().print(t)
        for note in report.notes:
            err_console().print(f"note: {escape(note)}")
    if not report.ok:
        err_console().print("[red]some artifacts were not added (see above); the others were")
        raise typer.Exit(CheckFailed.exit_code)
