"""End to end: the tutorial pipeline against cvdeploy's configuration, on YOLOX-Nano.

The *naive* pipeline is what people copy from the YOLOX ONNX Runtime demo
(``demo/ONNXRuntime/onnx_inference.py`` with ``yolox/utils/demo_utils.py``), written plainly:
``cv2.imread``, the demo's letterbox, an ``onnxruntime.InferenceSession`` with default
options on the FP32 ONNX file, the demo's grid decoding and its numpy NMS (a Python
``while`` loop over the kept boxes). It uses the same thresholds as the cvdeploy spec
(conf 0.25, IoU 0.65), so both do the same work.

The *cvdeploy* side imports the same file with ``--preset yolox`` and runs the bundle's
recommended artifact, or else the fastest of the artifacts it can make here (measured
first with ``bench_artifact``): the ONNX Runtime artifact, and an OpenVINO one (an
OpenVINO IR when an ``openvino`` exporter is registered, otherwise the OpenVINO runtime
reading the same ONNX file, which it converts in memory at load time).

Both run on the same coco128 images, image by image, alternating which goes first, each
timed from the file path to the final detections. Writes
``benchmarks/results/e2e_vs_naive.json`` with both distributions and their ratio. Skips
with a message (exit 0) when ``../shared/realworld`` is absent.

Usage::

    python benchmarks/e2e_vs_naive.py [--passes 2] [--warmup 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
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


def naive_pipeline(session: Any, path: Path) -> np.ndarray | None:
    """Image file -> detections, as in the tutorial."""
    origin_img = cv2.imread(str(path))
    if origin_img is None:
        raise SystemExit(f"cannot read {path}")
    img, ratio = naive_preproc(origin_img, SIZE)
    ort_inputs = {session.get_inputs()[0].name: img[None, :, :, :]}
    output = session.run(None, ort_inputs)
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
def _add_openvino(bundle: Any, data: Path, notes: list[str]) -> Any:
    """Give the bundle an OpenVINO artifact: exported IR if possible, else ONNX read by OV."""
    from cvdeploy.bundle import Bundle, Provenance
    from cvdeploy.export.run import EXPORTERS, export_model
    from cvdeploy.runtime import RUNTIMES

    if not RUNTIMES.availability("openvino").available:
        notes.append("OpenVINO is not installed: only the ONNX Runtime artifact was considered")
        return bundle
    if "openvino" in EXPORTERS.names() and EXPORTERS.availability("openvino").available:
        rep = export_model(bundle.path, formats=["openvino"], data=data)
        notes.append(
            "openvino export (parity-gated): "
            + ", ".join(f"{o.artifact_id} {o.status} {o.message}".strip() for o in rep.outcomes)
        )
        return Bundle.load(bundle.path)
    src = bundle.artifact("onnx-fp32")
    with bundle.edit(action="bench-setup", details={"note": "OpenVINO runtime on the ONNX"}) as e:
        d = e.artifact_dir("openvino-onnx-fp32")
        shutil.copyfile(bundle.model_file(src), d / "model.onnx")
        e.add_artifact(
            artifact_id="openvino-onnx-fp32",
            format="openvino",
            precision="fp32",
            io=src.io,
            produced_by=Provenance(tool="copy", source=src.id),
        )
    notes.append(
        "no openvino exporter is registered in this tree: the OpenVINO candidate is the "
        "OpenVINO runtime reading the ONNX file (same model, converted in memory at load)"
    )
    return bundle


def _stats(samples: list[float]) -> dict[str, Any]:
    from cvdeploy.bench.stats import summarize

    return summarize(samples).to_dict()


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and write the JSON; return the process exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", type=int, default=2, help="passes over the 128 images")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/e2e_vs_naive.json")
    args = ap.parse_args(argv)
    env_root = os.environ.get("CVDEPLOY_REALWORLD")
    rw = Path(env_root) if env_root else ROOT.parent / "shared" / "realworld"
    model = rw / "models" / "yolox_nano.onnx"
    data = rw / "datasets" / "coco128" / "images"
    if not model.is_file() or not data.is_dir():
        print(f"skipped: {model} or {data} is absent (real-world models are not on this machine)")
        return 0

    import onnxruntime as ort

    from cvdeploy.bench import BenchConfig, bench_artifact
    from cvdeploy.data.folder import list_images
    from cvdeploy.data.io import read_image
    from cvdeploy.diagnose.environment import fingerprint
    from cvdeploy.export.importer import ImportOverrides, import_model
    from cvdeploy.pipeline.predictor import Predictor
    from cvdeploy.pipeline.results import Detections

    env = fingerprint()
    images = list_images(data)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cvdeploy-bench-") as tmp:
        bundle, _ = import_model(
            model, out=Path(tmp) / "yolox", overrides=ImportOverrides(preset="yolox")
        )
        rec = (bundle.manifest.recommended or {}).get("artifact")
        candidates: dict[str, float] = {}
        if rec:
            chosen = rec
            notes.append(f"using the bundle's recommended artifact {rec}")
        else:
            bundle = _add_openvino(bundle, data, notes)
            for a in bundle.manifest.artifacts:
                r = bench_artifact(
                    bundle, a.id, images, config=BenchConfig(warmup=5, iters=40), environment=env
                )
                candidates[a.id] = r.e2e_ms.p50
                print(f"candidate {a.id}: e2e p50 {r.e2e_ms.p50:.2f} ms")
            chosen = min(candidates, key=lambda k: candidates[k])
        session = ort.InferenceSession(str(model))  # the tutorial: default options
        pred = Predictor.from_bundle(bundle, chosen, batch=1)
        naive_ms: list[float] = []
        cvd_ms: list[float] = []
        naive_dets: list[int] = []
        cvd_dets: list[int] = []

        def run_naive(p: Path, keep: bool) -> None:
            t0 = time.perf_counter()
            dets = naive_pipeline(session, p)
            dt = (time.perf_counter() - t0) * 1e3
            if keep:
                naive_ms.append(dt)
                naive_dets.append(0 if dets is None else len(dets))

        def run_cvdeploy(p: Path, keep: bool) -> None:
            t0 = time.perf_counter()
            (res,), _ = pred.predict_batch([read_image(p)])
            dt = (time.perf_counter() - t0) * 1e3
            if keep:
                cvd_ms.append(dt)
                cvd_dets.append(len(res) if isinstance(res, Detections) else 0)

        with pred:
            for p in images[: args.warmup]:
                run_naive(p, False)
                run_cvdeploy(p, False)
            for i, p in enumerate(images * args.passes):
                if i % 2 == 0:
                    run_naive(p, True)
                    run_cvdeploy(p, True)
                else:
                    run_cvdeploy(p, True)
                    run_naive(p, True)
            runtime = pred.runner.describe()
        art = bundle.artifact(chosen)
    naive_s, cvd_s = _stats(naive_ms), _stats(cvd_ms)
    ratio = {k: naive_s[k] / cvd_s[k] for k in ("p50", "mean", "p99")}
    out: dict[str, Any] = {
        "benchmark": "e2e_vs_naive",
        "model": str(model),
        "dataset": f"coco128 ({len(images)} images) x {args.passes} passes",
        "includes": "image file -> final detections (read + decode, preprocess, inference, "
        "decoding + NMS), batch 1, alternating which pipeline runs first",
        "thresholds": {"conf": CONF, "iou": IOU},
        "naive": {
            "description": "cv2.imread + YOLOX demo preproc + onnxruntime.InferenceSession "
            "default options (FP32 ONNX) + demo grid decode + demo numpy NMS (Python loop, "
            "per class)",
            "onnxruntime": ort.__version__,
            "e2e_ms": naive_s,
            "samples_ms": naive_ms,
            "detections_per_image": float(np.mean(naive_dets)),
        },
        "cvdeploy": {
            "artifact": chosen,
            "format": art.format,
            "precision": art.precision,
            "runtime": {k: str(v) for k, v in runtime.items()},
            "candidates_e2e_p50_ms": candidates,
            "e2e_ms": cvd_s,
            "samples_ms": cvd_ms,
            "detections_per_image": float(np.mean(cvd_dets)),
        },
        "ratio_naive_over_cvdeploy": ratio,
        "notes": notes,
        "environment": env,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(
        f"naive p50 {naive_s['p50']:.2f} ms (mean {naive_s['mean']:.2f}), cvdeploy {chosen} "
        f"p50 {cvd_s['p50']:.2f} ms (mean {cvd_s['mean']:.2f}): naive/cvdeploy p50 "
        f"{ratio['p50']:.2f}x"
    )
    for n in notes:
        print(f"note: {n}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
