"""`cvdeploy import`, `cvdeploy info`: create and inspect bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cvdeploy.bundle import Artifact, Bundle
from cvdeploy.cli.common import err_console, handle_errors, out_console, parse_imgsz, print_json
from cvdeploy.errors import UsageError


@handle_errors
def import_cmd(
    path: Annotated[Path, typer.Argument(help="ONNX file, OpenVINO .xml, or a folder holding one")],
    out: Annotated[Path, typer.Option("--out", "-o", help="bundle directory to create")],
    name: Annotated[
        str | None,
        typer.Option(
            help="bundle name, the model's name in the server's URLs (default: the --out "
            "folder's name)"
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="model family: ultralytics | yolox | yolov5 (Ultralytics exports are detected)"
        ),
    ] = None,
    names: Annotated[
        Path | None, typer.Option(help="class names: text file (one per line) or yaml/json list")
    ] = None,
    imgsz: Annotated[str | None, typer.Option(help="input size N or H,W")] = None,
    decoder: Annotated[str | None, typer.Option(help="yolov8 | yolox | yolov5 | logits")] = None,
    color: Annotated[str | None, typer.Option(help="rgb | bgr | gray")] = None,
    align: Annotated[
        str | None, typer.Option(help="letterbox alignment: center | top-left")
    ] = None,
    resize: Annotated[str | None, typer.Option(help="letterbox | stretch | crop")] = None,
    pad: Annotated[int | None, typer.Option(help="letterbox pad value 0..255")] = None,
    scale: Annotated[float | None, typer.Option(help="pixel scale, e.g. 0.00392156 or 1")] = None,
    mean: Annotated[
        str | None, typer.Option(help="per-channel mean after scaling, 'a,b,c'")
    ] = None,
    std: Annotated[str | None, typer.Option(help="per-channel std after scaling, 'a,b,c'")] = None,
    samples: Annotated[
        Path | None,
        typer.Option(
            "--data",
            "--samples",
            help="real images to keep in the bundle for later parity checks and benchmarks (a "
            "dataset yaml, COCO json or folder; up to 8 are stored; default: none)",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing bundle")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Wrap an external ONNX model or OpenVINO IR into a bundle (spec from metadata + flags)."""
    from cvdeploy.data import image_paths
    from cvdeploy.export import ImportOverrides, import_model, read_names_file

    def floats(v: str | None) -> tuple[float, ...] | None:
        if v is None:
            return None
        try:
            return tuple(float(x) for x in v.split(","))
        except ValueError:
            raise UsageError(f"expected comma-separated numbers, got {v!r}") from None

    ov = ImportOverrides(
        preset=preset,
        names=read_names_file(names) if names else None,
        imgsz=parse_imgsz(imgsz),
        decoder=decoder,
        color=color,
        align=align,
        resize=resize,
        pad=pad,
        scale=scale,
        mean=floats(mean),
        std=floats(std),
    )
    sample_files = image_paths(samples, what="--data")[:8] if samples else []
    bundle, notes = import_model(
        path,
        out=out,
        name=name or out.resolve().name,
        overrides=ov,
        overwrite=overwrite,
        samples=sample_files,
    )
    if json_out:
        print_json(
            {
                "bundle": str(bundle.path),
                "notes": notes,
                **bundle.manifest.model_dump(mode="json", include={"name", "spec"}),
            }
        )
        return
    con = err_console()
    for n in notes:
        con.print(f"[yellow]note:[/] {n}")
    art = bundle.manifest.artifacts[0]
    s = bundle.spec
    out_console().print(
        f"imported [bold]{bundle.name}[/] -> {bundle.path}\n"
        f"  artifact {art.id}: {art.format} {art.precision}, input {list(art.io.input.shape)}\n"
        f"  task {s.task}, {len(s.names)} classes, imgsz {s.imgsz[0]}x{s.imgsz[1]}, "
        f"decoder {s.decoder.kind}, {s.preprocess.resize}/{s.preprocess.align}, "
        f"{s.preprocess.color}, scale {s.preprocess.scale:g}"
    )


def artifact_summary(a: Artifact) -> dict[str, Any]:
    """Compact view of an artifact for `info`."""
    parity = a.latest("parity")
    metrics = {c.name: c.data.get("metrics", {}) for c in a.checks if c.kind == "metrics"}
    latency = [c.data for c in a.checks if c.kind == "latency"]
    return {
        "id": a.id,
        "format": a.format,
        "precision": a.precision,
        "inference_precision": a.runtime_precision,
        "files": [f.model_dump() for f in a.files],
        "size_bytes": a.size_bytes,
        "input": a.io.input.model_dump(),
        "layout": a.io.layout,
        "produced_by": a.produced_by.model_dump(),
        "parity": parity.model_dump(mode="json") if parity else None,
        "metrics": metrics,
        "latency": latency,
        "created": a.created.isoformat(),
    }


