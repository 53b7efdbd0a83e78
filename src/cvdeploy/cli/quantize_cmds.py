"""`cvdeploy quantize`: INT8 post-training quantization, and `--explain` for its speed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
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
from cvdeploy.errors import UsageError

LATENCY_IMAGES = 20

if TYPE_CHECKING:
    from cvdeploy.optimize.explain import Explanation


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _print_explanation(exp: Explanation) -> None:
    con = out_console()
    lat = exp.latency
    if exp.speedup is not None:
        con.print(
            f"INT8 {exp.artifact} vs FP32 {exp.source}: [bold]{exp.speedup:.2f}x[/] end to end "
            f"(p50 {lat['fp32'].p50_ms:.1f} -> {lat['int8'].p50_ms:.1f} ms; inference "
            f"{lat['fp32'].inference_p50_ms:.1f} -> {lat['int8'].inference_p50_ms:.1f} ms)"
        )
    elif "int8" in lat:
        con.print(
            f"INT8 {exp.artifact}: p50 {lat['int8'].p50_ms:.1f} ms end to end (inference "
            f"{lat['int8'].inference_p50_ms:.1f} ms); no FP32 artifact to compare with"
        )
    for note in exp.notes:
        con.print(f"note: {note}")
    flags = ", ".join(exp.int8_instructions) or "none"
    con.print(f"CPU: {exp.cpu.get('model')}; INT8 dot-product instructions: {flags}")
    ops = exp.ops
    if ops.get("format") == "onnx":
        con.print(
            f"graph: {ops['qdq_nodes']} Q/DQ nodes, {ops['qdq_left_after_optimization']} left "
            f"after ONNX Runtime optimization, {ops['fused_int8_ops']} fused INT8 ops, "
            f"{ops['dynamic_ops']} dynamic-quantization ops, {ops['float_compute_ops']} of "
            f"{ops['compute_ops']} conv/matmul in float"
        )
    elif ops.get("format") == "openvino" and "compute_ops" in ops:
        con.print(
            f"graph: {ops['fake_quantize']} FakeQuantize ops; CPU plugin runs "
            f"{ops['int8_compute_ops']} of {ops['compute_ops']} conv/matmul in INT8"
        )
    if not exp.findings:
        if exp.speedup is not None:
            con.print("INT8 meets the 1.3x target: nothing to diagnose")
        return
    con.print("[bold]why INT8 is not faster:[/]")
    for f in exp.findings:
        con.print(f"- [bold]{f.code}[/]: {f.message}")
        con.print(f"  [yellow]try:[/] {f.fix}")


@handle_errors
def quantize_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory")],
    data: Annotated[
        Path | None,
        typer.Option(
            help="the images: a dataset yaml (train split, else val), a COCO json or an image "
            "folder; calibration set, and with --max-drop the labelled set the mAP is measured on"
        ),
    ] = None,
    calib: Annotated[
        Path | None,
        typer.Option(help="a separate calibration set (default: --data)"),
    ] = None,
    backend: Annotated[
        str,
        typer.Option(
            help="openvino (NNCF), onnxruntime (Q/DQ), or tensorrt (symmetric Q/DQ ONNX; "
            "build the engine with `cvdeploy export BUNDLE --format tensorrt:int8` on a GPU)"
        ),
    ] = "openvino",
    engine: Annotated[
        str,
        typer.Option(
            help="with --backend onnxruntime: ort (quantize_static) or nncf (NNCF's ONNX "
            "backend, far more accurate on some models); both write a Q/DQ graph"
        ),
    ] = "ort",
    calib_size: Annotated[int, typer.Option(help="largest number of calibration images")] = 300,
    method: Annotated[
        str, typer.Option(help="range estimation: minmax, entropy or percentile")
    ] = "minmax",
    per_channel: Annotated[
        bool, typer.Option("--per-channel/--per-tensor", help="weight scales per channel")
    ] = True,
    max_drop: Annotated[
        float | None,
        typer.Option(help="largest acceptable absolute mAP50-95 drop, measured on --data"),
    ] = None,
    eval_data: Annotated[
        Path | None,
        typer.Option(help="a separate labelled set for the mAP (default: --data with labels)"),
    ] = None,
    keep_float: Annotated[
        list[str] | None,
        typer.Option(help="glob of node names to keep in float (repeatable)"),
    ] = None,
    force: Annotated[bool, typer.Option(help="accept fewer than 100 calibration images")] = False,
    source: Annotated[
        str | None, typer.Option(help="FP32 artifact to quantize (default: per backend)")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing INT8 artifact")] = False,
    gate_cosine: Annotated[
        float | None,
        typer.Option(
            help="override the INT8 gate's minimum cosine of raw outputs (recorded); "
            "raw detection heads (e.g. YOLOX) score low on empty anchors"
        ),
    ] = None,
    explain: Annotated[
        bool,
        typer.Option("--explain", help="only diagnose the speed of an existing INT8 artifact"),
    ] = False,
    artifact: Annotated[
        str | None, typer.Option(help="with --explain: the INT8 artifact (default: latest)")
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            hidden=True,
            help="with --explain: images to time on (the same as --data)",
        ),
    ] = None,
    measure: Annotated[
        bool, typer.Option(help="time FP32 and INT8 side by side and diagnose")
    ] = True,
    threads: Annotated[int | None, typer.Option(help="runtime threads for timing")] = None,
    verbose: VerboseOpt = False,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """INT8 post-training quantization with accuracy control and a speed diagnosis.

    The INT8 artifact is calibrated with the bundle spec's preprocessing, keeps the
    detection head's decoding in float, must pass the integrity gate against its FP32
    source, and is added to the bundle only then. `--explain` answers "why is INT8 not
    faster?" for an existing INT8 artifact.
    """
    from cvdeploy.bundle import Bundle

    b = Bundle.load(bundle)
    if explain:
        from cvdeploy.data import image_paths
        from cvdeploy.optimize.explain import explain_artifact

        timing = images or data
        paths = image_paths(timing, what="--data")[:LATENCY_IMAGES] if timing else []
        exp = explain_artifact(b, artifact, images=paths, threads=threads)
        if json_out:
            print_json(exp.to_dict())
        else:
            _print_explanation(exp)
        return
    calib = calib or data
    if calib is None:
        raise UsageError(
            "quantize needs images to calibrate on",
            hint="pass --data DATA (or --calib DATA for a calibration set alone; --explain "
            "diagnoses an existing INT8 artifact)",
        )
    if max_drop is not None and eval_data is None:
        if data is None:
            raise UsageError(
                "--max-drop needs a labelled set to measure the mAP on",
                hint="pass --data DATA.yaml (or --eval-data for a separate labelled set)",
            )
        eval_data = data
    from cvdeploy.optimize import QuantizeOptions, quantize_bundle

    opts = QuantizeOptions(
        backend=backend,
        engine=engine,
        calib_size=calib_size,
        method=method,
        per_channel=per_channel,
        max_drop=max_drop,
        eval_data=eval_data,
        keep_float=tuple(keep_float or ()),
        force=force,
        source=source,
        overwrite=overwrite,
        gate_cosine=gate_cosine,
        measure=measure,
        threads=threads,
        progress=not json_out,
    )
    con = err_console()
    log = None if verbose else third_party_log("quantize")
    with third_party_output_to_stderr(log):
        rep = quantize_bundle(b, calib, options=opts, log=lambda m: con.print(m, markup=False))
    say_log(log)
    if json_out:
        print_json(rep.to_dict())
        return
    _print_report(rep)


def _print_report(rep: Any) -> None:
    con = out_console()
    t = Table(title=f"{rep.bundle}: {rep.source} -> {rep.artifact} ({rep.backend})")
    for col in ("artifact", "precision", "size MB", "mAP50-95", "p50 ms", "inference ms"):
        t.add_column(col, justify="left" if col in ("artifact", "precision") else "right")
    for r in rep.rows:
        t.add_row(
            r.artifact,
            r.precision,
            f"{r.size_mb:.2f}",
            _fmt(r.map50_95, ".4f"),
            _fmt(r.p50_ms, ".1f"),
            _fmt(r.inference_p50_ms, ".1f"),
        )
    con.print(t)
    cal = rep.calibration
    con.print(
        f"calibration: {cal['calib_count']} images ({cal['calib_method']}), list sha256 "
        f"{cal['calib_sha256'][:12]}; head kept in float: {len(rep.head_float)} node(s); "
        f"also in float: {len(rep.kept_float)}"
    )
    p = rep.parity
    con.print(
        f"integrity gate: passed (cosine {min(p['cosine']):.4f}, "
        f"{p['match_fraction']:.0%} of detections agree)"
    )
    if rep.map_drop is not None:
        con.print(f"mAP50-95 drop: {rep.map_drop:.4f}")
    if rep.budget:
        con.print(f"budget {rep.budget['max_drop']}: met")
    for note in rep.notes:
        con.print(f"note: {note}")
    if rep.explanation is not None:
        _print_explanation(rep.explanation)
