"""Presenting benchmark results: a terminal table, a Pareto plot, an HTML report.

The plot is drawn with matplotlib's object API on an Agg canvas (no pyplot, no global
backend switch), so the library changes no process-wide setting. matplotlib is the
``report`` extra; without it the plot functions raise
:class:`~cvdeploy.errors.BackendUnavailable` saying how to install it.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.table import Table

from cvdeploy.bench.harness import BenchResult
from cvdeploy.bench.sweep import SweepReport
from cvdeploy.errors import BackendUnavailable


def _size(hw: Sequence[int]) -> str:
    return str(hw[0]) if hw[0] == hw[1] else f"{hw[0]}x{hw[1]}"


def _acc(r: BenchResult) -> tuple[float | None, str]:
    a = r.accuracy or {}
    v = a.get("map50_95", a.get("top1"))
    if not isinstance(v, float):
        return None, "-"
    at = a.get("imgsz")
    where = f"@{_size(at)}" if at else ""
    star = "" if a.get("same_imgsz") else "*"
    return v, f"{v:.4f}{where}{star}"


def _ms(v: float) -> str:
    return f"{v:.2f}" if v < 100 else f"{v:.1f}"


def results_table(report: SweepReport) -> Table:
    """A compact rich table: one row per result, stage means and the pre+post share."""
    t = Table(
        title=f"bench {report.bundle} ({report.images} images)",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
        collapse_padding=True,
    )
    cols = (
        "computes", "b", "size", "thr", "conc", "cold", "p50", "p90", "p99", "dec", "pre",
        "inf", "post", "pp%", "img/s", "rssMB", "MB", "accuracy",
    )  # fmt: skip
    t.add_column("artifact", no_wrap=True)
    for name in cols:
        t.add_column(name, justify="right", no_wrap=True)
    for r in report.results:
        s = r.stages_ms
        mark = "*" if r.artifact == report.recommended else ""
        t.add_row(
            r.artifact + mark,
            r.inference_precision,
            str(r.batch),
            _size(r.imgsz),
            str(r.threads or "-"),
            str(r.concurrency),
            f"{r.cold_start_ms:.0f}",
            _ms(r.e2e_ms.p50) + ("" if r.spread is None else f" ±{100 * r.spread / 2:.0f}%"),
            _ms(r.e2e_ms.p90),
            _ms(r.e2e_ms.p99),
            _ms(s["decode"].mean),
            _ms(s["preprocess"].mean),
            _ms(s["inference"].mean),
            _ms(s["postprocess"].mean),
            f"{100 * r.pre_post_share:.1f}",
            f"{r.throughput_ips:.1f}",
            f"{r.peak_rss_mb:.0f}",
            f"{r.file_size_bytes / 1e6:.1f}",
            _acc(r)[1],
        )
    t.caption = (
        "computes = the precision the runtime computed in; ms per request of b images; "
        "size = input; thr = threads (- default); conc = in "
        "flight; cold = load + first request; p50/p90/p99 end to end (dec + pre + inf + "
        "post), ± half the spread of p50 between rounds; stage columns are means; pp% = "
        "(pre + post) share of mean e2e; rssMB = peak "
        "RSS; MB = file size; accuracy = latest recorded mAP50-95/top1 @ input size (* other "
        "size); artifact* = recommended"
    )
    return t


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated in (lower latency, higher accuracy), by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def pareto_png(results: Sequence[BenchResult], *, title: str = "accuracy vs latency") -> bytes:
    """A PNG of accuracy (mAP50-95 or top-1) against per-image e2e p50 latency.

    Results without a recorded accuracy are left out and listed in the figure's footnote.

    Raises:
        BackendUnavailable: matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise BackendUnavailable(
            "the Pareto plot needs matplotlib", hint="pip install 'cvdeploy[report]'"
        ) from exc
    pts: list[tuple[float, float]] = []
    labels: list[str] = []
    missing: list[str] = []
    metric = "mAP50-95"
    for r in results:
        v, _ = _acc(r)
        if v is None:
            missing.append(r.artifact)
            continue
        if "map50_95" not in (r.accuracy or {}):
            metric = "top-1"
        pts.append((r.e2e_ms.p50 / r.batch, v))
        thr = f" t{r.threads}" if r.threads else ""
        conc = f" c{r.concurrency}" if r.concurrency > 1 else ""
        labels.append(f"{r.artifact} b{r.batch} {r.imgsz[0]}px{thr}{conc}")
    fig = Figure(figsize=(7, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if pts:
        xs, ys = zip(*pts, strict=True)
        ax.scatter(xs, ys, color="tab:blue", zorder=3)
        for (x, y), lab in zip(pts, labels, strict=True):
            ax.annotate(lab, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        front = pareto_front(pts)
        ax.plot(
            [pts[i][0] for i in front],
            [pts[i][1] for i in front],
            color="tab:orange",
            linestyle="--",
            label="Pareto front",
            zorder=2,
        )
        ax.legend(loc="best", fontsize=8)
        ax.margins(x=0.2, y=0.15)
    else:
        ax.text(
            0.5,
            0.5,
            "no accuracy recorded: run `cvdeploy eval`",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_xlabel("end-to-end latency p50 per image (ms)")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if missing:
        fig.text(0.01, 0.01, "no accuracy recorded: " + ", ".join(sorted(set(missing))), fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _td(v: Any) -> str:
    return f"<td>{html.escape(str(v))}</td>"


def html_fragment(report: SweepReport, *, plot: bool = True) -> str:
    """An HTML fragment (table + embedded Pareto PNG) for a larger report page."""
    heads = (
        "artifact",
        "precision",
        "computes in",
        "batch",
        "imgsz",
        "threads",
        "concurrency",
        "cold start ms",
        "e2e p50",
        "e2e p90",
        "e2e p99",
        "decode",
        "preprocess",
        "inference",
        "postprocess",
        "pre+post % e2e",
        "images/s",
        "peak RSS MB",
        "size MB",
        "accuracy",
    )
    rows = []
    for r in report.results:
        s = r.stages_ms
        cells = (
            r.artifact + (" (recommended)" if r.artifact == report.recommended else ""),
            r.precision,
            r.inference_precision,
            r.batch,
            f"{r.imgsz[0]}x{r.imgsz[1]}",
            r.threads or "default",
            r.concurrency,
            f"{r.cold_start_ms:.0f}",
            f"{r.e2e_ms.p50:.2f}",
            f"{r.e2e_ms.p90:.2f}",
            f"{r.e2e_ms.p99:.2f}",
            f"{s['decode'].mean:.2f}",
            f"{s['preprocess'].mean:.2f}",
            f"{s['inference'].mean:.2f}",
            f"{s['postprocess'].mean:.2f}",
            f"{100 * r.pre_post_share:.1f}",
            f"{r.throughput_ips:.1f}",
            f"{r.peak_rss_mb:.0f}",
            f"{r.file_size_bytes / 1e6:.2f}",
            _acc(r)[1],
        )
        rows.append("<tr>" + "".join(_td(c) for c in cells) + "</tr>")
    parts = [
        '<div class="cvdeploy-bench">',
        "<table>",
        "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in heads) + "</tr></thead>",
        "<tbody>" + "".join(rows) + "</tbody>",
        "</table>",
        "<p>Times in ms per request of <i>batch</i> images (stage columns: means). "
        "End to end = file read + decode, preprocess, inference, postprocess; cold start = "
        "runner load + first request; warm-up requests excluded. Accuracy: latest recorded "
        "check at the input size shown (* another size).</p>",
    ]
    if report.recommended:
        parts.append(f"<p>Recommended: {html.escape(report.recommendation)}</p>")
    if report.skipped:
        items = "".join(
            f"<li>{html.escape(s.artifact)} batch {s.batch}"
            f"{' imgsz ' + 'x'.join(map(str, s.imgsz)) if s.imgsz else ''}: "
            f"{html.escape(s.reason)}</li>"
            for s in report.skipped
        )
        parts.append(f"<p>Skipped:</p><ul>{items}</ul>")
    profiles = [r for r in report.results if r.profile]
    for r in profiles:
        prof = r.profile or {}
        items = "".join(
            "<tr>"
            + _td(o["op_type"])
            + _td(f"{o['ms']:.3f}")
            + _td(f"{100 * o['share']:.1f}")
            + "</tr>"
            for o in prof.get("by_type", [])
        )
        parts.append(
            f"<h4>{html.escape(r.artifact)}: operators ({html.escape(prof.get('source', ''))}, "
            f"{prof.get('total_ms', 0):.2f} ms per inference)</h4>"
            f"<table><tr><th>operator</th><th>ms</th><th>share %</th></tr>{items}</table>"
        )
    if plot and report.results:
        png = base64.b64encode(pareto_png(report.results)).decode("ascii")
        parts.append(f'<img alt="accuracy vs latency" src="data:image/png;base64,{png}"/>')
    parts.append("</div>")
    return "\n".join(parts)


def html_report(report: SweepReport) -> str:
    """A standalone HTML page: the fragment plus the environment the numbers come from."""
    env = html.escape(json.dumps(report.environment, indent=2))
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>cvdeploy bench {html.escape(report.bundle)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;text-align:right}"
        "th{background:#f3f3f3}</style></head><body>"
        f"<h2>cvdeploy bench: {html.escape(report.bundle)}</h2>"
        f"{html_fragment(report)}"
        f"<h3>Environment</h3><pre>{env}</pre></body></html>\n"
    )
