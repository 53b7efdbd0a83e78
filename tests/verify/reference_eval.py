"""An independent evaluation, written plainly, to check cvdeploy's eval against.

It shares no code with cvdeploy's pipeline: its own letterbox (as Ultralytics and YOLOX
write theirs), its own per-class greedy NMS in plain numpy, the runtime called directly, and
the COCO ground truth read straight from the official json with pycocotools.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def letterbox_center(img: np.ndarray, size: int) -> tuple[np.ndarray, float, float, float]:
    h, w = img.shape[:2]
    r = min(size / h, size / w)
    nw, nh = round(w * r), round(h * r)
    if (nw, nh) != (w, h):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    dw, dh = (size - nw) / 2, (size - nh) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    img = cv2.copyMakeBorder(
        img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114)
    )
    return img, r, left, top


def letterbox_topleft(img: np.ndarray, size: int) -> tuple[np.ndarray, float, float, float]:
    h, w = img.shape[:2]
    r = min(size / h, size / w)
    out = np.full((size, size, 3), 114, dtype=np.uint8)
    res = cv2.resize(img, (int(w * r), int(h * r)), interpolation=cv2.INTER_LINEAR)
    out[: res.shape[0], : res.shape[1]] = res
    return out, r, 0.0, 0.0


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        rest = []
        for j in order:
            xx1, yy1 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            xx2, yy2 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(0.0, xx2 - xx1) * max(0.0, yy2 - yy1)
            a = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
            b = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
            if inter / (a + b - inter + 1e-12) <= thr:
                rest.append(j)
        order = rest
    return keep


def yolox_decode(out: np.ndarray, size: int) -> np.ndarray:
    grids, strides = [], []
    for s in (8, 16, 32):
        n = size // s
        yv, xv = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        grids.append(np.stack([xv, yv], -1).reshape(-1, 2))
        strides.append(np.full((n * n, 1), s))
    g, st = np.concatenate(grids), np.concatenate(strides)
    out = out.copy()
    out[:, :2] = (out[:, :2] + g) * st
    out[:, 2:4] = np.exp(out[:, 2:4]) * st
    return out


def reference_map(
    *,
    model: Path,
    kind: str,
    coco_json: Path,
    images: Path,
    size: int,
    names: list[str],
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
) -> float:
    """mAP50-95 of an Ultralytics (yolov8 layout) or YOLOX model, computed independently."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(coco_json))
    cat_by_name = {c["name"]: c["id"] for c in gt.loadCats(gt.getCatIds())}
    if model.suffix == ".xml":
        import openvino as ov

        # pinned to f32: OpenVINO would compute in bf16 by default on a CPU with native bf16
        compiled = ov.Core().compile_model(str(model), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

        def run(x: np.ndarray) -> np.ndarray:
            return np.asarray(compiled(x)[0])
    else:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        iname = sess.get_inputs()[0].name

        def run(x: np.ndarray) -> np.ndarray:
            return sess.run(None, {iname: x})[0]

    dets = []
    for img_info in gt.loadImgs(gt.getImgIds()):
        img = cv2.imread(str(images / img_info["file_name"]))
        if kind == "yolox":
            lb, r, px, py = letterbox_topleft(img, size)
            x = lb.transpose(2, 0, 1)[None].astype(np.float32)
            out = yolox_decode(run(x)[0], size)
            xy, wh = out[:, :2], out[:, 2:4]
            scores_all = out[:, 4:5] * out[:, 5:]
        else:
            lb, r, px, py = letterbox_center(img, size)
            x = (lb[..., ::-1].transpose(2, 0, 1)[None] / 255.0).astype(np.float32)
            out = run(x)[0].T
            xy, wh = out[:, :2], out[:, 2:4]
            scores_all = out[:, 4:]
        boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)
        bi, ci = np.nonzero(scores_all > conf)
        b, s, c = boxes[bi], scores_all[bi, ci], ci
        kept: list[tuple[np.ndarray, float, int]] = []
        for cls in np.unique(c):
            m = np.nonzero(c == cls)[0]
            for k in greedy_nms(b[m], s[m], iou):
                kept.append((b[m][k], float(s[m][k]), int(cls)))
        kept.sort(key=lambda t: -t[1])
        for box, score, cls in kept[:max_det]:
            x1, y1, x2, y2 = (box - [px, py, px, py]) / r
            x1, x2 = np.clip([x1, x2], 0, img.shape[1])
            y1, y2 = np.clip([y1, y2], 0, img.shape[0])
            dets.append(
                {
                    "image_id": img_info["id"],
                    "category_id": cat_by_name[names[cls]],
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                    "score": score,
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(json.loads(json.dumps(dets)))
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])
