"""`cvdeploy bench`: latency, throughput, memory and per-operator profiles of a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cvdeploy.bundle import Bundle
from cvdeploy.cli.common import err_console, handle_errors, out_console, parse_imgsz, print_json
from cvdeploy.cli.protect_cmds import KeyEnv, KeyFile


def _ints(value: str | None, what: str) -> list[int | None]:
    """Parse ``1,8`` into ints (``None`` input -> ``[None]``, i.e. the default)."""
    if value is None:
        return [None]
    out: list[int | None] = []
    for part in value.split(","):
        p = part.strip()
        if not p:
            continue
        if p in ("default", "auto"):
            out.append(None)
            continue
        try:
            n = int(p)
        except ValueError:
            raise typer.BadParameter(
                f"{what} must be a comma-separated list of integers, got {value!r}"
            ) from None
        if n < 1:
            raise typer.BadParameter(f"{what} values must be >= 1, got {n}")
        out.append(n)
    if not out:
        raise typer.BadParameter(f"{what} is empty")
    return out


@handle_errors
def bench_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory")],
    artifact: Annotated[
        str | None,
        typer.Option(
            help="artifact id, several ids comma-separated, or 'all' "
            "(default: the recommended / first runnable)"
        ),
    ] = None,
    data: Annotated[
        list[Path] | None,
        typer.Option(
            "--data",
            "--images",
            help="real images: a dataset yaml, a COCO json, a folder or files (default: the "
            "bundle's sample images, else the images of its last eval)",
        ),
    ] = None,
    batch: Annotated[str, typer.Option(help="batch sizes, e.g. 1,8")] = "1",
    imgsz: Annotated[
        list[str] | None,
        typer.Option(help="input size N or H,W (dynamic-size artifacts only); repeat to sweep"),
    ] = None,
    threads: Annotated[
        str | None, typer.Option(help="intra-op threads per runner, e.g. 1,2 (default: backend's)")
    ] = None,
    warmup: Annotated[int, typer.Option(help="warm-up requests per worker (excluded)")] = 5,
    iters: Annotated[
        int | None, typer.Option(help="measured requests per combination (default 100)")
    ] = None,
    seconds: Annotated[
        float | None, typer.Option(help="measure for this many seconds instead of --iters")
    ] = None,
    rounds: Annotated[
        int,
        typer.Option(
            help="measure in this many alternating rounds (--iters/--seconds split between "
            "them); each figure is the median round, with the spread between rounds",
            min=1,
        ),
    ] = 3,
    concurrency: Annotated[
        str, typer.Option(help="requests in flight, e.g. 1,4,16 (one runner per worker thread)")
    ] = "1",
    conf: Annotated[
        float | None, typer.Option(help="confidence threshold (default: the spec's)")
    ] = None,
    profile: Annotated[
        bool, typer.Option("--profile", help="per-operator times from the runtime's profiler")
    ] = False,
    record: Annotated[
        bool, typer.Option(help="record results as latency checks in the bundle")
    ] = True,
    key_file: KeyFile = None,
    key_env: KeyEnv = None,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    html: Annotated[
        Path | None, typer.Option(help="write an HTML report (table + Pareto plot) here")
    ] = None,
) -> None:
    """Benchmark a bundle on real images through the served pipeline.

    Reports cold start apart from steady state (warm-up excluded), p50/p90/p99/mean/std per
    stage (decode, preprocess, inference, postprocess) and end to end, throughput, peak
    memory, file size and the recorded accuracy, over every combination of the lists given.
    """
    from cvdeploy.bench.report import html_report, results_table
    from cvdeploy.bench.sweep import run_sweep
    from cvdeploy.errors import UsageError
    from cvdeploy.pipeline.predictor import Thresholds

    if iters is not None and seconds is not None:
        raise UsageError("--iters and --seconds exclude each other", hint="give one of them")
    from cvdeploy.security.crypto import key_from_options, model_loader

    b = Bundle.load(bundle, loader=model_loader(key_from_options(key_file, key_env)))
    sizes = [parse_imgsz(s) for s in imgsz] if imgsz else [None]
    batches = [n or 1 for n in _ints(batch, "--batch")]
    conc = [n or 1 for n in _ints(concurrency, "--concurrency")]
    rep = run_sweep(
        b,
        data or None,
        artifacts=artifact,
        batches=batches,
        imgszs=sizes,
        threads=_ints(threads, "--threads"),
        concurrency=conc,
        warmup=warmup,
        iters=iters,
        seconds=seconds,
        thresholds=Thresholds(conf=conf),
        profile=profile,
        record=record,
        progress=not json_out,
        rounds=rounds,
    )
    if not rep.results:
        reasons = "; ".join(sorted({f"{s.artifact}: {s.reason}" for s in rep.skipped}))
        raise UsageError(
            f"nothing could be benchmarked: every combination was skipped ({reasons})",
            hint="drop --imgsz/--batch values that fixed-shape artifacts cannot take",
        )
    if html is not None:
        try:
            html.parent.mkdir(parents=True, exist_ok=True)
            html.write_text(html_report(rep), encoding="utf-8")
        except OSError as exc:
            raise UsageError(
                f"cannot write {html}: {exc}", hint="choose another --html path"
            ) from exc
    if json_out:
        print_json(rep.to_dict())
        return
    con = out_console()
    errc = err_console()
    if rep.results:
        con.print(results_table(rep))
    for note in rep.notes:
        errc.print(f"note: {note}")
    skips: dict[tuple[str, str], int] = {}
    for s in rep.skipped:  # one line per artifact and reason, however many combinations
        skips[(s.artifact, s.reason)] = skips.get((s.artifact, s.reason), 0) + 1
    for (aid, reason), n in skips.items():
        times = f" ({n} combinations)" if n > 1 else ""
        errc.print(f"skipped {aid}: {reason}{times}", soft_wrap=True)
    for r in rep.results:
        for note in r.notes:
            errc.print(f"note ({r.artifact}): {note}")
        prof = r.profile
        if prof:
            con.print(
                f"[bold]{r.artifact}[/] batch {r.batch} {r.imgsz[0]}x{r.imgsz[1]} threads "
                f"{r.threads or 'default'}: operators ({prof['source']}, "
                f"{prof['total_ms']:.2f} ms per inference over {prof['runs']} runs):"
            )
            for o in prof["by_type"][:10]:
                con.print(f"  {o['op_type']:<24} {o['ms']:8.3f} ms  {100 * o['share']:5.1f}%")
    if rep.recommended:
        con.print(f"recommended: {rep.recommendation}")
    if record:
        errc.print(f"recorded {len(rep.results)} latency check(s) in {b.path / 'bundle.json'}")
    if html is not None:
        errc.print(f"wrote {html}")
