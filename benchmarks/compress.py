"""Pruning, label-free distillation and the shipped classifier-n: every target of #15.

Phases (each writes its part of the JSON as soon as it is done, so a stopped run keeps
what it measured; ``--only`` picks phases):

``prune``
    ``detector-n`` pruned with ``cvdeploy prune`` (``--target-latency 0.7x`` on ONNX
    Runtime, ``--steps 2`` up to ``--max-ratio 0.4``, ``--max-drop 0.02``), recovered by
    self-distillation on the **unlabeled** synthetic train images (``labels=False``) within
    ``--prune-minutes``. The pruned bundle is then exported to OpenVINO and quantized to INT8
    with both backends (OpenVINO NNCF, ONNX Runtime Q/DQ), and the six artifacts (original
    and pruned FP32 on each runtime, pruned INT8 on each) are timed in the same alternating
    rounds (bench harness, end to end file -> detections, batch 1, ``--threads``, medians)
    and scored (mAP50-95, eval stage protocol) on the 200-image seed-0 synthetic val split.
``floor``
    Latency only, nothing scored: ``detector-n`` pruned as far as its head allows
    (``--floor-ratios``, two optimizer steps, no recovery), FP32 and INT8 on both runtimes,
    timed in the same rounds as the ONNX Runtime FP32 original: the fastest any pruned +
    INT8 version of this graph can be, whatever its recovery.
``distill``
    The same student (``zoo:detector-p``) for the same wall-clock budget
    (``--distill-minutes``): distilled label-free from ``detector-n``'s ONNX Runtime bundle
    on the train images without their labels, and trained with the labels by the zoo's own
    detector training loop (``train_detector``). Ratio of their mAP50-95 on the val split.
``yolox``
    YOLOX-Nano (``../shared/realworld``, imported with ``--preset yolox``) as the teacher of
    a zoo student (``--yolox-student``, default ``detector-p``, at the teacher's 416 px: fewer
    MACs than YOLOX-Nano, which ``detector-n`` at 416 px is not) on the coco128 images without
    their labels (``--yolox-minutes``), both scored on coco128 with its labels (the same 128
    images: optimistic for the student). Skipped with a note when realworld is absent.
``classifier``
    ``classifier-n``'s shipped metrics (top-1 on its generated val split, training time),
    read from ``src/cvdeploy/zoo/weights/classifier-n.json`` (nothing is retrained).

Defaults fit about 40 minutes on an idle 2-core machine (prune 10 min of recovery plus
exports, quantization, timing and 7 evaluations; distill 2 x 10 min, ``cvdeploy distill``'s
default budget; YOLOX 2 min plus two coco128 evaluations). ``--quick`` runs every phase
with a handful of images and optimizer steps (a check that the script works, not figures).
Writes
``benchmarks/results/compress.json`` (``--out`` elsewhere).

Usage::

    python benchmarks/compress.py [--quick] [--only prune,floor,distill,yolox,classifier]
        [--prune-minutes 10] [--distill-minutes 10] [--yolox-minutes 2] [--threads 2]
        [--rounds 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from _common import ROOT, realworld_root

PHASES = ("prune", "floor", "distill", "yolox", "classifier")
TARGETS = {
    "prune_latency_ratio_max": 0.7,
    "prune_map_drop_max": 0.02,
    "prune_recovery_minutes_max": 10.0,
    "int8_latency_ratio_max": 0.4,
    "int8_map_drop_max": 0.03,
    "distill_map_ratio_min": 0.95,
    "classifier_top1_min": 0.95,
    "classifier_train_minutes_max": 10.0,
}


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny data and budgets: a check")
    ap.add_argument("--only", default=",".join(PHASES), help="phases (comma-separated)")
    ap.add_argument("--prune-minutes", type=float, default=10.0, help="recovery budget")
    ap.add_argument("--steps", type=int, default=2, help="pruning steps")
    ap.add_argument("--max-ratio", type=float, default=0.4, help="largest channel ratio")
    ap.add_argument(
        "--floor-ratios",
        default="0.6,0.75,0.75:1",
        help="floor phase: RATIO[:ROUND_TO] list (latency only; round-to 8 unless given)",
    )
    ap.add_argument("--prune-lr", type=float, default=None, help="recovery lr (default: prune's)")
    ap.add_argument(
        "--max-drop",
        type=float,
        default=TARGETS["prune_map_drop_max"],
        help="prune stops before a step losing more mAP50-95 (not in --quick: 2 steps lose)",
    )
    ap.add_argument(
        "--distill-minutes", type=float, default=10.0, help="budget of each run (distill's default)"
    )
    ap.add_argument("--yolox-minutes", type=float, default=2.0, help="YOLOX distillation")
    ap.add_argument("--yolox-student", default="detector-p", help="zoo student of YOLOX-Nano")
    ap.add_argument("--n-train", type=int, default=1000, help="synthetic train images")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="alternating latency rounds")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compress.json")
    a = ap.parse_args(argv)
    bad = set(a.only.split(",")) - set(PHASES)
    if bad:
        ap.error(f"unknown phase(s) {', '.join(sorted(bad))}: choose from {', '.join(PHASES)}")
    return a


def _write(results: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


# -- prune ---------------------------------------------------------------------------


def _int8_both(
    pb: Any,
    pruned: Path,
    train: Path,
    a: argparse.Namespace,
    say: Any,
    *,
    latency_only: bool = False,
) -> tuple[dict[str, str], dict[str, str]]:
    """Quantize a pruned bundle with both backends: ``({backend: artifact}, {backend: refusal})``.

    ``latency_only`` saves an artifact its gate refuses (``save_refused``, recorded by the
    bundle) and calibrates on fewer images: for timing a graph, never for its accuracy.
    """
    from cvdeploy.bundle import Bundle
    from cvdeploy.errors import CheckFailed
    from cvdeploy.optimize import QuantizeOptions, quantize_bundle

    int8: dict[str, str] = {}
    refused: dict[str, str] = {}
    for backend in ("openvino", "onnxruntime"):
        say(f"quantizing the pruned model to INT8 ({backend})")
        try:
            q = quantize_bundle(
                pb,
                train,
                options=QuantizeOptions(
                    backend=backend,
                    calib_size=64 if latency_only else 300,
                    force=a.quick or latency_only,
                    measure=False,
                    progress=False,
                    threads=a.threads,
                    save_refused=latency_only,
                ),
                log=say,
            )
        except CheckFailed as exc:  # refused by its gate: recorded, the rest still measured
            say(f"INT8 ({backend}) refused: {str(exc).splitlines()[0]}")
            refused[backend] = str(exc)
            continue
        finally:
            pb = Bundle.load(pruned)
        int8[backend] = q.artifact
    return int8, refused


def _prune(a: argparse.Namespace, t: Path, data: Path, say: Any) -> dict[str, Any]:
    from cvdeploy.bundle import Bundle
    from cvdeploy.compress import PruneOptions, prune_model
    from cvdeploy.compress.measure import accuracy, export_candidate, interleaved_latency
    from cvdeploy.errors import CheckFailed
    from cvdeploy.export import export_model

    train = data.parent / "images" / "train"
    val_images = sorted((data.parent / "images" / "val").glob("*.jpg"))[:16]
    opts = PruneOptions(
        ratio=0.3 if a.quick else None,
        target_latency=None if a.quick else 0.7,
        max_ratio=a.max_ratio,
        runtime="onnxruntime",
        steps=1 if a.quick else a.steps,
        minutes=None if a.quick else a.prune_minutes,
        iters=2 if a.quick else None,
        max_drop=None if a.quick else a.max_drop,
        eval_data=data,
        labels=False,
        threads=a.threads,
        latency_rounds=1 if a.quick else 3,
        progress=not a.quick,
        **({} if a.prune_lr is None else {"lr": a.prune_lr}),
    )
    pruned = t / "pruned"
    t0 = time.perf_counter()
    try:
        rep = prune_model("detector-n", train, pruned, options=opts, log=say)
    except CheckFailed as exc:
        return {"status": "refused", "message": str(exc), "seconds": time.perf_counter() - t0}
    res: dict[str, Any] = {"status": "done", "prune_report": rep.to_dict()}
    res["recovery_seconds"] = sum(float(s["seconds"]) for s in rep.training)
    res["recovery_lr"] = opts.lr
    say("exporting the original to ONNX + OpenVINO and the pruned model to OpenVINO")
    export_model("detector-n", formats=["onnx", "openvino"], out=t / "source", data=train)
    src = Bundle.load(t / "source")
    pb = export_candidate(Bundle.load(pruned), runtime="openvino", gate_data=train)
    int8, res["int8_refused"] = _int8_both(pb, pruned, train, a, say)
    pb = Bundle.load(pruned)
    models = {
        "source onnx-fp32": (src, "onnx-fp32"),
        "pruned onnx-fp32": (pb, "onnx-fp32"),
        "source openvino-fp32": (src, "openvino-fp32"),
        "pruned openvino-fp32": (pb, "openvino-fp32"),
        **{f"pruned {art}": (pb, art) for art in int8.values()},
    }
    rounds = 1 if a.quick else a.rounds
    say(f"timing {len(models)} artifacts in {rounds} alternating rounds")
    lat = interleaved_latency(models, val_images, rounds=rounds, threads=a.threads)
    rows: dict[str, dict[str, Any]] = {}
    for key, (b, art) in models.items():
        say(f"scoring {key}")
        _, m = accuracy(b, art, data, record=False)
        rows[key] = {
            "artifact": art,
            "map50_95": m,
            "p50_ms": lat[key].p50_ms,
            "inference_p50_ms": lat[key].inference_p50_ms,
            "size_mb": b.artifact(art).size_bytes / 1e6,
        }
    res["rows"] = rows
    base = rows["source onnx-fp32"]

    def vs(key: str, ref: str) -> dict[str, Any]:
        r, s = rows[key], rows[ref]
        return {
            "latency_ratio": _ratio(r["p50_ms"], s["p50_ms"]),
            "map_drop": s["map50_95"] - r["map50_95"],
        }

    ort = vs("pruned onnx-fp32", "source onnx-fp32")
    ov = vs("pruned openvino-fp32", "source openvino-fp32")
    res["summary"] = {
        "onnxruntime": ort
        | {
            "met": ort["latency_ratio"] <= TARGETS["prune_latency_ratio_max"]
            and ort["map_drop"] <= TARGETS["prune_map_drop_max"]
            and res["recovery_seconds"] <= TARGETS["prune_recovery_minutes_max"] * 60
        },
        "openvino": ov
        | {
            "met": ov["latency_ratio"] <= TARGETS["prune_latency_ratio_max"]
            and ov["map_drop"] <= TARGETS["prune_map_drop_max"]
        },
        "channel_ratio": next(
            (r["ratio"] for r in rep.to_dict()["rows"] if "selected" in r["note"]), None
        ),
        "recovery_minutes": res["recovery_seconds"] / 60,
    }
    for backend, msg in res["int8_refused"].items():
        res["summary"][f"int8_{backend}"] = {"status": "refused", "message": msg, "met": False}
    for backend, art in int8.items():
        k = f"pruned {art}"
        d = {
            "artifact": art,
            "latency_ratio_vs_onnx_fp32_original": _ratio(rows[k]["p50_ms"], base["p50_ms"]),
            "map_drop_vs_original": base["map50_95"] - rows[k]["map50_95"],
        }
        d["met"] = (
            d["latency_ratio_vs_onnx_fp32_original"] <= TARGETS["int8_latency_ratio_max"]
            and d["map_drop_vs_original"] <= TARGETS["int8_map_drop_max"]
        )
        res["summary"][f"int8_{backend}"] = d
    return res


# -- floor ---------------------------------------------------------------------------


def _floor(a: argparse.Namespace, t: Path, data: Path, say: Any) -> dict[str, Any]:
    """Latency only: how close can channel pruning + INT8 get to the 0.4x target at all?

    ``detector-n`` is pruned at each of ``--floor-ratios`` (0.75 is the most its head
    allows; ``:1`` drops the rounding of channel counts) with two optimizer steps (no
    recovery: the weights are not meant to detect anything, so nothing is scored), exported
    to OpenVINO and quantized with both backends (saved even if the gate refuses). Every
    artifact is timed in the same alternating rounds as the ONNX Runtime FP32 original.
    What this bounds: recovery changes weights, not the graph, so a model pruned this far
    runs no faster than measured here (slower, if anything: untrained weights give NMS
    fewer candidate boxes), and one pruned less has more work. If the best ratio here is
    above the target, no recovery recipe meets it with this graph on this CPU.
    """
    from cvdeploy.bundle import Bundle
    from cvdeploy.compress import PruneOptions, prune_model
    from cvdeploy.compress.measure import export_candidate, interleaved_latency
    from cvdeploy.export import export_model

    train = data.parent / "images" / "train"
    val_images = sorted((data.parent / "images" / "val").glob("*.jpg"))[:16]
    if not (t / "source").exists():
        export_model("detector-n", formats=["onnx"], out=t / "source", data=train)
    models: dict[str, tuple[Bundle, str]] = {
        "source onnx-fp32": (Bundle.load(t / "source"), "onnx-fp32")
    }
    pruned_info: dict[str, Any] = {}
    for spec in a.floor_ratios.split(","):
        r_s, _, to_s = spec.partition(":")
        r, to = float(r_s), int(to_s or 8)
        name = f"ratio {r}" + ("" if to == 8 else f" round-to {to}")
        say(f"pruning detector-n at {name} (2 optimizer steps: latency only)")
        out = t / f"floor-{r}-{to}"
        rep = prune_model(
            "detector-n",
            train,
            out,
            options=PruneOptions(
                ratio=r,
                round_to=to,
                steps=1,
                minutes=None,
                iters=2,
                labels=False,
                threads=a.threads,
                latency_rounds=1,
                progress=False,
            ),
            log=say,
        )
        row = rep.row("step 1")
        assert row is not None  # one step was asked for and run
        pb = export_candidate(Bundle.load(out), runtime="openvino", gate_data=train)
        int8, refused = _int8_both(pb, out, train, a, say, latency_only=True)
        pb = Bundle.load(out)
        pruned_info[name] = {
            "params": row.params,
            "macs": row.macs,
            "int8_refused": refused,
        }
        for art in ("onnx-fp32", "openvino-fp32", *int8.values()):
            models[f"{name} {art}"] = (pb, art)
    rounds = 1 if a.quick else a.rounds
    say(f"timing {len(models)} artifacts in {rounds} alternating rounds")
    lat = interleaved_latency(models, val_images, rounds=rounds, threads=a.threads)
    base = lat["source onnx-fp32"]
    rows: dict[str, dict[str, Any]] = {
        k: {
            "artifact": v.artifact,
            "p50_ms": v.p50_ms,
            "inference_p50_ms": v.inference_p50_ms,
            "pre_post_p50_ms": v.pre_post_p50_ms,
            "latency_ratio": _ratio(v.p50_ms, base.p50_ms),
            "inference_ratio": _ratio(v.inference_p50_ms, base.inference_p50_ms),
        }
        for k, v in lat.items()
    }
    pruned = {k: r for k, r in rows.items() if k != "source onnx-fp32"}
    int8_rows = {k: r for k, r in pruned.items() if "int8" in r["artifact"]}
    best = min(pruned, key=lambda k: pruned[k]["latency_ratio"])
    best_int8 = min(int8_rows, key=lambda k: int8_rows[k]["latency_ratio"]) if int8_rows else None
    best_inf = min(pruned, key=lambda k: pruned[k]["inference_ratio"])
    target = TARGETS["int8_latency_ratio_max"]
    return {
        "status": "done",
        "pruned": pruned_info,
        "rows": rows,
        "summary": {
            "best_any": {"key": best, "latency_ratio": pruned[best]["latency_ratio"]},
            "best_int8": None
            if best_int8 is None
            else {"key": best_int8, "latency_ratio": int8_rows[best_int8]["latency_ratio"]},
            "best_inference_only": {
                "key": best_inf,
                "inference_ratio": pruned[best_inf]["inference_ratio"],
            },
            "target_latency_ratio": target,
            # the end-to-end ratio can only be met if some pruned artifact gets there
            "target_reachable": pruned[best]["latency_ratio"] <= target,
        },
    }


# -- distill -------------------------------------------------------------------------


def _eval_checkpoint(ckpt: Path, out: Path, data: Path) -> float:
    from cvdeploy.bundle import Bundle
    from cvdeploy.compress.measure import accuracy
    from cvdeploy.export import ExportOptions, export_model

    export_model(str(ckpt), formats=["onnx"], out=out, options=ExportOptions(), data=data)
    return accuracy(Bundle.load(out), "onnx-fp32", data, record=False)[1]


def _distill(a: argparse.Namespace, t: Path, data: Path, say: Any) -> dict[str, Any]:
    from cvdeploy.compress import DistillOptions, distill_model
    from cvdeploy.export import export_model
    from cvdeploy.zoo.train import train_detector

    train = data.parent / "images" / "train"
    teacher = t / "teacher"
    if not (teacher / "bundle.json").exists():
        export_model("detector-n", formats=["onnx"], out=teacher, data=train)
    minutes = 0.25 if a.quick else a.distill_minutes
    student = "detector-p"
    say(f"label-free distillation of zoo:{student} from detector-n ({minutes} min)")
    rep = distill_model(
        teacher,
        train,
        t / "distilled",
        options=DistillOptions(
            student=f"zoo:{student}",
            teacher_artifact="onnx-fp32",
            minutes=minutes,
            labels=False,
            eval_data=data,
            threads=a.threads,
            progress=not a.quick,
        ),
        log=say,
    )
    d = rep.to_dict()
    distilled = rep.row("student")
    say(f"labelled training of zoo:{student} ({minutes} min)")
    t0 = time.perf_counter()
    tr = train_detector(
        model=student,
        data=data,
        out_dir=t / "labelled-run",
        time_budget_s=minutes * 60,
        imgsz=256,
        threads=a.threads,
        progress=not a.quick,
    )
    train_s = time.perf_counter() - t0
    labelled = _eval_checkpoint(tr.last, t / "labelled", data)
    free = None if distilled is None else distilled.value
    ratio = _ratio(free, labelled)
    return {
        "status": "done",
        "student": f"zoo:{student}",
        "teacher": "detector-n (onnx-fp32, ONNX Runtime)",
        "budget_minutes": minutes,
        "label_free": {
            "map50_95": free,
            "training": d["training"],
            "teacher_map50_95": d["rows"][0]["value"],
            "report": d,
        },
        "labelled": {
            "map50_95": labelled,
            "seconds": train_s,
            "iterations": tr.iterations,
            "epochs": tr.epochs,
        },
        "summary": {
            "map_ratio": ratio,
            "met": ratio is not None and ratio >= TARGETS["distill_map_ratio_min"],
        },
    }


# -- yolox ---------------------------------------------------------------------------


def _yolox(a: argparse.Namespace, t: Path, say: Any) -> dict[str, Any]:
    rw = realworld_root()
    onnx = rw / "models" / "yolox_nano.onnx"
    coco = rw / "datasets" / "coco128" / "coco128.yaml"
    if not onnx.is_file() or not coco.is_file():
        return {"status": "skipped", "message": f"{rw} is absent (YOLOX-Nano and coco128)"}
    from cvdeploy.compress import DistillOptions, distill_model
    from cvdeploy.export.importer import ImportOverrides, import_model

    import_model(onnx, out=t / "yolox", overrides=ImportOverrides(preset="yolox"))
    images = coco.parent / "images" / "train2017"
    minutes = None if a.quick else a.yolox_minutes
    budget = "2 steps" if minutes is None else f"{minutes} min"
    say(f"distilling zoo:{a.yolox_student} from YOLOX-Nano on coco128 without labels ({budget})")
    rep = distill_model(
        t / "yolox",
        images,
        t / "yolox-student",
        options=DistillOptions(
            student=f"zoo:{a.yolox_student}",
            minutes=minutes,
            iters=2 if a.quick else None,
            labels=False,
            eval_data=coco,
            threads=a.threads,
            progress=not a.quick,
        ),
        log=say,
    )
    d = rep.to_dict()
    teacher, student = d["rows"][0], d["rows"][1]
    return {
        "status": "done",
        "teacher": "yolox_nano.onnx (imported, --preset yolox), no training code",
        "student": f"zoo:{a.yolox_student} (fresh), at the teacher's input size",
        "data": "coco128 images without labels (128); scored on the same images with labels",
        "budget_minutes": minutes,
        "summary": {
            "teacher_map50_95": teacher["value"],
            "student_map50_95": student["value"],
            "map_ratio": _ratio(student["value"], teacher["value"]),
            "student_latency_ratio": _ratio(student["p50_ms"], teacher["p50_ms"]),
            "teacher_p50_ms": teacher["p50_ms"],
            "student_p50_ms": student["p50_ms"],
        },
        "report": d,
    }


# -- classifier ----------------------------------------------------------------------


def _classifier() -> dict[str, Any]:
    meta = json.loads(
        (ROOT / "src" / "cvdeploy" / "zoo" / "weights" / "classifier-n.json").read_text("utf-8")
    )
    top1 = float(meta["metrics"]["top1"])
    secs = float(meta["train_elapsed_s"])
    return {
        "status": "shipped metrics",
        "top1": top1,
        "top5": meta["metrics"].get("top5"),
        "train_elapsed_s": secs,
        "time_budget_s": meta["train_args"].get("time_budget_s"),
        "train_command": meta.get("train_command"),
        "train_machine": meta.get("train_machine"),
        "dataset": meta.get("dataset"),
        "summary": {
            "top1": top1,
            "train_minutes": secs / 60,
            "met": top1 >= TARGETS["classifier_top1_min"]
            and secs <= TARGETS["classifier_train_minutes_max"] * 60,
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Run the phases and write the JSON."""
    a = _args(argv)
    from cvdeploy.data.synthetic import make_detection_dataset
    from cvdeploy.environment import fingerprint

    phases = [p for p in PHASES if p in a.only.split(",")]
    results: dict[str, Any] = {
        "quick": a.quick,
        "threads": a.threads,
        "rounds": a.rounds,
        "targets": TARGETS,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "environment": fingerprint(),
        "loadavg_before": os.getloadavg()[0],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "phases": {},
    }

    def say(msg: str) -> None:
        print(f"   {msg}", flush=True)

    with tempfile.TemporaryDirectory(prefix="cvdeploy-bench-compress-") as tmp:
        t = Path(tmp)
        data: Path | None = None
        if {"prune", "floor", "distill"} & set(phases):
            n_train, n_val = (32, 16) if a.quick else (a.n_train, 200)
            say(f"generating the synthetic set (seed 0, {n_train} train, {n_val} val)")
            data = make_detection_dataset(t / "data", n_train=n_train, n_val=n_val, seed=0)
        for phase in phases:
            print(f"== {phase}", flush=True)
            t0 = time.perf_counter()
            try:
                if phase == "prune":
                    assert data is not None
                    res = _prune(a, t, data, say)
                elif phase == "floor":
                    assert data is not None
                    res = _floor(a, t, data, say)
                elif phase == "distill":
                    assert data is not None
                    res = _distill(a, t, data, say)
                elif phase == "yolox":
                    res = _yolox(a, t, say)
                else:
                    res = _classifier()
            except Exception as exc:  # a failed phase is recorded, not fatal
                traceback.print_exc()
                res = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            res["seconds"] = round(time.perf_counter() - t0, 1)
            results["phases"][phase] = res
            print(f"   {res['status']} in {res['seconds']:.0f} s", flush=True)
            if "summary" in res:
                print(json.dumps(res["summary"], indent=2, default=str), flush=True)
            _write(results, a.out)
    results["loadavg_after"] = os.getloadavg()[0]
    _write(results, a.out)
    print(f"wrote {a.out}")
    failed = [p for p, r in results["phases"].items() if r["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
