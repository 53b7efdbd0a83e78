"""`cvdeploy tune`: the fastest configuration of a bundle here, within an accuracy floor."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cvdeploy.cli.common import (
    VerboseOpt,
    err_console,
    error_object,
    handle_errors,
    out_console,
    parse_imgsz,
    print_json,
    say_log,
    third_party_log,
    third_party_output_to_stderr,
)

_STATUS_STYLE = {"ok": "green", "too-inaccurate": "yellow", "failed": "red", "skipped": "dim"}


def _list(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(dict.fromkeys(p.strip().lower() for p in value.split(",") if p.strip()))
    return items or None


def _threads(value: str | None) -> tuple[int, ...] | None:
    items = _list(value)
    if items is None:
        return None
    try:
        out = tuple(int(p) for p in items)
    except ValueError:
        raise typer.BadParameter(f"--threads must be integers like 1,2, got {value!r}") from None
    if min(out) < 1:
        raise typer.BadParameter("--threads values must be >= 1")
    return out


def tune_table(rep: object, *, wide: bool = False) -> Table:
    """The candidates of a :class:`~cvdeploy.workflows.tune_report.TuneReport` as a rich table.

    Narrow by default (it stays readable in 80 columns; the reasons of failed candidates are
    summarised below it): ``wide`` adds p90, images/s and each row's message.
    """
    from cvdeploy.workflows.tune_report import TuneReport

    assert isinstance(rep, TuneReport)
    metric = "mAP50-95" if rep.metric == "map50_95" else rep.metric
    rec = rep.recommended
    table = Table(
        title=f"tune {rep.bundle}: fastest by {rep.target}, floor {metric} {rep.floor:.4f}",
        caption="* = recommended (recorded); p50 = end to end (file read to detections), "
        "± = spread over the interleaved rounds",
    )
    cols: list[tuple[str, str]] = [
        ("artifact", "left"),
        ("settings", "left"),
        (metric, "right"),
        ("drop", "right"),
        ("p50 ms", "right"),
    ]
    if wide:
        cols += [("p90 ms", "right"), ("img/s", "right")]
    cols.append(("status", "left"))
    for col, just in cols:
        table.add_column(
            col,
            justify=just,  # type: ignore[arg-type]
            no_wrap=col in ("artifact", "status"),
            overflow="fold",
        )
    for c in rep.candidates:
        m = c.measurement
        star = (
            "*"
            if rec is not None
            and c.artifact == rec.artifact
            and c.settings is not None
            and c.settings.to_dict() == rec.options.model_dump()
            else ""
        )
        style = _STATUS_STYLE.get(c.status, "")
        p50 = "-" if m is None else f"{m.e2e_ms.p50:.2f}"
        if m is not None and c.spread is not None:
            p50 += f" ±{c.spread / 2:.2f}"
        row = [
            c.artifact + star + (" (new)" if c.created else ""),
            c.settings.label() if c.settings else "-",
            "-" if c.accuracy is None else f"{c.accuracy:.4f}",
            "-" if c.drop is None else f"{c.drop:+.4f}",
            p50,
        ]
        if wide:
            row += [
                "-" if m is None else f"{m.e2e_ms.p90:.2f}",
                "-" if m is None else f"{m.throughput_ips:.1f}",
            ]
        status = f"[{style}]{c.status}[/]"
        if wide and c.message:
            status += f" {c.message}"
        row.append(status)
        table.add_row(*row)
    return table


def print_tune_summary(rep: object, *, bundle_json: Path) -> None:
    """Below the table, where the eye lands: what could not be made and why (each reason once,
    with its fix), what is within noise of the winner, and what was recorded."""
    from cvdeploy.workflows.tune_report import TuneReport

    assert isinstance(rep, TuneReport)
    errc = err_console()
    failures = rep.failure_summary()
    if failures:
        tried = len({c.artifact for c in rep.candidates})
        bad = len({a for _, _, ids in failures for a in ids})
        errc.print(f"[red]{bad} of {tried} candidates could not be made or measured:[/]")
        for reason, fix, ids in failures:
            errc.print(f"  - {', '.join(ids)}: {escape(reason)}", soft_wrap=True)
            if fix:
                errc.print(f"    fix: {escape(fix)}", soft_wrap=True)
    for n in rep.notes:
        errc.print(f"note: {n}", markup=False, soft_wrap=True)
    noise = rep.within_noise()
    if noise:
        errc.print(
            "within noise of the recommended configuration (their p50 falls inside its "
            f"measured spread; the choice between them is not significant): {', '.join(noise)}",
            markup=False,
            soft_wrap=True,
        )
    if rep.recommended is not None:
        r = rep.recommended
        settings = ", ".join(
            [f"threads {r.options.threads or 'default'}"]
            + [f"{k} {v}" for k, v in r.options.extra.items()]
        )
        errc.print(
            f"recommended: {r.artifact} ({settings}), e2e p50 {r.e2e_ms['p50']:.2f} ms, "
            f"{rep.metric} {r.accuracy:.4f}; recorded in {bundle_json}"
            + (f"; added {', '.join(rep.kept)}" if rep.kept else ""),
            markup=False,
            soft_wrap=True,
        )


@handle_errors
def tune_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory")],
    data: Annotated[
        Path, typer.Option(help="labelled dataset (data.yaml, COCO json, class folders)")
    ],
    min_map: Annotated[
        float | None, typer.Option(help="absolute accuracy floor (mAP50-95, top-1 for classifiers)")
    ] = None,
    max_drop: Annotated[
        float | None,
        typer.Option(help="largest drop below the FP32 reference (default 0.01)"),
    ] = None,
    target: Annotated[
        str, typer.Option(help="latency (e2e p50, batch 1) or throughput (images/s)")
    ] = "latency",
    formats: Annotated[
        str | None, typer.Option(help="formats to try, e.g. onnx,openvino (default: those)")
    ] = None,
    precisions: Annotated[
        str,
        typer.Option(
            help="artifact precisions to try; fp16/bf16/int8-bf16 compute only where this "
            "CPU has native arithmetic for it (the others are listed as not tried)"
        ),
    ] = "fp32,fp16,bf16,int8,int8-bf16",
    calib: Annotated[
        Path | None, typer.Option(help="INT8 calibration images (default: --data)")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="accept fewer than 100 calibration images")
    ] = False,
    gate_cosine: Annotated[
        float | None,
        typer.Option(help="INT8 gate: minimum raw-output cosine when quantizing (recorded)"),
    ] = None,
    imgsz: Annotated[
        str | None, typer.Option(help="input size N or H,W (dynamic-size artifacts)")
    ] = None,
    threads: Annotated[
        str | None, typer.Option(help="intra-op threads to try, e.g. 1,2 (default: half, all)")
    ] = None,
    budget_minutes: Annotated[
        float | None, typer.Option(help="stop trying candidates after this many minutes")
    ] = None,
    iters: Annotated[int, typer.Option(help="measured requests per candidate")] = 30,
    warmup: Annotated[int, typer.Option(help="warm-up requests per candidate (excluded)")] = 5,
    keep: Annotated[
        str, typer.Option(help="new artifacts to keep: all, or recommended (and its sources)")
    ] = "all",
    split: Annotated[str, typer.Option(help="dataset split")] = "val",
    strict: Annotated[
        bool, typer.Option("--strict", help="exit 1 when any requested candidate failed")
    ] = False,
    wide: Annotated[
        bool, typer.Option("--wide", help="all columns (p90, images/s, messages) in the table")
    ] = False,
    verbose: VerboseOpt = False,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Find the fastest artifact + runtime settings here that keep the accuracy floor.

    Makes the missing candidate artifacts (export for FP32/FP16, quantize for INT8,
    calibrating on DATA), tries runtime settings for each (ONNX Runtime graph optimisation,
    threads, execution mode; OpenVINO hints, streams, precision), measures accuracy on DATA
    (once per artifact) and end-to-end latency, and records the fastest configuration that
    keeps the floor as the bundle's recommended one (used by predict, eval, bench, serve).
    Exit 1 when no candidate keeps the floor (nothing is recorded then).
    """
    from cvdeploy.bundle import Bundle
    from cvdeploy.errors import CheckFailed
    from cvdeploy.workflows.tune import tune_bundle
    from cvdeploy.workflows.tune_report import TuneOptions

    opts = TuneOptions(
        min_map=min_map,
        max_drop=max_drop,
        target=target,
        formats=_list(formats),
        precisions=_list(precisions) or ("fp32",),
        calib=calib,
        calib_force=force,
        gate_cosine=gate_cosine,
        imgsz=parse_imgsz(imgsz),
        threads=_threads(threads),
        budget_minutes=budget_minutes,
        warmup=warmup,
        iters=iters,
        split=split,
        keep=keep,
        progress=not json_out,
    )
    errc = err_console()
    b = Bundle.load(bundle)
    log = None if verbose else third_party_log("tune")
    with third_party_output_to_stderr(log):
        rep = tune_bundle(b, data, options=opts, log=lambda m: errc.print(m, markup=False))
    say_log(log)
    failure: CheckFailed | None = None
    if rep.recommended is None:
        counts = {s: sum(c.status == s for c in rep.candidates) for s in _STATUS_STYLE}
        failure = CheckFailed(
            f"no candidate keeps the accuracy floor ({rep.metric} >= {rep.floor:.4f}): "
            + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
            + "; nothing was recorded",
            hint="allow a larger --max-drop / lower --min-map, add --precisions fp32, "
            "or look at the failed candidates' reasons above",
        )
    elif strict and rep.failed:
        failure = CheckFailed(
            f"{len(rep.failed)} requested candidate(s) could not be made or measured "
            "(--strict); the recommendation was recorded",
            hint="see the reasons above, or drop --strict",
        )
    if json_out:  # one JSON object on stdout, with the error in it when there is one
        obj = rep.to_dict()
        if failure is not None:
            obj["error"] = error_object(
                failure.message,
                hint=failure.hint,
                exit_code=failure.exit_code,
                type_name=type(failure).__name__,
            )["error"]
            errc.print(f"error: {failure.message}", markup=False, soft_wrap=True)
        print_json(obj)
        if failure is not None:
            raise typer.Exit(failure.exit_code)
        return
    out_console().print(tune_table(rep, wide=wide))
    print_tune_summary(rep, bundle_json=b.path / "bundle.json")
    if failure is not None:
        raise failure
