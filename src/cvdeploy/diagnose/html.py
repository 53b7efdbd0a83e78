"""The doctor's HTML report: one self-contained page (plots are embedded PNGs, made with
matplotlib's Agg backend; no script, no external resource)."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cvdeploy.diagnose.findings import DoctorReport

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1200px}
h1{font-size:1.5rem} h2{font-size:1.2rem;margin-top:2.2rem;border-bottom:1px solid #ddd}
h3{font-size:1rem;margin-top:1.2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
td,th{border:1px solid #ccc;padding:.25rem .5rem;vertical-align:top}
th{background:#f3f3f3;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
.finding{border-left:6px solid #999;padding:.4rem .8rem;margin:.8rem 0;background:#fafafa}
.finding.critical{border-color:#b00020} .finding.warning{border-color:#e69500}
.finding.info{border-color:#3b7dd8}
.sev{font-weight:700;text-transform:uppercase;font-size:.75rem;margin-right:.5rem}
.critical .sev{color:#b00020} .warning .sev{color:#a86b00} .info .sev{color:#3b7dd8}
.fix code{background:#eef;padding:.1rem .3rem} .ok{color:#0a7d22;font-weight:600}
.bad{color:#b00020;font-weight:600} .skip{color:#666}
.grid{display:flex;flex-wrap:wrap;gap:.8rem} figure{margin:0}
img.plot{max-width:100%;border:1px solid #eee} .grid img{max-width:380px;border:1px solid #ddd}
small{color:#666}
"""


def _esc(v: Any) -> str:
    return html.escape(str(v))


