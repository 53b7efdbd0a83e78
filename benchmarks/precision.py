"""Precision is part of the artifact: speed and accuracy of each precision, side by side.

YOLOX-Nano (``../shared/realworld``) at 416, batch 1: the FP32 ONNX file imported with
``--preset yolox``, then, through the public stages and each one's parity gate,
``openvino:fp32``, ``openvino:bf16`` and ``openvino:fp16`` (where this CPU computes in them
natively), ``cvdeploy quantize --backend openvino`` (NNCF, calibrated on coco128's 128
images) and ``openvino:int8-bf16``. Every artifact runs at its recorded precision (the
runner pins it). For each one:

- inference and end-to-end p50 (the bench harness: file read + decode, preprocessing,
  inference, decoding + NMS), timed in ``--rounds`` alternating rounds (A B C, C B A, ...)
  and reported as the median of each artifact's per-round medians, with ``--threads``;
- mAP50-95 on coco128 (the official json) with the Ultralytics protocol;
- the parity figures its gate recorded.

ONNX Runtime runs with its defaults (spinning worker threads on), as the tutorial pipeline
does. Writes ``benchmarks/results/precision.json`` with the CPU's flags and what it computes
natively. Skips with a message (exit 0) when ``../shared/realworld`` is absent.

Usage::

    python benchmarks/precision.py [--rounds 30] [--threads 2] [--images 16]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, realworld_root


def main(argv: list[str] | None = None) -> int:
    """Build the artifacts, time and evaluate them, write the JSON; return the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30, help="alternating timing rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=16, help="coco128 images timed per round")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/precision.json")
    args = ap.parse_args(argv)
    rw = realworld_root()
    if not (rw / "models" / "yolox_nano.onnx").is_file():
        print(f"skipped: {rw} (YOLOX-Nano, coco128) is absent")
        return 0

    from cvdeploy.bench import measure_side_by_side
    from cvdeploy.bundle import Bundle
    from cvdeploy.environment import fingerprint
    from cvdeploy.export import export_model
    from cvdeploy.export.importer import ImportOverrides, import_model
    from cvdeploy.optimize import QuantizeOptions, quantize_bundle
    from cvdeploy.precision import cpu_flags, describe_native, native_precisions
    from cvdeploy.verify.evaluate import evaluate_bundle

    coco = rw / "datasets" / "coco128"
    coco_yaml, coco_json = coco / "coco128.yaml", coco / "annotations" / "instances_train2017.json"
    here = native_precisions(cpu_flags())
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cvdeploy-precision-") as tmp:
        b_dir = Path(tmp) / "yolox"
        import_model(
            rw / "models" / "yolox_nano.onnx", out=b_dir, overrides=ImportOverrides(preset="yolox")
        )
        formats = ["openvino"]
        for prec, ip in (("bf16", "bf16"), ("fp16", "f16")):
            if ip in here:
                formats.append(f"openvino:{prec}")
            else:
                notes.append(f"openvino:{prec} not made: this CPU has no native {ip}")
        rep = export_model(b_dir, formats=formats, data=coco_yaml)
        for o in rep.outcomes:
            print(f"export {o.artifact_id}: {o.status} {o.message}", flush=True)
        quantize_bundle(
            b_dir,
            coco_yaml,
            options=QuantizeOptions(backend="openvino", force=True, measure=False, progress=False),
        )
        if "bf16" in here:
            rep = export_model(b_dir, formats=["openvino:int8-bf16"], data=coco_yaml)
            for o in rep.outcomes:
                print(f"export {o.artifact_id}: {o.status} {o.message}", flush=True)
        b = Bundle.load(b_dir)
        ids = [a.id for a in b.manifest.artifacts]
        images = sorted((coco / "images" / "train2017").iterdir())[: args.images]
        print(f"timing {', '.join(ids)} in {args.rounds} alternating rounds", flush=True)
        t0 = time.perf_counter()
        lat = measure_side_by_side(
            b, {a: a for a in ids}, images, rounds=args.rounds, threads=args.threads
        )
        timing_s = time.perf_counter() - t0
        rows: list[dict[str, Any]] = []
        for aid in ids:
            ev = evaluate_bundle(b, coco_json, artifact=aid, progress=False, record=False)
            art = b.artifact(aid)
            par = art.latest("parity")
            rows.append(
                {
                    "artifact": aid,
                    "precision": art.precision,
                    "inference_precision": ev.inference_precision,
                    "map50_95": ev.metrics["map50_95"],
                    "map50": ev.metrics["map50"],
                    "inference_p50_ms": lat[aid].inference_p50_ms,
                    "e2e_p50_ms": lat[aid].p50_ms,
                    "parity": None
                    if par is None
                    else {
                        "against": par.name,
                        "passed": par.passed,
                        "cosine_scoring": par.data["outputs"][0].get("cosine_scoring"),
                        "match_fraction": par.data["match_fraction"],
                    },
                }
            )
            print(
                f"{aid:22s} {ev.inference_precision:5s} mAP {ev.metrics['map50_95']:.4f} "
                f"inference p50 {lat[aid].inference_p50_ms:.2f} ms  e2e {lat[aid].p50_ms:.2f} ms",
                flush=True,
            )
    ref = next(r for r in rows if r["artifact"] == "onnx-fp32")
    for r in rows:
        r["inference_vs_onnx_fp32"] = r["inference_p50_ms"] / ref["inference_p50_ms"]
        r["e2e_vs_onnx_fp32"] = r["e2e_p50_ms"] / ref["e2e_p50_ms"]
        r["map_drop_vs_onnx_fp32"] = ref["map50_95"] - r["map50_95"]
    env = fingerprint()
    out = {
        "benchmark": "precision",
        "started": started,
        "model": "YOLOX-Nano 416 (../shared/realworld/models/yolox_nano.onnx, --preset yolox)",
        "dataset": "coco128, official json (128 images)",
        "conditions": {
            "batch": 1,
            "threads": args.threads,
            "rounds": args.rounds,
            "images_per_round": args.images,
            "timing": "median of each artifact's per-round medians, rounds alternating in order",
            "onnxruntime": "default session options (spinning worker threads on)",
            "timing_seconds": round(timing_s, 1),
        },
        "cpu": env["cpu"],
        "native": sorted(here),
        "native_text": describe_native(cpu_flags()),
        "versions": env["packages"],
        "rows": rows,
        "notes": notes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
