"""End to end: the tutorial pipeline against cvdeploy's tuned configuration, on YOLOX-Nano.

The *naive* pipeline is what people copy from the YOLOX ONNX Runtime demo
(``demo/ONNXRuntime/onnx_inference.py`` with ``yolox/utils/demo_utils.py``), written plainly:
``cv2.imread``, the demo's letterbox, an ``onnxruntime.InferenceSession`` with default
options on the FP32 ONNX file, the demo's grid decoding and its numpy NMS (a Python
``while`` loop over the kept boxes). It uses the same thresholds as the cvdeploy spec
(conf 0.25, IoU 0.65), so both do the same work.

The *cvdeploy* side imports the same file with ``--preset yolox`` and runs ``cvdeploy tune``
on it (``tune_bundle``: ``--data coco128 --max-drop 0.01``, formats onnx and openvino,
precisions fp32, fp16, bf16, int8 and int8-bf16 by default (the reduced compute precisions
only where this CPU has them natively), INT8 calibrated on coco128's 128 images with
``--force``), then runs the bundle's recommended configuration (artifact + runtime
settings) through the predictor, as ``predict``/``serve`` would. The tuned bundle is kept in
``--work`` (default ``~/.cache/cvdeploy-bench/yolox-tuned``, outside the repository: the
model never goes into it); ``--reuse`` runs the bundle tuned earlier there instead of
tuning again (the JSON says which).

Both run on the same coco128 images, alternating in blocks of ``--block`` images (ABBA;
image by image would let ONNX Runtime's spinning worker threads slow down whatever runs
right after it on 2 cores), each timed from the file path to the final detections, with
per-stage times (file read + decode, preprocess, inference, decoding + NMS). Writes
``benchmarks/results/e2e_vs_naive_<cpu kind>.json`` (``bf16`` or ``avx2``, so both kinds'
figures are kept) with both distributions, their ratio, the tuned
configuration, its mAP50-95 against FP32 and every tune candidate. Skips with a message
(exit 0) when ``../shared/realworld`` is absent.

Usage::

    python benchmarks/e2e_vs_naive.py [--passes 2] [--warmup 10] [--block 16] [--reuse] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from _common import ROOT, cpu_kind, realworld_root

CONF, IOU, SIZE = 0.25, 0.65, (416, 416)


# ---- the tutorial pipeline (YOLOX demo code, lightly renamed) ---------------------------
def naive_preproc(img: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """The YOLOX demo's ``preproc``: top-left letterbox, pad 114, HWC->CHW float32."""
    padded_img = np.ones((input_size[0], input_size[1], 3), dtype=np.uint8) * 114
    r = min(input_size[0] / img.shape[0], input_size[1] / img.shape[1])
    resized_img = cv2.resize(
        img,
        (int(img.shape[1] * r), int(img.shape[0] * r)),
        interpolation=cv2.INTER_LINEAR,
    ).astype(np.uint8)
    padded_img[: int(img.shape[0] * r), : int(img.shape[1] * r)] = resized_img
    padded_img = padded_img.transpose((2, 0, 1))
    padded_img = np.ascontiguousarray(padded_img, dtype=np.float32)
    return padded_img, r


