"""A self-contained ``report.html`` built from the bundle's manifest (nothing re-measured).

The table shows each artifact's format, precision (and what it computes in), size, parity
verdict, accuracy and latency exactly as recorded by the export, eval and bench stages;
artifacts that were announced but refused (by the parity gate, or because this machine
cannot run them) are red rows with the reason. Images are embedded.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2

from cvdeploy.bundle import Artifact, Bundle

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222}
h1{font-size:1.5rem} h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #ccc;padding:.3rem .6rem}
th{background:#f3f3f3;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#0a7d22;font-weight:600} .fail{color:#b00020;font-weight:600}
tr.refused td{background:#fde8eb;color:#b00020} .refusals{color:#b00020;font-weight:600}
.grid{display:flex;flex-wrap:wrap;gap:.8rem} .grid figure{margin:0}
.grid img{max-width:300px;border:1px solid #ddd} small{color:#666}
"""


def _fmt(v: Any, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if isinstance(v, int | float) else "-"


def artifact_row(a: Artifact, dataset: str | None) -> dict[str, Any]:
    """Figures recorded for one artifact (metrics on ``dataset``, or the latest metrics)."""
    met = a.latest("metrics", dataset) if dataset else a.latest("metrics")
    lat = a.latest("latency")
    par = a.latest("parity")
    m = met.data.get("metrics", {}) if met else {}
    speed = met.data.get("speed_ms", {}) if met else {}
    e2e = lat.data.get("e2e_ms", {}).get("p50") if lat else None
    if e2e is None and speed:
        e2e = sum(speed.get(k, 0.0) for k in ("decode", "preprocess", "inference", "postprocess"))
    return {
        "id": a.id,
        "format": a.format,
        "precision": a.precision,
        "inference_precision": a.runtime_precision,
        "size_mb": a.size_bytes / 1e6,
        "map50_95": m.get("map50_95", m.get("top1")),
        "map50": m.get("map50", m.get("top5")),
        "inference_ms": speed.get("inference"),
        "e2e_ms": e2e,
        "latency_source": "bench p50" if lat else ("eval mean" if speed else None),
        "parity": None if par is None else par.passed,
        "parity_source": None if par is None else par.data.get("source"),
        "dataset": met.name if met else None,
    }


def _image_tag(path: Path, caption: str) -> str:
    img = cv2.imread(str(path))
    if img is None:
        return ""
    h, w = img.shape[:2]
    if w > 600:
        img = cv2.resize(img, (600, round(h * 600 / w)), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        return ""
    data = base64.b64encode(buf.tobytes()).decode()
    return (
        f'<figure><img src="data:image/jpeg;base64,{data}" alt="{html.escape(caption)}">'
        f"<figcaption><small>{html.escape(caption)}</small></figcaption></figure>"
    )


def render_report(
    bundle: Bundle,
    *,
    dataset: str | None = None,
    images: Sequence[Path] = (),
    title: str | None = None,
    sections: Sequence[str] = (),
    refused: Sequence[tuple[str, str]] = (),
) -> str:
    """Render the report page as a string.

    Args:
        bundle: The bundle.
        dataset: Dataset label whose metrics are shown (default: each artifact's latest).
        images: Drawn prediction images to embed.
        title: Page title.
        sections: Extra HTML fragments (bench tables, plots) appended in order.
        refused: ``(artifact id, reason)`` of announced artifacts that were not added: red
            rows in the table, and a line above it.
    """
    rows = [artifact_row(a, dataset) for a in bundle.manifest.artifacts]
    s = bundle.spec
    is_cls = s.task == "classify"
    head = [
        "artifact",
        "format",
        "precision",
        "computes in",
        "size (MB)",
        "top-1" if is_cls else "mAP50-95",
        "top-5" if is_cls else "mAP50",
        "inference (ms)",
        "end to end (ms)",
        "parity",
    ]
    body = []
    for r in rows:
        par = (
            "-"
            if r["parity"] is None
            else (
                f'<span class="{"pass" if r["parity"] else "fail"}">'
                f"{'pass' if r['parity'] else 'FAIL'}</span> <small>vs {r['parity_source']}</small>"
            )
        )
        body.append(
            "<tr>"
            + "".join(
                [
                    f"<td>{html.escape(r['id'])}</td>",
                    f"<td>{r['format']}</td>",
                    f"<td>{r['precision']}</td>",
                    f"<td>{r['inference_precision']}</td>",
                    f'<td class="num">{r["size_mb"]:.2f}</td>',
                    f'<td class="num">{_fmt(r["map50_95"])}</td>',
                    f'<td class="num">{_fmt(r["map50"])}</td>',
                    f'<td class="num">{_fmt(r["inference_ms"], 2)}</td>',
                    f'<td class="num">{_fmt(r["e2e_ms"], 2)} '
                    f"<small>{r['latency_source'] or ''}</small></td>",
                    f"<td>{par}</td>",
                ]
            )
            + "</tr>"
        )
    for aid, reason in refused:
        body.append(
            f'<tr class="refused"><td>{html.escape(aid)}</td>'
            f'<td colspan="{len(head) - 2}">refused: {html.escape(reason)}</td>'
            '<td><span class="fail">REFUSED</span></td></tr>'
        )
    table = (
        "<table><tr>"
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr>"
        + "".join(body)
        + "</table>"
    )
    if refused:
        table = (
            f'<p class="refusals">{len(refused)} announced artifact(s) refused: '
            + html.escape(", ".join(aid for aid, _ in refused))
            + " (reasons in the red rows)</p>"
            + table
        )
    pp = s.preprocess
    spec_line = (
        f"{s.task}, {len(s.names)} classes, input {s.imgsz[0]}x{s.imgsz[1]}, "
        f"{pp.resize}/{pp.align} pad {pp.pad_value}, {pp.color}, scale {pp.scale:g}, "
        f"decoder {s.decoder.kind}"
    )
    figs = "".join(_image_tag(p, p.name) for p in images)
    history = "".join(
        f"<li><small>{h.time.isoformat()}</small> {html.escape(h.action)}</li>"
        for h in bundle.manifest.history
    )
    ds_note = f"Accuracy on <b>{html.escape(dataset)}</b>. " if dataset else ""
    t = html.escape(title or f"cvdeploy report: {bundle.name}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{t}</title><style>{_CSS}</style></head>
<body><h1>{t}</h1>
<p>{html.escape(spec_line)}</p>
<h2>Artifacts</h2>
<p><small>{ds_note}All figures are read from {html.escape(str(bundle.path / "bundle.json"))};
latency is per image on this machine (eval mean unless a bench p50 was recorded).</small></p>
{table}
{"".join(sections)}
<h2>Predictions</h2><div class="grid">{figs or "<p>none</p>"}</div>
<h2>History</h2><ul>{history}</ul>
</body></html>
"""


def write_report(bundle: Bundle, out_file: Path, **kwargs: Any) -> Path:
    """Render the report and write it to ``out_file`` (see :func:`render_report`)."""
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_suffix(".tmp")
    tmp.write_text(render_report(bundle, **kwargs), encoding="utf-8")
    tmp.replace(out_file)
    return out_file