def _num(v: Any, digits: int = 4) -> str:
    if isinstance(v, int | float) and not (isinstance(v, float) and not math.isfinite(v)):
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)
    return "-"


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img class="plot" alt="plot" src="data:image/png;base64,{data}">'


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _jpeg_tag(img: np.ndarray, caption: str, width: int = 380) -> str:
    h, w = img.shape[:2]
    if w > width:
        img = cv2.resize(img, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        return ""
    data = base64.b64encode(buf.tobytes()).decode()
    return (
        f'<figure><img alt="{_esc(caption)}" src="data:image/jpeg;base64,{data}">'
        f"<figcaption><small>{_esc(caption)}</small></figcaption></figure>"
    )


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return (
        "<table><tr>"
        + "".join(f"<th>{_esc(h)}</th>" for h in head)
        + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
        + "</table>"
    )


def _findings(rep: DoctorReport) -> str:
    out = []
    for f in rep.ranked():
        ev = "".join(f"<li>{_esc(e)}</li>" for e in f.evidence)
        out.append(
            f'<div class="finding {f.severity}"><div><span class="sev">{f.severity}</span>'
            f"<small>{_esc(f.kind)}{' - ' + _esc(f.artifact) if f.artifact else ''}</small></div>"
            f"<div><b>{_esc(f.title)}</b></div><ul>{ev}</ul>"
            + (f'<div class="fix">fix: <code>{_esc(f.fix)}</code></div>' if f.fix else "")
            + "</div>"
        )
    if not out:
        return '<p class="ok">No problem found.</p>'
    return "".join(out)


def _environment(data: dict[str, Any]) -> str:
    cur = data.get("current", {})
    cpu = cur.get("cpu", {})
    rows = []
    for aid, diffs in (data.get("artifacts") or {}).items():
        for d in diffs:
            rows.append(
                [
                    _esc(aid),
                    _esc(d["field"]),
                    _esc(d["recorded"]),
                    _esc(d["current"]),
                    _esc(d["affects"]),
                    _esc(d.get("since", "")),
                    _esc(d.get("note", "")),
                ]
            )
    flags = ", ".join(cpu.get("flags") or [])
    head = (
        f"<p>This machine: {_esc(cpu.get('model'))}, {_esc(cpu.get('logical_cores'))} cores, "
        f"flags {_esc(flags)}</p>"
    )
    if not rows:
        return (
            head + '<p class="ok">Every artifact runs in the environment it was made and '
            "measured in.</p>"
        )
    return head + _table(
        ["artifact", "what", "recorded", "here", "affects", "since", "why it matters"], rows
    )


def _integrity(data: dict[str, Any]) -> str:
    files = data.get("files", {})
    probs = files.get("problems") or []
    out = f"<p>{files.get('files_checked', 0)} file(s) checked against bundle.json: "
    out += (
        '<span class="ok">all intact</span>'
        if not probs
        else f'<span class="bad">{len(probs)} problem(s)</span>'
    ) + "</p>"
    if probs:
        out += _table(
            ["owner", "file", "problem"],
            [[_esc(p["owner"]), _esc(p["file"]), _esc(p["problem"])] for p in probs],
        )
    rows = []
    for r in data.get("parity") or []:
        st = r.get("status")
        cls = "ok" if st == "passed" else "bad" if st == "failed" else "skip"
        cos = ", ".join(f"{c:.5f}" for c in r.get("cosine") or [] if isinstance(c, float))
        rows.append(
            [
                _esc(r["artifact"]),
                _esc(r["source"]),
                f'<span class="{cls}">{_esc(st)}</span>',
                cos or "-",
                _num(r.get("match_fraction"), 3),
                _esc("; ".join(r.get("failures") or []) or r.get("reason", "")),
            ]
        )
    if rows:
        out += "<h3>Parity gate re-run on your images</h3>" + _table(
            ["artifact", "source", "verdict", "cosine", "detections matched", "failures"], rows
        )
    return out


def _accuracy(data: dict[str, Any], names: Sequence[str]) -> str:
    plt = _plt()
    metric = "mAP50-95" if data.get("metric") == "map50_95" else "top-1"
    rows = []
    worst_row = None
    for r in data.get("rows") or []:
        if r["status"] != "ok":
            rows.append(
                [
                    _esc(r["artifact"]),
                    _esc(r["precision"]),
                    "-",
                    f'<span class="skip">{_esc(r["status"])}: {_esc(r["reason"])}</span>',
                    "",
                    "",
                    "",
                    "",
                ]
            )
            continue
        d = r.get("delta")
        if d is not None and (worst_row is None or d < (worst_row.get("delta") or 0)):
            worst_row = r
        worst = ", ".join(
            f"{k} {v:+.3f}" for k, v in list((r.get("per_class_delta") or {}).items())[:3]
        )
        rows.append(
            [
                _esc(r["artifact"])
                + (" <small>(reference)</small>" if r["artifact"] == data.get("reference") else ""),
                _esc(r["precision"]),
                _esc(r.get("inference_precision") or "-"),
                _num(r.get("score")),
                ""
                if d is None
                else f'<span class="{"bad" if d <= -0.005 else ""}">{d:+.4f}</span>',
                f"{r['tp']} / {r['fp']} / {r['fn']}" if data.get("metric") == "map50_95" else "-",
                _num(r.get("agreement"), 3),
                _esc(worst),
            ]
        )
    out = (
        f"<p>{data.get('images')} images of <b>{_esc(data.get('dataset'))}</b>, one protocol "
        "(conf 0.001, IoU 0.7, 300 detections, multi-label; pycocotools). TP/FP/missed at the "
        "spec's confidence threshold, IoU 0.5.</p>"
        + _table(
            [
                "artifact",
                "precision",
                "computes in",
                metric,
                "vs reference",
                "TP / FP / missed",
                "agreement with reference",
                "largest per-class drops",
            ],
            rows,
        )
    )
    if worst_row and worst_row.get("per_class_delta"):
        items = list(worst_row["per_class_delta"].items())
        items = items[:10] + [kv for kv in items[-5:] if kv not in items[:10]]
        fig, ax = plt.subplots(figsize=(8, 0.3 * len(items) + 1.2))
        ax.barh(
            [k for k, _ in items][::-1],
            [v for _, v in items][::-1],
            color=["#b00020" if v < 0 else "#0a7d22" for _, v in items][::-1],
        )
        ax.axvline(0, color="#333", lw=0.8)
        ax.set_xlabel(f"per-class change vs {data.get('reference')}")
        ax.set_title(f"{worst_row['artifact']}: per-class {metric} change")
        out += _png(fig)
    return out


def _gallery(data: dict[str, Any], bundle_names: Sequence[str], rep_results: Any) -> str:
    figs = []
    for g in data.get("gallery") or []:
        img = cv2.imread(g["image"])
        if img is None:
            continue
        panels = []
        for aid in (data.get("reference"), g["artifact"]):
            res = (rep_results or {}).get(aid, {}).get(g["index"]) if rep_results else None
            if res is None:
                continue
            from cvdeploy.pipeline.draw import draw

            shown = _thresholded(res)
            panel = draw(img, shown, list(bundle_names))
            cv2.putText(panel, str(aid), (8, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (0, 0, 255), 2)
            panels.append(panel)
        if len(panels) == 2:
            h = min(p.shape[0] for p in panels)
            both = np.concatenate([p[:h] for p in panels], axis=1)
            figs.append(
                _jpeg_tag(
                    both,
                    f"{Path(g['image']).name}: {g['artifact']} agrees at {g['agreement']:.0%}",
                    760,
                )
            )
    if not figs:
        return ""
    return '<h3>Where the artifacts disagree most</h3><div class="grid">' + "".join(figs) + "</div>"


def _thresholded(res: Any) -> Any:
    from cvdeploy.pipeline import Detections

    if isinstance(res, Detections):
        keep = res.scores >= 0.25
        return Detections(
            boxes=res.boxes[keep], scores=res.scores[keep], class_ids=res.class_ids[keep]
        )
    return res


def _layers(data: dict[str, Any]) -> str:
    plt = _plt()
    out = []
    for r in data.get("reports") or []:
        layers = r.get("layers") or []
        if not layers:
            continue
        x = np.arange(len(layers))
        cum = [min(120.0, s["sqnr_db"]) for s in layers]
        loc = [min(120.0, s["local_db"]) for s in layers]
        fig, ax = plt.subplots(figsize=(10, 3.6))
        ax.plot(x, cum, label="end to end (cumulative)", color="#3b7dd8")
        ax.plot(x, loc, label="isolated (fed float activations)", color="#e69500", lw=0.9)
        if r.get("first_jump"):
            j = next(i for i, s in enumerate(layers) if s["layer"] == r["first_jump"])
            ax.axvline(j, color="#b00020", ls="--", lw=1)
            for k in r.get("jump_layers") or []:  # the others fed by a faulty quantizer
                if k != r["first_jump"]:
                    i = next(i for i, s in enumerate(layers) if s["layer"] == k)
                    ax.axvline(i, color="#b00020", ls=":", lw=0.8)
            q = r.get("jump_quantizer")
            ax.annotate(
                f"first jump: {r['first_jump']}"
                + (f" (quantizer {q}, {len(r['jump_layers'])} layers)" if q else ""),
                (j, loc[j]),
                xytext=(5, 10),
                textcoords="offset points",
                color="#b00020",
                fontsize=8,
            )
        ax.axhline(r.get("threshold_db", 0), color="#999", ls=":", lw=0.8)
        ax.set_xlabel("layer (topological order)")
        ax.set_ylabel("SQNR vs float source (dB)")
        ax.set_title(f"{r['artifact']} against {r['source']} ({r['images']} images)")
        ax.legend(loc="lower left", fontsize=8)
        worst = sorted(layers, key=lambda s: s["local_db"])[:10]
        rows = [
            [
                _esc(s["layer"]),
                _esc(s["op_type"]),
                _num(s["local_db"], 1),
                _num(s["sqnr_db"], 1),
                _num(s["cosine"], 5),
                "yes" if s["layer"] in (r.get("keep_float") or []) else "",
            ]
            for s in worst
        ]
        t = r.get("trial") or {}
        trial = ""
        if "map_keep" in t:
            rec = t.get("recovered")
            trial = (
                f"<p>Re-quantized with {len(t.get('keep_float') or [])} layer(s) in float "
                f"({_esc(t.get('backend'))}, calibration {_esc(t.get('calibration'))}): mAP50-95 "
                f"{_num(t['map_int8'])} -> <b>{_num(t['map_keep'])}</b> "
                f"(FP32 {_num(t['map_fp32'])}): "
                + (f"<b>{rec:.0%}</b> of the gap closed" if rec is not None else "no gap")
                + "</p>"
            )
        elif "error" in t:
            trial = f'<p class="bad">Keep-float trial failed: {_esc(t["error"])}</p>'
        out.append(
            f"<h3>{_esc(r['artifact'])} vs {_esc(r['source'])}</h3>"
            + _png(fig)
            + "<p>Layers with the lowest isolated SQNR (their own error):</p>"
            + _table(
                ["layer", "op", "isolated dB", "end-to-end dB", "cosine", "keep in float"], rows
            )
            + trial
        )
    return "".join(out)


def _preprocessing(data: dict[str, Any]) -> str:
    out = []
    for key, title in (
        ("labelled", "On the labelled images"),
        ("production", "On the production images"),
    ):
        v = data.get(key)
        if not v:
            continue
        rows = []
        for i, rnd in enumerate(v.get("rounds") or []):
            for s in rnd:
                rows.append(
                    [
                        str(i + 1),
                        _esc(s["variant"]),
                        _num(s["mean"], 3),
                        f"{s['gain']:+.1%}",
                        _num(s["p_adjusted"], 4),
                        '<span class="bad">yes</span>' if s["clearly_better"] else "",
                    ]
                )
        out.append(
            f"<h3>{title}</h3><p>{v['images']} images, score: {_esc(v['metric'])}; the spec "
            f"scores {_num(v['spec_score'], 3)}.</p>"
            + _table(
                ["round", "variant", "mean score", "vs spec", "p (Holm)", "clearly better"], rows
            )
        )
    for f in data.get("fed") or []:
        rows = [
            [
                _esc(x["field"]),
                _esc(x["fed"]),
                _esc(x["spec"]),
                '<span class="bad">differs</span>'
                if x["field"] in f.get("differences", [])
                else "",
                _esc(x["evidence"]),
            ]
            for x in f.get("fields") or []
        ]
        out.append(
            f"<h3>What the production {'model inputs' if f['kind'] == 'tensor' else 'images'} "
            f"show ({f['inputs']})</h3>" + _table(["field", "fed", "spec", "", "evidence"], rows)
        )
    return "".join(out)


def _drift(data: dict[str, Any]) -> str:
    plt = _plt()
    r = data.get("report") or {}
    out = (
        f"<p>Verdict: <b>{_esc(r.get('verdict'))}</b> (p={_num(r.get('p_value'), 4)}, false-alarm "
        f"rate {r.get('alpha')}); {r.get('n_window')} production images against "
        f"{r.get('n_ref')} reference images "
        f"({_esc((data.get('reference') or {}).get('dataset'))}).</p>"
    )
    rows = [
        [
            _esc(t["name"]),
            _num(t["statistic"], 3),
            _num(t["p_value"], 4),
            _num(t["p_adjusted"], 4),
            '<span class="bad">yes</span>' if t["rejected"] else "",
        ]
        for t in sorted(
            r.get("tests") or [],
            key=lambda t: t["p_adjusted"] if t["p_adjusted"] is not None else 1,
        )
    ]
    out += _table(["test", "statistic", "p", "p adjusted", "rejected"], rows)
    ref_v, win_v = data.get("ref_values") or {}, data.get("window_values") or {}
    ks = [
        t
        for t in sorted(r.get("tests") or [], key=lambda t: t["p_adjusted"] or 1)
        if t["name"].startswith("ks:")
    ][:6]
    if ks:
        fig, axes = plt.subplots(1, len(ks), figsize=(3.2 * len(ks), 2.6))
        axes = np.atleast_1d(axes)
        for ax, t in zip(axes, ks, strict=True):
            f = t["detail"]["feature"]
            a = np.array([x for x in ref_v.get(f, []) if x is not None], float)
            b = np.array([x for x in win_v.get(f, []) if x is not None], float)
            a, b = a[np.isfinite(a)], b[np.isfinite(b)]
            if a.size and b.size:
                lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
                bins = np.linspace(lo, hi if hi > lo else lo + 1, 25)
                ax.hist(a, bins=bins, density=True, alpha=0.55, label="reference", color="#3b7dd8")
                ax.hist(b, bins=bins, density=True, alpha=0.55, label="production", color="#e69500")
            ax.set_title(f"{f} (p={t['p_adjusted']:.2g})", fontsize=9)
            ax.tick_params(labelsize=7)
        axes[0].legend(fontsize=7)
        out += _png(fig)
    return out


def render(report: DoctorReport) -> str:
    """The report page as a string."""
    names = report.extras.get("names") or ()
    results = report.extras.get("results")
    probs = report.problems
    verdict = (
        '<span class="ok">healthy: no problem found</span>'
        if not probs
        else f'<span class="bad">{len(probs)} problem(s)</span>'
    )
    parts = [
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>cvdeploy doctor: '
        f"{_esc(report.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>cvdeploy doctor: {_esc(report.name)}</h1>",
        f"<p>{_esc(report.bundle)}; {verdict}; {report.seconds:.0f} s. Inputs: "
        + _esc(", ".join(f"{k}={v}" for k, v in report.inputs.items() if v not in (None, 0)))
        + "</p>",
        '<h2 id="findings">Findings</h2>',
        _findings(report),
    ]
    titles = {
        "environment": "Environment",
        "integrity": "Integrity",
        "accuracy": "Controlled dataset",
        "layers": "Layer-wise localisation",
        "preprocessing": "Preprocessing audit",
        "drift": "Drift",
    }
    for key, title in titles.items():
        sec = report.sections.get(key)
        if sec is None:
            continue
        parts.append(f'<h2 id="{key}">{title}</h2>')
        if sec.status != "ran":
            parts.append(f'<p class="skip">{_esc(sec.status)}: {_esc(sec.reason)}</p>')
            continue
        d = sec.data
        if key == "environment":
            parts.append(_environment(d))
        elif key == "integrity":
            parts.append(_integrity(d))
        elif key == "accuracy":
            parts.append(_accuracy(d, names))
            parts.append(_gallery(d, names, results))
        elif key == "layers":
            parts.append(_layers(d))
        elif key == "preprocessing":
            parts.append(_preprocessing(d))
        elif key == "drift":
            parts.append(_drift(d))
        parts.append(f"<p><small>{sec.seconds:.1f} s</small></p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(report: DoctorReport, out: Path) -> Path:
    """Render and write the page (atomically: a temporary file, then a rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render(report), encoding="utf-8")
    tmp.replace(out)
    return out
