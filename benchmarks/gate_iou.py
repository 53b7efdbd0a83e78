"""Where the INT8 gate's box-matching IoU separates good INT8 models from broken ones.

The parity gate counts a candidate's detection as agreeing with its source's when the class
is the same and the boxes overlap at the tolerance's ``match_iou``; INT8 needs 75 % of the
detections to agree. This script makes INT8 artifacts of known quality and measures, for each,
the mAP50-95 it loses against its FP32 source and the share of detections that agree at IoU
0.5, 0.75 and 0.9, on the gate's 16 images (spread over the set, as ``cvdeploy quantize``
picks them) and on every image, with the median IoU of the matched boxes:

* YOLOX-Nano, imported (``cvdeploy import yolox_nano.onnx --preset yolox``): NNCF for
  OpenVINO, NNCF's ONNX backend, and ONNX Runtime's ``quantize_static`` (min-max; the
  broken one: made with the gate switched off, so that it can be measured);
* the same model run as torch (``benchmarks/_onnx_sources.py``, the ``cvdeploy qat`` path):
  torchao PT2E PTQ with ``--keep-float auto`` (its first activation float) and with nothing
  kept float (the broken one), ONNX Q/DQ and OpenVINO;
* the zoo ``detector-n`` on its synthetic data (seed 0): NNCF for OpenVINO and ONNX Runtime.

All YOLOX figures are on coco128 (128 images, 16 for the gate columns); the zoo detector's on
64 synthetic validation images. The gate verdicts of ``cvdeploy`` themselves are not used:
every artifact is made with the gate switched off and compared here, so that the refused
ones can be measured too. Writes ``benchmarks/results/gate_iou.json``; about 5 minutes on
an idle 2-core machine. Skips the YOLOX cases (recorded) without ``../shared/realworld``.

    python benchmarks/gate_iou.py [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import cpu_kind, realworld_root

from cvdeploy.bundle import Bundle
from cvdeploy.data import image_paths
from cvdeploy.data.io import read_image
from cvdeploy.export.gate import GATE_IMAGES, gate_images
from cvdeploy.pipeline import Predictor
from cvdeploy.verify import Tolerance, match_detections

IOUS = (0.5, 0.75, 0.9)
OFF = Tolerance(cosine_min=0.0, rel_max_err=float("inf"), match_min=0.0, score_diff_max=1.0)


def _agreement(bundle: Path, source: str, cands: list[str], data: Path, limit: int | None):
    b = Bundle.load(bundle)
    paths = gate_images(data, [], limit=limit) if limit else image_paths(data, what="data")
    imgs = [read_image(p) for p in paths]

    def dets(art: str) -> list[Any]:
        with Predictor.from_bundle(b, art, batch=1) as p:
            return [p.predict_batch([im])[0][0] for im in imgs]

    src = dets(source)
    res: dict[str, Any] = {}
    for c in cands:
        cand = dets(c)
        denom = max(sum(len(d) for d in src), sum(len(d) for d in cand)) or 1
        row: dict[str, Any] = {"images": len(imgs)}
        pairs = list(zip(src, cand, strict=True))
        for t in IOUS:
            matched = sum(len(match_detections(s, d, t)) for s, d in pairs)
            row[f"agree_at_{t:g}"] = round(matched / denom, 3)
        ious = [m[2] for s, d in pairs for m in match_detections(s, d, 0.5)]
        row["median_iou"] = round(float(np.median(ious)), 3) if ious else None
        res[c] = row
    return res


def _no_gate() -> None:
    """Make every INT8 artifact whatever the gate says (the broken ones are measured too)."""
    import cvdeploy.verify.parity as parity

    parity.TOLERANCES["int8"] = OFF


def _map(bundle: Path, art: str, data: Path) -> float:
    from cvdeploy.verify import evaluate_bundle

    rep = evaluate_bundle(Bundle.load(bundle), data, artifact=art, record=False, progress=False)
    return float(rep.metrics["map50_95"])


def _measure(model: str, made_by: dict[str, str], bundle: Path, data: Path) -> list[dict]:
    """mAP loss and agreement with ``onnx-fp32`` of each artifact of ``made_by``."""
    fp32 = _map(bundle, "onnx-fp32", data)
    arts = list(made_by)
    gate = _agreement(bundle, "onnx-fp32", arts, data, GATE_IMAGES)
    every = _agreement(bundle, "onnx-fp32", arts, data, None)
    rows = []
    for art in arts:
        m = _map(bundle, art, data)
        g = gate[art]
        rows.append({
            "model": model, "made_by": made_by[art], "artifact": art,
            "fp32_map50_95": fp32, "map50_95": m, "map_loss": fp32 - m,
            "gate_images": g, "all_images": every[art],
            "passes_at_0.9": g["agree_at_0.9"] >= 0.75,
            "passes_at_0.75": g["agree_at_0.75"] >= 0.75,
        })  # fmt: skip
        line = f"{model:24} {made_by[art]:34} {art:18} loss {fp32 - m:.4f} "
        print(line + f"agree@.9 {g['agree_at_0.9']} @.75 {g['agree_at_0.75']}", file=sys.stderr)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gate_iou.json")
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from cvdeploy.data.synthetic import make_detection_dataset
    from cvdeploy.export import ExportOptions, ImportOverrides, export_model, import_model
    from cvdeploy.optimize import QuantizeOptions, quantize_bundle

    _no_gate()
    t0 = time.perf_counter()
    cases: list[dict[str, Any]] = []
    rw = realworld_root()
    coco = rw / "datasets" / "coco128" / "coco128.yaml"

    def quantize(bundle: Path, data: Path, backend: str, engine: str, **kw: Any) -> str:
        opts = QuantizeOptions(backend=backend, engine=engine, measure=False, progress=False,
                               overwrite=True, **kw)  # fmt: skip
        return quantize_bundle(bundle, data, options=opts).artifact

    with tempfile.TemporaryDirectory(prefix="cvd-gate-iou-") as tmp:
        work = Path(tmp)
        # the zoo detector on its synthetic data
        syn = make_detection_dataset(work / "syn", n_train=300, n_val=64, seed=0)
        zoo = work / "zoo"
        export_model("detector-n", formats=["onnx", "openvino"], out=zoo, data=syn,
                     options=ExportOptions())  # fmt: skip
        made = {quantize(zoo, syn, "openvino", "ort"): "NNCF (OpenVINO)",
                quantize(zoo, syn, "onnxruntime", "nncf"): "NNCF (ONNX)"}  # fmt: skip
        cases += _measure("detector-n", made, zoo, syn)
        skipped = None
        if not coco.is_file() or not (rw / "models" / "yolox_nano.onnx").is_file():
            skipped = f"YOLOX cases skipped: {rw} has no yolox_nano.onnx and coco128"
            print(skipped, file=sys.stderr)
        else:
            yx, yx_ort = work / "yolox", work / "yolox-ort"
            import_model(rw / "models" / "yolox_nano.onnx", out=yx,
                         overrides=ImportOverrides(preset="yolox"))  # fmt: skip
            shutil.copytree(yx, yx_ort)  # ORT's and NNCF's ONNX INT8 share the id onnx-int8
            kw = {"calib_size": 128, "force": True}
            made = {quantize(yx, coco, "openvino", "ort", **kw): "NNCF (OpenVINO)",
                    quantize(yx, coco, "onnxruntime", "nncf", **kw): "NNCF (ONNX)"}  # fmt: skip
            cases += _measure("YOLOX-Nano (imported)", made, yx, coco)
            made = {quantize(yx_ort, coco, "onnxruntime", "ort", **kw): "ORT quantize_static"}
            cases += _measure("YOLOX-Nano (imported)", made, yx_ort, coco)
            # torchao PT2E PTQ of the model run as torch (cvdeploy qat's start), two schemes
            import yaml
            from _onnx_sources import coco_names, yolox_spec

            from cvdeploy.compress import QatOptions, qat_model

            spec_file = work / "yolox_spec.yaml"
            spec_file.write_text(yaml.safe_dump(yolox_spec(coco_names(rw))))
            train = rw / "datasets" / "coco128" / "images" / "train2017"
            for keep in ("auto", "none"):
                out = work / f"qat-{keep}"
                opts_q = QatOptions(minutes=None, iters=1, backend="openvino", scheme="default",
                                    calib_size=32, keep_float=keep, threads=2,
                                    latency_rounds=1, progress=False)  # fmt: skip
                qat_model("_onnx_sources:yolox_nano", train, out, options=opts_q,
                          spec_file=spec_file)  # fmt: skip
                made = {"onnx-int8-ptq": f"torchao PTQ, --keep-float {keep}",
                        "openvino-int8-ptq": f"torchao PTQ, --keep-float {keep}"}  # fmt: skip
                cases += _measure("YOLOX-Nano (as torch)", made, out, coco)
    res = {
        "cases": cases,
        "skipped": skipped,
        "match_min": 0.75,
        "gate_images": GATE_IMAGES,
        "cpu_kind": cpu_kind(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