@handle_errors
def info_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory")],
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Show a bundle's spec, artifacts (format, precision, size, parity, metrics) and history."""
    b = Bundle.load(bundle)
    m = b.manifest
    if json_out:
        print_json(
            {
                "name": m.name,
                "path": str(b.path),
                "schema_version": m.schema_version,
                "spec": m.spec.model_dump(mode="json"),
                "artifacts": [artifact_summary(a) for a in m.artifacts],
                "recommended": m.recommended,
                "samples": [s.path for s in m.samples],
                "history": [h.model_dump(mode="json") for h in m.history],
            }
        )
        return
    con = out_console()
    s = m.spec
    pp = s.preprocess
    con.print(f"[bold]{m.name}[/]  ({b.path})")
    con.print(
        f"  task {s.task}, {len(s.names)} classes ({', '.join(s.names[:6])}"
        f"{', ...' if len(s.names) > 6 else ''}), imgsz {s.imgsz[0]}x{s.imgsz[1]}"
    )
    con.print(
        f"  preprocess: {pp.resize} {pp.align} pad {pp.pad_value}, {pp.color}, "
        f"scale {pp.scale:g}, mean {pp.mean}, std {pp.std}"
    )
    con.print(
        f"  decoder: {s.decoder.kind} conf {s.decoder.conf} iou {s.decoder.iou} "
        f"max_det {s.decoder.max_det}"
    )
    from cvdeploy.precision import cpu_flags, describe_native, native_precisions

    flags = cpu_flags()
    here = native_precisions(flags)
    t = Table(title="artifacts")
    for col in (
        "id",
        "format",
        "precision",
        "computes in",
        "size",
        "input",
        "parity",
        "mAP50-95 / top1",
        "latency p50",
    ):
        t.add_column(col)
    for a in m.artifacts:
        parity = a.latest("parity")
        met = a.latest("metrics")
        lat = a.latest("latency")
        mval = "-"
        if met is not None:
            md = met.data.get("metrics", {})
            v = md.get("map50_95", md.get("top1"))
            mval = f"{v:.4f} ({met.name})" if isinstance(v, float) else "-"
        computes = a.runtime_precision
        if computes not in here and a.format != "tensorrt":
            computes += " (not native here: refused)"
        t.add_row(
            a.id,
            a.format,
            a.precision,
            computes,
            f"{a.size_bytes / 1e6:.2f} MB",
            str(list(a.io.input.shape)),
            "-" if parity is None else ("pass" if parity.passed else "FAIL"),
            mval,
            f"{lat.data.get('e2e_ms', {}).get('p50', float('nan')):.2f} ms" if lat else "-",
        )
    con.print(t)
    con.print(f"  this CPU: {describe_native(flags)}; each artifact runs at the precision above")
    if m.recommended:
        con.print(recommended_table(m.recommended))
    con.print("history:")
    for h in m.history:
        con.print(f"  {h.time.isoformat()}  {h.action}  {_short(h.details)}")


def recommended_table(r: Any) -> Table:
    """The bundle's recommended configuration as a two-column table."""
    t = Table(title="recommended configuration (used by predict, eval, bench, serve)")
    t.add_column("setting")
    t.add_column("value")
    t.add_row("artifact", r.artifact)
    t.add_row("threads", str(r.options.threads or "runtime default"))
    for k, v in r.options.extra.items():
        t.add_row(k, str(v))
    if r.accuracy is not None:
        floor = f" (floor {r.floor:.4f})" if r.floor is not None else ""
        t.add_row(r.metric or "accuracy", f"{r.accuracy:.4f}{floor} on {r.dataset}")
    if r.e2e_ms:
        t.add_row("end to end p50", f"{r.e2e_ms.get('p50', float('nan')):.2f} ms")
    if r.throughput_ips is not None:
        t.add_row("throughput", f"{r.throughput_ips:.1f} images/s")
    t.add_row("chosen by", f"{r.source} for {r.target}" + (f", {r.measured}" if r.measured else ""))
    return t


def _short(d: dict[str, Any]) -> str:
    parts = [f"{k}={v}" for k, v in d.items() if k not in ("notes",)]
    text = ", ".join(parts)
    return text if len(text) < 110 else text[:107] + "..."
