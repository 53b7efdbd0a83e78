"""Pipeline overhead: how much pre- and post-processing add to inference.

The core requirement: on the Ultralytics YOLOv8n INT8 OpenVINO IR at 640x640 over coco128,
mean (preprocess + postprocess) must stay under 25% of mean inference time. Measured with
the same Predictor the server uses (through ``cvdeploy.bench.bench_artifact``), batch 1,
under two threshold settings:

* ``predict``: the spec's defaults (conf 0.25, IoU 0.7, one class per box);
* ``eval``: the validation protocol (conf 0.001, IoU 0.7, max 300, multi-label), where NMS
  sees many more candidates.

Image file read + decode is timed too but reported apart: it is not part of the ratio.
Writes ``benchmarks/results/pipeline_overhead.json``. Skips with a message (exit 0) when
``../shared/realworld`` (or ``$CVDEPLOY_REALWORLD``) is absent.

Usage::

    python benchmarks/pipeline_overhead.py [--iters 256] [--warmup 10] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import ROOT, realworld_root

TARGET = 0.25


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the JSON; return the process exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=256, help="measured images per protocol")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="runtime threads (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/pipeline_overhead.json")
    args = ap.parse_args(argv)

    rw = realworld_root()
    model = rw / "models" / "yolov8n_int8_openvino_model"
    data = rw / "datasets" / "coco128" / "images"
    if not model.is_dir() or not data.is_dir():
        print(f"skipped: {model} or {data} is absent (real-world models are not on this machine)")
        return 0

    from cvdeploy.bench import BenchConfig, bench_artifact
    from cvdeploy.data.folder import list_images
    from cvdeploy.environment import fingerprint
    from cvdeploy.export.importer import import_model
    from cvdeploy.pipeline.predictor import Thresholds

    env = fingerprint()
    images = list_images(data)
    protocols = {
        "predict": Thresholds(),
        "eval": Thresholds(conf=0.001, iou=0.7, max_det=300, multi_label=True),
    }
    out: dict[str, Any] = {
        "benchmark": "pipeline_overhead",
        "model": str(model),
        "dataset": f"coco128 ({len(images)} images)",
        "target": f"(preprocess + postprocess) / inference < {TARGET:.0%} (means)",
        "protocols": {},
    }
    with tempfile.TemporaryDirectory(prefix="cvdeploy-bench-") as tmp:
        bundle, _ = import_model(model, out=Path(tmp) / "yolov8n")
        art = bundle.manifest.artifacts[0]
        out["artifact"] = {"id": art.id, "format": art.format, "precision": art.precision}
        for name, th in protocols.items():
            cfg = BenchConfig(
                batch=1, threads=args.threads, warmup=args.warmup, iters=args.iters, thresholds=th
            )
            r = bench_artifact(bundle, art.id, images, config=cfg, environment=env)
            st = r.stages_ms
            pre, inf, post = st["preprocess"], st["inference"], st["postprocess"]
            ratio = (pre.mean + post.mean) / inf.mean
            ratio_p50 = (pre.p50 + post.p50) / inf.p50
            out["protocols"][name] = {
                "thresholds": r.conditions["thresholds"],
                "imgsz": list(r.imgsz),
                "e2e_ms": r.e2e_ms.to_dict(),
                "stages_ms": {k: v.to_dict() for k, v in st.items()},
                "pre_post_over_inference": ratio,
                "pre_post_over_inference_p50": ratio_p50,
                "pre_post_share_of_e2e": r.pre_post_share,
                "meets_target": ratio < TARGET,
                "throughput_ips": r.throughput_ips,
                "conditions": r.conditions,
            }
            print(
                f"{name:8s} pre {pre.mean:6.2f} ms  inference {inf.mean:7.2f} ms  post "
                f"{post.mean:6.2f} ms  decode {st['decode'].mean:5.2f} ms  -> (pre+post)/inf "
                f"{ratio:.1%} (p50s {ratio_p50:.1%}), target < {TARGET:.0%}: "
                f"{'met' if ratio < TARGET else 'NOT met'}"
            )
    out["environment"] = env
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
