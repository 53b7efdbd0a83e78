"""Regenerate the README's performance tables from ``benchmarks/results/*.json``.

The performance table sits between the markers ``<!-- bench:begin -->`` and
``<!-- bench:end -->`` in README.md, and the precision table (``precision.json``) between
``<!-- precision:begin -->`` and ``<!-- precision:end -->``; everything outside them is left
as it is. Each row quotes one benchmark's JSON
(``e2e_vs_naive.json``, ``pipeline_overhead.json``, ``quantize.json``,
``quantize_zoo.json``, ``bench_repeat.json``, ``serve_load.json``, ``compress.json``)
against the target it measures; a missing file or field gives a "not run" row rather than
an error, so the table always says what was measured and what was not. Nothing is timed here.

Usage::

    python benchmarks/update_readme.py [--results DIR] [--readme FILE] [--check]

``--check`` exits 1 when the README's table differs from the results (for CI) and writes
nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"
PRECISION_BEGIN = "<!-- precision:begin -->"
PRECISION_END = "<!-- precision:end -->"
Row = tuple[str, str, str, str]  # what, measured, target, met
Results = dict[str, dict[str, Any]]


def load_results(results_dir: Path) -> Results:
    """Every ``*.json`` in ``results_dir`` by stem; unreadable files are skipped with a note."""
    out: Results = {}
    for p in sorted(results_dir.glob("*.json")):
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"note: skipping {p.name}: {exc}", file=sys.stderr)
            continue
        if isinstance(data, dict):
            out[p.stem] = data
    return out


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


# (result file, CPU kind in the row, target ratio): e2e_vs_naive.py names its file by kind
_E2E = (
    ("e2e_vs_naive_bf16", ", CPU with native bf16", 0.75),
    ("e2e_vs_naive_avx2", ", AVX2-only CPU", 0.5),
    ("e2e_vs_naive", "", 0.5),
)


def _e2e_rows(r: Results) -> list[Row]:
    rows: list[Row] = []
    for key, kind, limit in _E2E:
        if key == "e2e_vs_naive" and rows:
            continue  # the per-kind files are there: no legacy row
        if key != "e2e_vs_naive" and key not in r:
            continue
        rows.extend(_e2e_rows_of(r.get(key), kind, limit))
    return rows


def _e2e_rows_of(d: Any, kind: str, limit: float) -> list[Row]:
    what = f"YOLOX-Nano end to end, batch 1{kind}: cvdeploy p50 / tutorial pipeline p50"
    target = f"<= {limit}x"
    naive = _num(_get(d, "naive", "e2e_ms", "p50"))
    cvd = _num(_get(d, "cvdeploy", "e2e_ms", "p50"))
    if naive is None or cvd is None or naive <= 0:
        return [(what, "not run", target, "n/a")]
    art = _get(d, "cvdeploy", "artifact") or "?"
    measured = f"{cvd / naive:.2f}x ({cvd:.1f} ms `{art}` vs {naive:.1f} ms)"
    rows = [(what, measured, target, _met(cvd / naive <= limit))]
    drop = _num(_get(d, "cvdeploy", "map_drop_vs_fp32"))
    if drop is not None:
        rows.append(
            (
                f"YOLOX-Nano tuned configuration{kind} (`{art}`): mAP50-95 drop vs FP32 on coco128",
                f"{drop:.4f}",
                "<= 0.01",
                _met(drop <= 0.01),
            )
        )
    return rows


def _overhead_rows(r: Results) -> list[Row]:
    d = r.get("pipeline_overhead")
    protocols = _get(d, "protocols")
    what = "pre- + post-processing share of end-to-end time (YOLOv8n INT8 OpenVINO, 640)"
    if not isinstance(protocols, dict) or not protocols:
        return [(what, "not run", "<= 25%", "n/a")]
    rows = []
    for name, p in protocols.items():
        share = _num(_get(p, "pre_post_share_of_e2e"))
        if share is None:
            rows.append((f"{what}, {name} thresholds", "not run", "<= 25%", "n/a"))
            continue
        e2e = _num(_get(p, "e2e_ms", "mean"))
        extra = f" of {e2e:.1f} ms mean" if e2e is not None else ""
        rows.append(
            (
                f"{what}, {name} thresholds",
                f"{100 * share:.1f}%{extra}",
                "<= 25%",
                _met(share <= 0.25),
            )
        )
    return rows


def _int8_rows(s: Any, model: str) -> list[Row]:
    """The INT8 rows of one quantize benchmark summary (``model`` names the model)."""
    rows: list[Row] = []
    ov = _get(s, "openvino")
    drop = _num(_get(ov, "map_drop"))
    what = f"{model} OpenVINO INT8 (NNCF): mAP50-95 drop vs FP32"
    if drop is None:
        rows.append((what, "not run", "<= 0.01", "n/a"))
    else:
        rows.append((what, f"{drop:.4f}", "<= 0.01", _met(drop <= 0.01)))
    ratio = _num(_get(ov, "inference_ratio"))
    what = f"{model} OpenVINO INT8: inference p50 vs FP32"
    if ratio is None:
        rows.append((what, "not run", "<= 0.6x", "n/a"))
    else:
        rows.append((what, f"{ratio:.2f}x", "<= 0.6x", _met(ratio <= 0.6)))
    for key, engine in (("onnxruntime", "quantize_static"), ("onnxruntime_nncf", "NNCF")):
        ort = _get(s, key)
        what = f"{model} ONNX Runtime Q/DQ INT8 ({engine}): mAP50-95 drop vs FP32"
        drop = _num(_get(ort, "map_drop"))
        if drop is not None:
            rows.append((what, f"{drop:.4f}", "<= 0.015", _met(drop <= 0.015)))
            ratio = _num(_get(ort, "inference_ratio"))
            if ratio is not None:
                rows.append(
                    (
                        f"{model} ONNX Runtime Q/DQ INT8 ({engine}): inference p50 vs FP32",
                        f"{ratio:.2f}x",
                        "< 1x",
                        _met(ratio < 1.0),
                    )
                )
        elif isinstance(ort, dict) and ort.get("status"):
            rows.append((what, f"{ort['status']} (nothing saved)", "<= 0.015", "**no**"))
    for backend in ("openvino", "onnxruntime"):
        b = _get(s, f"{backend}_max_drop_0.005")
        if not isinstance(b, dict):
            continue
        if b.get("met"):
            got = f"met (drop {_num(b.get('map_drop')) or 0:.4f})"
        elif b.get("saved_artifact_on_refusal"):
            got = "**refused but an artifact was saved**"
        else:
            got = "stopped: could not meet the budget, nothing saved"
        rows.append(
            (
                f"{model} {backend} INT8 `--max-drop 0.005`",
                got,
                "meets it, or stops saying so",
                _met(bool(b.get("met")) or not b.get("saved_artifact_on_refusal")),
            )
        )
    return rows


def _quantize_rows(r: Results) -> list[Row]:
    return _int8_rows(_get(r.get("quantize"), "summary"), "YOLOX-Nano")


def _quantize_zoo_rows(r: Results) -> list[Row]:
    if "quantize_zoo" not in r:
        return []
    return _int8_rows(_get(r.get("quantize_zoo"), "summary"), "zoo detector-n")


def _repeat_rows(r: Results) -> list[Row]:
    by = _get(r.get("bench_repeat"), "by_threads")
    if not isinstance(by, dict) or not by:
        return []
    rows: list[Row] = []
    for t, v in sorted(by.items()):
        spread = _num(_get(v, "spread"))
        if spread is None:
            continue
        p50 = ", ".join(f"{x:.1f}" for x in v.get("p50_ms", []))
        rows.append(
            (
                f"Repeated `cvdeploy bench` runs (YOLOX-Nano onnx-fp32, {t} "
                f"thread{'' if t == '1' else 's'}): p50 spread",
                f"{spread:.1%} ({p50} ms)",
                "<= 10%",
                _met(spread <= 0.10),
            )
        )
    return rows


_SERVE_MODELS = {
    "tiny": "tiny detector",
    "yolox": "YOLOX-Nano",
    "zoo": "zoo detector-n",
    "yolox-tuned": "YOLOX-Nano tuned (vs plain ONNX Runtime FP32)",
}


def _cpu_kind(result: Any) -> str:
    """``, CPU with native bf16`` / ``, AVX2-only CPU`` from a result's recorded flags (runs
    from before the environment was recorded were all on the AVX2-only EPYC)."""
    flags = _get(result, "environment", "cpu", "flags")
    if not isinstance(flags, list):
        return ", AVX2-only CPU"
    return (
        ", CPU with native bf16"
        if {"avx512_bf16", "amx_bf16"} & set(flags)
        else (", AVX2-only CPU")
    )


def _serve_rows(r: Results) -> list[Row]:
    data = r.get("serve_load")
    if not isinstance(data, dict):
        return []
    rows: list[Row] = []
    for key, model in _SERVE_MODELS.items():
        label = model + _cpu_kind(_get(data, key))
        t = _get(data, key, "targets")
        x = _num(_get(t, "throughput_x_at_16"))
        if x is None:
            continue
        rows.append(
            (
                f"`cvdeploy serve` vs plain FastAPI, {label}, 16 in flight: throughput",
                f"{x:.2f}x",
                ">= 2x",
                _met(x >= 2.0),
            )
        )
        ratio = _num(_get(t, "p99_over_p50_at_16"))
        fails = _get(t, "cvdeploy_failures")
        if ratio is not None:
            rows.append(
                (
                    f"`cvdeploy serve`, {label}, 16 in flight: p99 / p50, failed requests",
                    f"{ratio:.1f}x, {fails}",
                    "<= 3x, 0",
                    _met(ratio <= 3.0 and fails == 0),
                )
            )
    return rows


def _best_one_step(ph: dict[str, Any]) -> str | None:
    """The ``prune_one_step_*`` phase (``--steps 1`` runs merged into the JSON) that met
    the pruning target on ONNX Runtime with the lowest latency ratio, if any did."""
    met = [
        (float(r), k)
        for k in ph
        if k.startswith("prune_one_step")
        and _get(ph, k, "summary", "onnxruntime", "met") is True
        and (r := _num(_get(ph, k, "summary", "onnxruntime", "latency_ratio"))) is not None
    ]
    return min(met)[1] if met else None


def _prune_label(key: str, phase: Any) -> str:
    """What distinguishes a ``prune_one_step_*`` run: its ratio and recovery rate."""
    lr = _num(_get(phase, "recovery_lr"))
    ratio = _num(_get(phase, "summary", "channel_ratio"))
    parts = ["one step"] + ([f"ratio {ratio:g}"] if ratio is not None else [])
    parts += [f"--lr {lr:g}"] if lr is not None else []
    return " (" + ", ".join(parts) + ")"


def _prune_rows(prune: Any, what: str, data: dict[str, Any], quick: str) -> list[Row]:
    """The rows of one pruning phase (``what``: its label, from :func:`_prune_label`)."""
    rows: list[Row] = []
    s = _get(prune, "summary")
    if isinstance(s, dict):
        rows_ms = _get(prune, "rows") or {}
        mins = _num(s.get("recovery_minutes"))
        ch = _num(s.get("channel_ratio"))
        for rt, label in (("onnxruntime", "ONNX Runtime"), ("openvino", "OpenVINO")):
            v = s.get(rt) or {}
            ratio, drop = _num(v.get("latency_ratio")), _num(v.get("map_drop"))
            if ratio is None or drop is None:
                continue
            fmt = "onnx-fp32" if rt == "onnxruntime" else "openvino-fp32"
            a = _num(_get(rows_ms, f"pruned {fmt}", "p50_ms"))
            b = _num(_get(rows_ms, f"source {fmt}", "p50_ms"))
            ms = f" ({a:.1f} vs {b:.1f} ms)" if a is not None and b is not None else ""
            extra = ""
            if rt == "onnxruntime" and ch is not None and mins is not None:
                extra = f", {ch:.0%} of channels removed, {mins:.1f} min of recovery"
            rows.append(
                (
                    f"detector-n pruned{what} (recovered without labels), {label} end to end, "
                    f"batch 1, {data.get('threads')} threads: latency vs the original, "
                    "mAP50-95 drop" + quick,
                    f"{ratio:.2f}x{ms}, drop {drop:.4f}{extra}",
                    "<= 0.7x, <= 0.02" + (", <= 10 min" if rt == "onnxruntime" else ""),
                    _met(v.get("met")),
                )
            )
        for backend in ("openvino", "onnxruntime"):
            v = s.get(f"int8_{backend}") or {}
            if v.get("status") == "refused":
                rows.append(
                    (
                        f"detector-n pruned{what} + INT8 ({backend}){quick}",
                        "refused by its gate: " + str(v.get("message")).splitlines()[0],
                        "<= 0.4x, <= 0.03",
                        "**no**",
                    )
                )
                continue
            ratio = _num(v.get("latency_ratio_vs_onnx_fp32_original"))
            drop = _num(v.get("map_drop_vs_original"))
            if ratio is None or drop is None:
                continue
            rows.append(
                (
                    f"detector-n pruned{what} + INT8 (`{v.get('artifact')}`): end to end vs the "
                    "ONNX Runtime FP32 original, mAP50-95 drop" + quick,
                    f"{ratio:.2f}x, drop {drop:.4f}",
                    "<= 0.4x, <= 0.03",
                    _met(v.get("met")),
                )
            )
    elif isinstance(prune, dict) and prune.get("status") in ("refused", "failed"):
        msg = str(prune.get("message") or prune.get("error")).splitlines()[0]
        rows.append(
            (f"detector-n pruning{what}{quick}", f"{prune['status']}: {msg}", "<= 0.7x", "**no**")
        )
    return rows


def _floor_row(floor: Any, quick: str) -> list[Row]:
    """The ``floor`` phase: the fastest any pruned (+ INT8) version of the graph can be."""
    s = _get(floor, "summary")
    if not isinstance(s, dict):
        return []
    best_any = _num(_get(s, "best_any", "latency_ratio"))
    best_int8 = _num(_get(s, "best_int8", "latency_ratio"))
    inf = _num(_get(s, "best_inference_only", "inference_ratio"))
    target = _num(s.get("target_latency_ratio"))
    if best_any is None or target is None:
        return []
    reach = s.get("target_reachable")
    return [
        (
            "detector-n pruned as far as its head allows, latency only (no recovery, nothing "
            "scored): the fastest end to end vs the ONNX Runtime FP32 original, "
            "a bound on pruned + INT8" + quick,
            ("" if best_int8 is None else f"INT8 at best {best_int8:.2f}x; ")
            + f"any pruned artifact {best_any:.2f}x ({_get(s, 'best_any', 'key')})"
            + ("" if inf is None else f"; inference alone {inf:.2f}x"),
            f"<= {target}x reachable at all",
            _met(None if not isinstance(reach, bool) else reach),
        )
    ]


def _compress_rows(r: Results) -> list[Row]:
    """``compress.json`` (``benchmarks/compress.py``): pruning, pruned + INT8, label-free
    distillation, YOLOX-Nano as a teacher, classifier-n. Nothing when it was not run."""
    data = r.get("compress")
    if not isinstance(data, dict):
        return []
    ph = _get(data, "phases") or {}
    quick = " (`--quick` check, not a measurement)" if data.get("quick") else ""
    rows: list[Row] = []
    rows += _prune_rows(_get(ph, "prune"), "", data, quick)
    best = _best_one_step(ph)
    if best is not None:
        rows += _prune_rows(_get(ph, best), _prune_label(best, _get(ph, best)), data, quick)
    rows += _floor_row(_get(ph, "floor"), quick)
    d = _get(ph, "distill")
    ratio = _num(_get(d, "summary", "map_ratio"))
    free = _num(_get(d, "label_free", "map50_95"))
    lab = _num(_get(d, "labelled", "map50_95"))
    if ratio is not None or (free is not None and lab is not None):
        both = "" if free is None or lab is None else f"{free:.4f} vs {lab:.4f}"
        rows.append(
            (
                f"label-free distillation of {_get(d, 'student')} from detector-n vs the same "
                f"student trained with labels, {_get(d, 'budget_minutes')} min each: "
                "mAP50-95 ratio" + quick,
                f"{ratio:.2f} ({both})" if ratio is not None else f"n/a ({both})",
                ">= 0.95",
                _met(None if ratio is None else ratio >= 0.95),
            )
        )
    y = _get(ph, "yolox", "summary")
    if isinstance(y, dict):
        t, st = _num(y.get("teacher_map50_95")), _num(y.get("student_map50_95"))
        lr = _num(y.get("student_latency_ratio"))
        if t is not None and st is not None:
            who = str(_get(ph, "yolox", "student") or "a zoo student").split(" (")[0]
            rows.append(
                (
                    f"YOLOX-Nano (imported ONNX) as the teacher of {who} "
                    "on coco128 without labels: mAP50-95 on coco128, student latency" + quick,
                    f"teacher {t:.4f}, student {st:.4f}"
                    + ("" if lr is None else f"; student at {lr:.2f}x the teacher's p50"),
                    "works end to end (128 images: a trade-off, reported)",
                    "yes",
                )
            )
    c = _get(ph, "classifier", "summary")
    top1, mins = _num(_get(c, "top1")), _num(_get(c, "train_minutes"))
    if top1 is not None and mins is not None:
        rows.append(
            (
                "classifier-n (shipped): top-1 on its generated val split, training time",
                f"{top1:.1%}, {mins:.1f} min",
                ">= 95%, <= 10 min",
                _met(top1 >= 0.95 and mins <= 10),
            )
        )
    return rows


SECTIONS: list[Callable[[Results], list[Row]]] = [
    _e2e_rows,
    _overhead_rows,
    _quantize_rows,
    _quantize_zoo_rows,
    _repeat_rows,
    _serve_rows,
    _compress_rows,
]
"""Row builders, one per benchmark, in table order."""
SOURCES = (
    "e2e_vs_naive_bf16",
    "e2e_vs_naive_avx2",
    "e2e_vs_naive",
    "pipeline_overhead",
    "quantize",
    "quantize_zoo",
    "bench_repeat",
    "serve_load",
    "compress",
)
"""The result files the rows quote."""


def _conditions(r: Results) -> str:
    envs = [_get(r.get(k), "environment") for k in SOURCES]
    cpus = sorted(
        {
            f"{_get(e, 'cpu', 'model')}, {_get(e, 'cpu', 'logical_cores')} logical cores"
            for e in envs
            if isinstance(_get(e, "cpu"), dict)
        }
    )
    return "; ".join(cpus) or "unknown"


def render_table(results: Results) -> str:
    """The markdown block that goes between the markers (no timing, pure formatting)."""
    lines = [
        "| measurement | result | target | met |",
        "|---|---|---|---|",
    ]
    for section in SECTIONS:
        for what, measured, target, met in section(results):
            lines.append(f"| {what} | {measured} | {target} | {met} |")
    used = ", ".join(f"`{k}.json`" for k in SOURCES if k in results) or "no results"
    lines += [
        "",
        f"Generated by `make bench` (`benchmarks/update_readme.py`) from {used} in "
        f"`benchmarks/results/`; hardware: {_conditions(results)}. Each figure comes from one "
        "run of its script; the JSON files hold the full distributions and conditions "
        "(versions, threads, load average).",
    ]
    return "\n".join(lines)


def render_precision(results: Results) -> str:
    """The precision table (``precision.json``): one row per artifact, nothing timed here."""
    d = results.get("precision")
    rows = _get(d, "rows")
    if not isinstance(rows, list) or not rows:
        return "Not run yet: `python benchmarks/precision.py` writes `results/precision.json`."
    lines = [
        "| artifact | computes in | mAP50-95 (drop) | inference p50 | vs ORT FP32 "
        "| end to end p50 |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| `{row['artifact']}` | {row['inference_precision']} | {row['map50_95']:.4f} "
            f"({row['map_drop_vs_onnx_fp32']:+.4f}) | {row['inference_p50_ms']:.2f} ms | "
            f"{row['inference_vs_onnx_fp32']:.2f} | {row['e2e_p50_ms']:.2f} ms |"
        )
    cond = _get(d, "conditions") or {}
    cpu = _get(d, "cpu") or {}
    lines += [
        "",
        f"`benchmarks/precision.py`, {_get(d, 'started')}: YOLOX-Nano at 416 on coco128 "
        f"(official json), batch 1, {cond.get('threads')} threads, medians of "
        f"{cond.get('rounds')} alternating rounds of {cond.get('images_per_round')} images; "
        f"{cpu.get('model')} ({cpu.get('logical_cores')} logical cores): "
        f"{_get(d, 'native_text')}. Drop: against `onnx-fp32`; mAP with the eval protocol.",
    ]
    return "\n".join(lines)


def replace_block(text: str, block: str, begin: str = BEGIN, end: str = END) -> str:
    """``text`` with the content between the markers replaced by ``block``.

    Raises:
        ValueError: The markers are missing, duplicated or out of order.
    """
    if text.count(begin) != 1 or text.count(end) != 1:
        raise ValueError(f"the README needs exactly one {begin} and one {end} line")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    if end in head:
        raise ValueError(f"{end} comes before {begin}")
    return f"{head}{begin}\n{block}\n{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or ``--check``) the README table; return the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--check", action="store_true", help="exit 1 if the table is out of date")
    args = ap.parse_args(argv)
    try:
        text = args.readme.read_text(encoding="utf-8")
        results = load_results(args.results)
        new = replace_block(text, render_table(results))
        if PRECISION_BEGIN in new:
            new = replace_block(new, render_precision(results), PRECISION_BEGIN, PRECISION_END)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if new != text:
            print(f"{args.readme}: the performance table is out of date (run make bench)")
            return 1
        print(f"{args.readme}: the performance table is up to date")
        return 0
    if new != text:
        tmp = args.readme.with_name(f".{args.readme.name}.tmp")
        tmp.write_text(new, encoding="utf-8")
        tmp.replace(args.readme)  # atomic: a reader never sees half a README
        print(f"updated the performance table in {args.readme}")
    else:
        print(f"{args.readme}: the performance table was already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