def naive_decode(outputs: np.ndarray, img_size: tuple[int, int]) -> np.ndarray:
    """The YOLOX demo's ``demo_postprocess``: add grid offsets, exp the sizes, scale."""
    grids, expanded_strides = [], []
    strides = [8, 16, 32]
    hsizes = [img_size[0] // stride for stride in strides]
    wsizes = [img_size[1] // stride for stride in strides]
    for hsize, wsize, stride in zip(hsizes, wsizes, strides, strict=True):
        xv, yv = np.meshgrid(np.arange(wsize), np.arange(hsize))
        grid = np.stack((xv, yv), 2).reshape(1, -1, 2)
        grids.append(grid)
        shape = grid.shape[:2]
        expanded_strides.append(np.full((*shape, 1), stride))
    grids_a = np.concatenate(grids, 1)
    strides_a = np.concatenate(expanded_strides, 1)
    outputs[..., :2] = (outputs[..., :2] + grids_a) * strides_a
    outputs[..., 2:4] = np.exp(outputs[..., 2:4]) * strides_a
    return outputs


def naive_nms(boxes: np.ndarray, scores: np.ndarray, nms_thr: float) -> list[int]:
    """The YOLOX demo's single-class NMS: a Python loop over the kept boxes."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        w = np.maximum(0.0, xx2 - xx1 + 1)
        h = np.maximum(0.0, yy2 - yy1 + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        inds = np.where(ovr <= nms_thr)[0]
        order = order[inds + 1]
    return keep


def naive_multiclass_nms(
    boxes: np.ndarray, scores: np.ndarray, nms_thr: float, score_thr: float
) -> np.ndarray | None:
    """The YOLOX demo's ``multiclass_nms_class_aware``: one NMS per class."""
    final_dets = []
    num_classes = scores.shape[1]
    for cls_ind in range(num_classes):
        cls_scores = scores[:, cls_ind]
        valid_score_mask = cls_scores > score_thr
        if valid_score_mask.sum() == 0:
            continue
        valid_scores = cls_scores[valid_score_mask]
        valid_boxes = boxes[valid_score_mask]
        keep = naive_nms(valid_boxes, valid_scores, nms_thr)
        if len(keep) > 0:
            cls_inds = np.ones((len(keep), 1)) * cls_ind
            dets = np.concatenate([valid_boxes[keep], valid_scores[keep, None], cls_inds], 1)
            final_dets.append(dets)
    if len(final_dets) == 0:
        return None
    return np.concatenate(final_dets, 0)


def naive_pipeline(
    session: Any, path: Path, stamps: list[float] | None = None
) -> np.ndarray | None:
    """Image file -> detections, as in the tutorial (``stamps`` gets the stage boundaries)."""
    mark = stamps.append if stamps is not None else (lambda _t: None)
    origin_img = cv2.imread(str(path))
    if origin_img is None:
        raise SystemExit(f"cannot read {path}")
    mark(time.perf_counter())
    img, ratio = naive_preproc(origin_img, SIZE)
    ort_inputs = {session.get_inputs()[0].name: img[None, :, :, :]}
    mark(time.perf_counter())
    output = session.run(None, ort_inputs)
    mark(time.perf_counter())
    predictions = naive_decode(output[0], SIZE)[0]
    boxes = predictions[:, :4]
    scores = predictions[:, 4:5] * predictions[:, 5:]
    boxes_xyxy = np.ones_like(boxes)
    boxes_xyxy[:, 0] = boxes[:, 0] - boxes[:, 2] / 2.0
    boxes_xyxy[:, 1] = boxes[:, 1] - boxes[:, 3] / 2.0
    boxes_xyxy[:, 2] = boxes[:, 0] + boxes[:, 2] / 2.0
    boxes_xyxy[:, 3] = boxes[:, 1] + boxes[:, 3] / 2.0
    boxes_xyxy /= ratio
    return naive_multiclass_nms(boxes_xyxy, scores, nms_thr=IOU, score_thr=CONF)


# ---- cvdeploy ---------------------------------------------------------------------------
STAGES = ("decode", "preprocess", "inference", "postprocess")


def _stats(samples: list[float]) -> dict[str, Any]:
    from cvdeploy.bench.stats import summarize

    return summarize(samples).to_dict()


def _tuned_bundle(
    model: Path, data_yaml: Path, work: Path, args: argparse.Namespace, notes: list[str]
) -> tuple[Any, dict[str, Any]]:
    """Import + ``cvdeploy tune`` into ``work`` (or reuse the bundle tuned there earlier)."""
    from cvdeploy.bundle import Bundle
    from cvdeploy.export.importer import ImportOverrides, import_model
    from cvdeploy.workflows.tune import tune_bundle
    from cvdeploy.workflows.tune_report import TuneOptions

    if args.reuse and (work / "bundle.json").is_file():
        b = Bundle.load(work)
        rec = b.manifest.recommended
        saved = work.parent / f"{work.name}.tune.json"
        if rec and saved.is_file():
            notes.append(
                f"reused the bundle tuned earlier in {work} (recommended measured "
                f"{rec.get('measured')}); run without --reuse to tune again"
            )
            return b, {**json.loads(saved.read_text(encoding="utf-8")), "reused": True}
        notes.append(f"--reuse: {work} has no tuned configuration, tuning now")
    if work.exists():
        shutil.rmtree(work)
    work.parent.mkdir(parents=True, exist_ok=True)
    import_model(model, out=work, overrides=ImportOverrides(preset="yolox"))
    opts = TuneOptions(
        max_drop=args.max_drop,
        formats=tuple(args.formats.split(",")),
        precisions=tuple(args.precisions.split(",")),
        calib_force=True,  # coco128 has 128 images (< 300 recommended; warned and recorded)
        gate_cosine=args.gate_cosine,
        threads=tuple(int(t) for t in args.threads.split(",")) if args.threads else None,
        warmup=args.tune_warmup,
        iters=args.tune_iters,
    )
    print(
        f"tuning {work} on {data_yaml} (max drop {args.max_drop}, formats {args.formats}, "
        f"precisions {args.precisions})",
        flush=True,
    )
    t0 = time.perf_counter()
    rep = tune_bundle(work, data_yaml, options=opts, log=lambda m: print(f"  tune: {m}"))
    tune = {
        **rep.to_dict(),
        "seconds": time.perf_counter() - t0,
        "options": {
            "max_drop": args.max_drop,
            "formats": args.formats,
            "precisions": args.precisions,
            "calib": f"{data_yaml} (128 images, --force)",
            "gate_cosine": args.gate_cosine,
            "warmup": args.tune_warmup,
            "iters": args.tune_iters,
        },
        "reused": False,
    }
    (work.parent / f"{work.name}.tune.json").write_text(
        json.dumps(tune, indent=2, default=str) + "\n", encoding="utf-8"
    )
    for c in rep.candidates:
        d = c.to_dict()
        print(
            f"  {d.get('artifact')} [{d.get('settings')}] {d.get('status')} "
            f"map {d.get('accuracy')} p50 {(d.get('e2e_ms') or {}).get('p50')}"
        )
    return Bundle.load(work), tune


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and write the JSON; return the process exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", type=int, default=2, help="passes over the 128 images")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--block", type=int, default=16, help="images per alternation block")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    ap.add_argument("--work", type=Path, default=cache / "cvdeploy-bench" / "yolox-tuned")
    ap.add_argument("--reuse", action="store_true", help="reuse the bundle tuned in --work")
    ap.add_argument("--max-drop", type=float, default=0.01)
    ap.add_argument("--formats", default="onnx,openvino")
    ap.add_argument("--precisions", default="fp32,fp16,bf16,int8,int8-bf16")
    ap.add_argument("--threads", default=None, help="threads tune tries (default: 1,2)")
    ap.add_argument("--gate-cosine", type=float, default=0.95, help="INT8 gate (see quantize)")
    ap.add_argument("--tune-iters", type=int, default=30)
    ap.add_argument("--tune-warmup", type=int, default=5)
    ap.add_argument(
        "--out", type=Path, default=ROOT / f"benchmarks/results/e2e_vs_naive_{cpu_kind()}.json"
    )
    args = ap.parse_args(argv)
    rw = realworld_root()
    model = rw / "models" / "yolox_nano.onnx"
    data_yaml = rw / "datasets" / "coco128" / "coco128.yaml"
    data = rw / "datasets" / "coco128" / "images"
    if not model.is_file() or not data.is_dir():
        print(f"skipped: {model} or {data} is absent (real-world models are not on this machine)")
        return 0

    import onnxruntime as ort

    from cvdeploy.data.folder import list_images
    from cvdeploy.data.io import read_image
    from cvdeploy.environment import fingerprint
    from cvdeploy.pipeline.predictor import Predictor
    from cvdeploy.pipeline.results import Detections

    env = fingerprint()
    images = list_images(data)
    notes: list[str] = []
    bundle, tune = _tuned_bundle(model, data_yaml, args.work, args, notes)
    rec = bundle.manifest.recommended
    if not rec:
        raise SystemExit("tune recorded no configuration (no candidate kept the floor)")
    chosen = rec["artifact"]
    load_before = os.getloadavg()[0]
    session = ort.InferenceSession(str(model))  # the tutorial: default options
    pred = Predictor.from_bundle(bundle, batch=1)  # the recommended artifact + settings
    samples: dict[str, list[float]] = {"naive": [], "cvdeploy": []}
    stages: dict[str, dict[str, list[float]]] = {
        k: {s: [] for s in STAGES} for k in ("naive", "cvdeploy")
    }
    dets: dict[str, list[int]] = {"naive": [], "cvdeploy": []}

    def run_naive(p: Path, keep: bool) -> None:
        t0 = time.perf_counter()
        st: list[float] = []
        out = naive_pipeline(session, p, st)
        t1 = time.perf_counter()
        if keep:
            samples["naive"].append((t1 - t0) * 1e3)
            for name, a, b in zip(STAGES, [t0, *st], [*st, t1], strict=True):
                stages["naive"][name].append((b - a) * 1e3)
            dets["naive"].append(0 if out is None else len(out))

    def run_cvdeploy(p: Path, keep: bool) -> None:
        t0 = time.perf_counter()
        img = read_image(p)
        t1 = time.perf_counter()
        (res,), times = pred.predict_batch([img])
        t2 = time.perf_counter()
        if keep:
            samples["cvdeploy"].append((t2 - t0) * 1e3)
            stages["cvdeploy"]["decode"].append((t1 - t0) * 1e3)
            stages["cvdeploy"]["preprocess"].append(times.preprocess)
            stages["cvdeploy"]["inference"].append(times.inference)
            stages["cvdeploy"]["postprocess"].append(times.postprocess)
            dets["cvdeploy"].append(len(res) if isinstance(res, Detections) else 0)

    with pred:
        for p in images[: args.warmup]:
            run_naive(p, False)
            run_cvdeploy(p, False)
        # Alternate in blocks of --block images (ABBA order), not image by image: ONNX
        # Runtime's worker threads spin for a while after each run (its default), and on
        # 2 cores whatever runs right after it is slowed down by that (measured: OpenVINO
        # 32.8 ms right after an ONNX Runtime run, 12.8-18.7 ms alone or after a non-spinning
        # one). Blocks keep the drift of the machine shared and the spin out of the figures;
        # the first image of each block (the one right after the other pipeline) is not kept.
        seq = images * args.passes
        blocks = [seq[i : i + args.block] for i in range(0, len(seq), args.block)]
        for i, blk in enumerate(blocks):
            order = (run_naive, run_cvdeploy) if i % 2 == 0 else (run_cvdeploy, run_naive)
            for fn in order:
                fn(blk[0], False)
                for p in blk[1:]:
                    fn(p, True)
        runtime = pred.runner.describe()
    art = bundle.artifact(chosen)
    naive_s, cvd_s = _stats(samples["naive"]), _stats(samples["cvdeploy"])
    ratio = {k: cvd_s[k] / naive_s[k] for k in ("p50", "mean", "p99")}
    stage_p50 = {
        k: {s: _stats(v)["p50"] for s, v in stages[k].items()} for k in ("naive", "cvdeploy")
    }
    ref = tune.get("reference") or rec.get("reference") or {}
    fp32_map = ref.get("accuracy")
    acc = rec.get("accuracy")
    out: dict[str, Any] = {
        "benchmark": "e2e_vs_naive",
        "model": str(model),
        "dataset": f"coco128 ({len(images)} images) x {args.passes} passes",
        "includes": "image file -> final detections (read + decode, preprocess, inference, "
        "decoding + NMS), batch 1",
        "alternation": f"blocks of {args.block} images, ABBA order; the first image of each "
        "block is run but not kept (ONNX Runtime's spinning threads after the other pipeline)",
        "thresholds": {"conf": CONF, "iou": IOU},
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg()[0],
        "naive": {
            "description": "cv2.imread + YOLOX demo preproc + onnxruntime.InferenceSession "
            "default options (FP32 ONNX) + demo grid decode + demo numpy NMS (Python loop, "
            "per class)",
            "onnxruntime": ort.__version__,
            "e2e_ms": naive_s,
            "stages_p50_ms": stage_p50["naive"],
            "samples_ms": samples["naive"],
            "detections_per_image": float(np.mean(dets["naive"])),
        },
        "cvdeploy": {
            "description": "the bundle's recommended configuration found by cvdeploy tune "
            "(Predictor.from_bundle: recommended artifact + its runtime settings)",
            "artifact": chosen,
            "format": art.format,
            "precision": art.precision,
            "settings": rec.get("options"),
            "runtime": {k: str(v) for k, v in runtime.items()},
            "map50_95": acc,
            "fp32_map50_95": fp32_map,
            "fp32_reference": ref.get("artifact"),
            "map_drop_vs_fp32": None if acc is None or fp32_map is None else fp32_map - acc,
            "e2e_ms": cvd_s,
            "stages_p50_ms": stage_p50["cvdeploy"],
            "samples_ms": samples["cvdeploy"],
            "detections_per_image": float(np.mean(dets["cvdeploy"])),
        },
        "ratio_cvdeploy_over_naive": ratio,
        "ratio_naive_over_cvdeploy": {k: 1 / v for k, v in ratio.items()},
        "target": {"ratio_p50_max": 0.5, "max_drop": 0.01, "met": None},
        "tune": tune,
        "notes": notes,
        "environment": env,
    }
    drop = out["cvdeploy"]["map_drop_vs_fp32"]
    out["target"]["met"] = bool(ratio["p50"] <= 0.5 and drop is not None and drop <= 0.01)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
    print(
        f"naive p50 {naive_s['p50']:.2f} ms (mean {naive_s['mean']:.2f}), cvdeploy {chosen} "
        f"[{rec.get('options')}] p50 {cvd_s['p50']:.2f} ms (mean {cvd_s['mean']:.2f}): "
        f"cvdeploy/naive p50 {ratio['p50']:.3f}x; mAP50-95 {acc} vs FP32 {fp32_map}"
    )
    print(f"stage p50 ms: naive {stage_p50['naive']}, cvdeploy {stage_p50['cvdeploy']}")
    for n in notes:
        print(f"note: {n}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
