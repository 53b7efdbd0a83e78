"""`cvdeploy doctor` and drift monitoring: every target of the issue in one JSON.

Parts (``--parts``, default all), each written into ``benchmarks/results/doctor.json`` as it
finishes (a part not run this time keeps its previous result, with its date):

* ``audit``: the preprocessing audit. On each model (the zoo detector, YOLOX-Nano, YOLOv8n
  INT8 OpenVINO and YOLO11n INT8 OpenVINO), for ``--trials`` random splits of the images
  (64 reference images, 32 production images), production model inputs are made with one
  injected fault (BGR<->RGB, missing /255 (or an extra one for YOLOX, which takes 0..255),
  stretch instead of letterbox, the other alignment, ImageNet mean/std, pad 0 instead of
  114) and :func:`cvdeploy.diagnose.infer_fed_pipeline` must name exactly that field; a
  clean case (no fault) must name nothing. The zoo detector's images are synthetic val
  images cropped to 4:3 and 3:4 (square images have no padding to read).
* ``layers``: layer localisation. INT8 OpenVINO artifacts (zoo detector, YOLOX-Nano) with
  one perturbed quantization scale (an activation quantizer's range divided by 16, or one
  convolution's weight scales multiplied by 2) at a random layer: the report's first jump
  must be that layer, in every trial; the clean artifact must have no jump. On the real
  YOLOX-Nano INT8 artifact: the layers named, and how much of the mAP loss keeping them in
  float recovers (re-quantized with the same calibration, measured on coco128).
* ``layers-ort``: the same question on a YOLOX-Nano INT8 artifact that lost a lot: ONNX
  Runtime's ``quantize_static`` (``cvdeploy quantize --backend onnxruntime``, 128 coco128
  images; its INT8 gate refuses it, so it is saved here with ``save_refused``, as an
  artifact made outside cvdeploy would reach production): the layers doctor names, and
  what keeping them in float recovers, against the calibration noise and a placebo.
* ``drift``: false alarms over ``--splits`` random no-shift splits of real images, and
  detection of moderate brightness, blur, noise and JPEG-quality shifts: MNIST t10k (the
  real MNIST CNN, 500 reference / 200-image windows) and coco128 (YOLOX-Nano, 64 / 64, the
  most its 128 images allow), plus the compute time per window (statistics + tests).
* ``doctor``: wall time of ``cvdeploy doctor`` (library call) on YOLOX-Nano (ONNX FP32,
  OpenVINO FP32 and INT8) with coco128 as ``--data`` and 64 darkened coco128 images as
  ``--production``: with the keep-float trial, and without.
* ``serve``: the drift check's overhead: ``cvdeploy serve`` of the YOLOX-Nano bundle (with
  its reference) with the drift check at its default sample rate against the same server
  with it off, one request in flight, alternating blocks; p50 ratio.

Timing figures (``drift.*.seconds_per_window``, ``doctor``, ``serve``) are only meaningful
on a quiet machine. ``--quick`` runs every part with tiny budgets (to check the script).

Usage::

    python benchmarks/doctor.py [--parts audit,layers,layers-ort,drift,doctor,serve] [--trials 5]
        [--splits 100] [--shift-trials 50] [--quick] [--work DIR]

Needs ``../shared/realworld`` (skips, exit 0, without it); caches bundles in ``--work``
(default ``~/.cache/cvdeploy-bench/doctor``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from _common import ROOT, realworld_root

OUT = ROOT / "benchmarks" / "results" / "doctor.json"
FAULTS: list[tuple[str, Callable[[Any], Any]]] = [
    ("color", lambda pp: "bgr" if pp.color == "rgb" else "rgb"),
    ("scale", lambda pp: 1.0 if pp.scale < 0.5 else 1 / 255),
    ("resize", lambda pp: "stretch"),
    ("align", lambda pp: "top-left" if pp.align == "center" else "center"),
    ("mean_std", lambda pp: "imagenet"),
    ("pad_value", lambda pp: 0),
]


def _load() -> float:
    return os.getloadavg()[0]


# bundles ------------------------------------------------------------------------------------------
def _yolox(work: Path, rw: Path, coco: Path) -> Path:
    """YOLOX-Nano: ONNX FP32 (imported), OpenVINO FP32 and INT8 (NNCF on coco128)."""
    from cvdeploy.bundle import Bundle
    from cvdeploy.export import ImportOverrides, import_model
    from cvdeploy.optimize import QuantizeOptions, quantize_bundle

    b = work / "yolox"
    if (b / "bundle.json").is_file() and any(
        a.id == "openvino-int8" for a in Bundle.load(b).manifest.artifacts
    ):
        return b
    shutil.rmtree(b, ignore_errors=True)
    import_model(
        rw / "models" / "yolox_nano.onnx", out=b, overrides=ImportOverrides(preset="yolox")
    )
    quantize_bundle(
        b,
        coco,
        options=QuantizeOptions(
            backend="openvino", calib_size=128, force=True, measure=False, progress=False
        ),
    )
    return b


def _imported(work: Path, src: Path, name: str) -> Path:
    from cvdeploy.export import import_model

    b = work / name
    if not (b / "bundle.json").is_file():
        shutil.rmtree(b, ignore_errors=True)
        import_model(src, out=b)
    return b


def _zoo(work: Path) -> tuple[Path, Path]:
    """The shipped detector-n: ONNX/OpenVINO FP32 and OpenVINO INT8 (300 synthetic train
    images), and its synthetic data (seed 0)."""
    from cvdeploy.bundle import Bundle
    from cvdeploy.data.synthetic import make_detection_dataset
    from cvdeploy.export import ExportOptions, export_model
    from cvdeploy.optimize import QuantizeOptions, quantize_bundle

    data = work / "zoo-data" / "data.yaml"
    if not data.is_file():
        make_detection_dataset(data.parent, n_train=300, n_val=200, seed=0)
    b = work / "zoo"
    if (b / "bundle.json").is_file() and any(
        a.id == "openvino-int8" for a in Bundle.load(b).manifest.artifacts
    ):
        return b, data
    shutil.rmtree(b, ignore_errors=True)
    export_model(
        "detector-n", formats=["onnx", "openvino"], out=b, data=data, options=ExportOptions()
    )
    quantize_bundle(
        b, data, options=QuantizeOptions(backend="openvino", measure=False, progress=False)
    )
    return b, data


def _crop43(img: np.ndarray, i: int) -> np.ndarray:
    h, w = img.shape[:2]
    return img[:, : int(w * 0.75)] if i % 2 else img[: int(h * 0.75)]


# audit --------------------------------------------------------------------------------------------
def part_audit(work: Path, rw: Path, coco: Path, trials: int) -> dict[str, Any]:
    from cvdeploy.bundle import Bundle
    from cvdeploy.diagnose import fault_tensors, image_features, infer_fed_pipeline
    from cvdeploy.diagnose.features import IMAGE_FEATURES
    from cvdeploy.pipeline import Predictor

    zoo, zoo_data = _zoo(work)
    coco_imgs = [
        cv2.imread(str(p)) for p in sorted((coco.parent / "images" / "train2017").glob("*.jpg"))
    ]
    syn = sorted((zoo_data.parent / "images" / "val").glob("*.jpg"))
    syn_imgs = [_crop43(cv2.imread(str(p)), i) for i, p in enumerate(syn)]
    models = {
        "zoo detector-n (onnx-fp32)": (zoo, "onnx-fp32", syn_imgs),
        "YOLOX-Nano (onnx-fp32)": (_yolox(work, rw, coco), "onnx-fp32", coco_imgs),
        "YOLOv8n INT8 OpenVINO": (
            _imported(work, rw / "models" / "yolov8n_int8_openvino_model", "y8"),
            None,
            coco_imgs,
        ),
        "YOLO11n INT8 OpenVINO": (
            _imported(work, rw / "models" / "yolo11n_int8_openvino_model", "y11"),
            None,
            coco_imgs,
        ),
    }
    i = IMAGE_FEATURES.index
    out: dict[str, Any] = {"models": {}, "trials": trials, "production_images": 32}
    named = total = clean_false = clean_total = 0
    for label, (bpath, art, imgs) in models.items():
        b = Bundle.load(bpath)
        spec = b.spec
        pred = Predictor.from_bundle(b, art, batch=1)
        pred.runner.load()
        feats = np.array(
            [image_features(im)[[i("mean_b"), i("mean_g"), i("mean_r")]] for im in imgs]
        )
        aspects = np.array([im.shape[1] / im.shape[0] for im in imgs])
        per: dict[str, Any] = {}
        rng = np.random.default_rng(0)
        for t in range(trials):
            order = rng.permutation(len(imgs))
            ref, prod = order[:64], order[64:96]
            prod_imgs = [imgs[k] for k in prod]
            for field, value in [("clean", None), *FAULTS]:
                changes = [] if field == "clean" else [(field, value(spec.preprocess))]
                t0 = time.perf_counter()
                tens = fault_tensors(prod_imgs, spec, changes, layout=pred.runner.io.layout)
                rep = infer_fed_pipeline(
                    tens,
                    spec,
                    kind="tensor",
                    reference_means=feats[ref],
                    reference_aspects=aspects[ref],
                    pred=pred,
                )
                got = [d.field for d in rep.differences]
                ok = got == ([] if field == "clean" else [field])
                row = per.setdefault(field, {"correct": 0, "cases": 0, "named": [], "seconds": []})
                row["correct"] += ok
                row["cases"] += 1
                row["seconds"].append(round(time.perf_counter() - t0, 2))
                if not ok:
                    row["named"].append(
                        {
                            "trial": t,
                            "named": got,
                            "fields": [
                                {"field": f.field, "fed": f.fed, "evidence": f.evidence}
                                for f in rep.fields
                            ],
                        }
                    )
                if field == "clean":
                    clean_total += 1
                    clean_false += not ok
                else:
                    total += 1
                    named += ok
            print(
                f"  audit {label} trial {t + 1}/{trials}: "
                + ", ".join(f"{k} {v['correct']}/{v['cases']}" for k, v in per.items()),
                flush=True,
            )
        pred.runner.close()
        out["models"][label] = per
    out["named_correctly"] = named / total if total else None
    out["cases"] = total
    out["clean_false_findings"] = clean_false
    out["clean_cases"] = clean_total
    return out


# layers -------------------------------------------------------------------------------------------
def _fed_by(xml: Path, conv: str) -> tuple[str, list[str]]:
    """The FakeQuantize in front of ``conv`` and every convolution it feeds (in order).

    One quantizer often feeds several layers (a tensor read by several branches): scaling
    its range perturbs all of them alike, and the trial's fault is that quantizer's, seen
    in every layer it feeds; which of them was drawn is not something a measurement can
    tell (the zoo detector: ``Multiply_17744``, ``_17758`` and ``_17772`` read one
    quantized tensor)."""
    import openvino as ov

    m = ov.Core().read_model(str(xml))
    op = next(o for o in m.get_ordered_ops() if o.get_friendly_name() == conv)
    fq = op.input(0).get_source_output().get_node()
    fed = {
        t.get_node().get_friendly_name()
        for t in fq.output(0).get_target_inputs()
        if t.get_node().get_type_name() in ("Convolution", "GroupConvolution")
    }
    order = [o.get_friendly_name() for o in m.get_ordered_ops()]
    return fq.get_friendly_name(), [n for n in order if n in fed]


def _perturb(xml: Path, out: Path, conv: str, kind: str) -> None:
    import openvino as ov
    from openvino import opset13 as ops

    m = ov.Core().read_model(str(xml))
    op = next(o for o in m.get_ordered_ops() if o.get_friendly_name() == conv)
    if kind == "activation":  # the quantizer in front: range / 16 (its input clipped)
        fq = op.input(0).get_source_output().get_node()  # shared: see _fed_by
        for k in (1, 2, 3, 4):
            c = fq.input(k).get_source_output().get_node()
            fq.input(k).replace_source_output(
                ops.constant((c.get_data() / 16).astype(np.float32)).output(0)
            )
    else:  # the weights' dequantization scales x 2
        n = op.input(1).get_source_output().get_node()
        while n.get_type_name() not in ("Multiply", "Constant"):
            n = n.input(0).get_source_output().get_node()
        if n.get_type_name() == "Constant":
            op.input(1).replace_source_output(
                ops.constant((n.get_data() * 2).astype(np.float32)).output(0)
            )
        else:
            for k in (0, 1):
                c = n.input(k).get_source_output().get_node()
                if c.get_type_name() == "Constant" and c.get_element_type() == ov.Type.f32:
                    n.input(k).replace_source_output(
                        ops.constant((c.get_data() * 2).astype(np.float32)).output(0)
                    )
                    break
    ov.save_model(m, str(out), compress_to_fp16=False)


def _rehash(bundle: Path) -> None:
    from cvdeploy.bundle import sha256_file

    mf = bundle / "bundle.json"
    d = json.loads(mf.read_text())
    for a in d["artifacts"]:
        for f in a["files"]:
            p = bundle / f["path"]
            f["sha256"], f["size"] = sha256_file(p), p.stat().st_size
    mf.write_text(json.dumps(d, indent=2))


def _yolox_sets(layers: list[Any]) -> dict[str, list[str]]:
    """Candidate keep-float sets of YOLOX-Nano (``Conv_N/WithoutBiases``; N <= 197: the
    CSPDarknet backbone, 203-296: the PAN neck, >= 299: the decoupled head, whose last
    convolutions 314/327/328, 347/360/361, 380/393/394 give the class, box and objectness
    outputs), pairs of them (only the third part quantized), the depthwise convolutions, the
    8 largest output shares, the 8 worst isolated SQNRs, and placebos (the healthiest
    layers: what changing the quantized set does by itself)."""
    from cvdeploy.diagnose.layerwise import placebo_layers

    def n(s: Any) -> int:
        return int(s.layer.split("_")[1].split("/")[0])

    conv = [s for s in layers if s.layer.startswith("Conv_")]
    preds = {314, 327, 328, 347, 360, 361, 380, 393, 394}
    by_share = sorted(layers, key=lambda s: -(s.output_share or 0))[:8]
    by_local = sorted(layers, key=lambda s: s.local_db)[:8]
    return {
        "head_predictions": [s.layer for s in conv if n(s) in preds],
        "head": [s.layer for s in conv if n(s) >= 299],
        "backbone": [s.layer for s in conv if n(s) <= 197],
        "neck": [s.layer for s in conv if 197 < n(s) < 299],
        "backbone_and_head": [s.layer for s in conv if n(s) <= 197 or n(s) >= 299],
        "neck_and_head": [s.layer for s in conv if n(s) > 197],
        "backbone_and_neck": [s.layer for s in conv if n(s) < 299],
        "depthwise": [s.layer for s in layers if s.op_type == "GroupConvolution"],
        "top8_output_share": [s.layer for s in by_share],
        "worst8_isolated": [s.layer for s in by_local],
        "placebo1": placebo_layers(layers, ["-"]),
        "placebo8": placebo_layers(layers, ["-"] * 8),
    }


def part_layers(
    work: Path,
    rw: Path,
    coco: Path,
    trials: int,
    keep_trial: bool,
    noise: int = 3,
    keep_sets: bool = True,
) -> dict[str, Any]:
    import openvino as ov

    from cvdeploy.bundle import Bundle
    from cvdeploy.diagnose import compare_layers
    from cvdeploy.diagnose.layerwise import placebo_layers, try_keep_float
    from cvdeploy.errors import CvdeployError

    zoo, zoo_data = _zoo(work)
    yolox = _yolox(work, rw, coco)
    images = {
        "zoo": [
            _crop43(cv2.imread(str(p)), i)
            for i, p in enumerate(sorted((zoo_data.parent / "images" / "val").glob("*.jpg"))[:4])
        ],
        "yolox": [
            cv2.imread(str(p))
            for p in sorted((coco.parent / "images" / "train2017").glob("*.jpg"))[:4]
        ],
    }
    out: dict[str, Any] = {"perturbed": {}}
    for name, b in (("zoo", zoo), ("yolox", yolox)):
        xml = b / "openvino-int8" / "model.xml"
        m = ov.Core().read_model(str(xml))
        convs = [
            o.get_friendly_name()
            for o in m.get_ordered_ops()
            if o.get_type_name() in ("Convolution", "GroupConvolution")
            and o.input(0).get_source_output().get_node().get_type_name() == "FakeQuantize"
        ]
        t0 = time.perf_counter()
        clean = compare_layers(Bundle.load(b), "openvino-int8", images[name], attribute=0)
        res: dict[str, Any] = {
            "clean_first_jump": clean.first_jump,
            "clean_seconds": round(time.perf_counter() - t0, 1),
            "layers": len(clean.layers),
            "trials": [],
        }
        rng = random.Random(0)
        for kind in ("activation", "weights"):
            for _ in range(trials):
                conv = rng.choice(convs)
                with tempfile.TemporaryDirectory() as tmp:
                    cp = Path(tmp) / "b"
                    shutil.copytree(b, cp)
                    _perturb(xml, cp / "openvino-int8" / "model.xml", conv, kind)
                    _rehash(cp)
                    rep = compare_layers(
                        Bundle.load(cp), "openvino-int8", images[name], attribute=0
                    )
                st = rep.layer(conv)
                trial: dict[str, Any] = {"kind": kind, "layer": conv}
                if kind == "activation":
                    # the perturbed quantizer feeds `fed`: a shared one is localised when
                    # the report names it and exactly the layers it feeds, a layer's own
                    # when the report names that layer alone
                    fq, fed = _fed_by(xml, conv)
                    shared = len(fed) > 1
                    trial.update(quantizer=fq, fed_layers=fed)
                    hit = (
                        rep.jump_quantizer == fq and rep.jump_layers == fed
                        if shared
                        else rep.first_jump == conv and rep.jump_layers == [conv]
                    )
                else:  # one layer's weights: that layer alone
                    hit = rep.first_jump == conv and rep.jump_layers == [conv]
                trial.update(
                    first_jump=rep.first_jump,
                    jump_quantizer=rep.jump_quantizer,
                    jump_layers=rep.jump_layers,
                    localised=hit,
                    local_db=None if st is None else round(st.local_db, 1),
                    threshold_db=round(rep.threshold_db, 1),
                )
                res["trials"].append(trial)
                print(
                    f"  layers {name} {kind} {conv}: jump {rep.first_jump}"
                    + (
                        f" (quantizer {rep.jump_quantizer}: {rep.jump_layers})"
                        if rep.jump_quantizer
                        else ""
                    )
                    + ("" if hit else " NOT LOCALISED"),
                    flush=True,
                )
        ok = [t["localised"] for t in res["trials"]]
        res["localised"] = sum(ok)
        res["cases"] = len(ok)
        res["shared_quantizer_cases"] = sum(
            1 for t in res["trials"] if len(t.get("fed_layers") or []) > 1
        )
        out["perturbed"][name] = res
    # the real YOLOX-Nano INT8 artifact: which layers, and what keeping them in float recovers
    imgs8 = [
        cv2.imread(str(p))
        for p in sorted((coco.parent / "images" / "train2017").glob("*.jpg"))[::16]
    ]
    lr = compare_layers(Bundle.load(yolox), "openvino-int8", imgs8, attribute=4)
    real: dict[str, Any] = {
        "keep_float": lr.keep_float,
        "first_jump": lr.first_jump,
        "largest_output_shares": [
            {
                "layer": s.layer,
                "output_share": round(s.output_share or 0, 3),
                "local_db": round(s.local_db, 1),
            }
            for s in sorted(lr.layers, key=lambda s: -(s.output_share or 0))[:12]
        ],
        "worst_isolated": [
            {"layer": s.layer, "local_db": round(s.local_db, 1), "sqnr_db": round(s.sqnr_db, 1)}
            for s in sorted(lr.layers, key=lambda s: s.local_db)[:10]
        ],
    }
    if keep_trial:
        t0 = time.perf_counter()
        real["trial"] = trial = try_keep_float(
            Bundle.load(yolox),
            "openvino-int8",
            lr.keep_float,
            coco,
            calib=coco,
            noise=noise,
            placebo=placebo_layers(lr.layers, lr.keep_float),
        )
        real["trial_seconds"] = round(time.perf_counter() - t0, 1)
        if keep_sets:  # is the loss concentrated anywhere? one quantization + eval per set
            known = {"openvino-fp32": trial["map_fp32"], "openvino-int8": trial["map_int8"]}
            real["sets"] = {}
            for set_name, keep in _yolox_sets(lr.layers).items():
                t0 = time.perf_counter()
                try:
                    t = try_keep_float(
                        Bundle.load(yolox), "openvino-int8", keep, coco, calib=coco, known=known
                    )
                    row = {
                        "layers": len(keep),
                        "map_keep": round(t["map_keep"], 4),
                        "recovered": None if t["recovered"] is None else round(t["recovered"], 3),
                    }
                except CvdeployError as exc:  # e.g. the re-quantized model fails its gate
                    row = {"layers": len(keep), "error": exc.message}
                row.update(keep_float=keep, seconds=round(time.perf_counter() - t0, 1))
                real["sets"][set_name] = row
                print(f"  keep-float set {set_name}: {row.get('recovered', row.get('error'))}")
    out["yolox_real_int8"] = real
    return out


def part_layers_ort(work: Path, rw: Path, coco: Path, noise: int) -> dict[str, Any]:
    """YOLOX-Nano quantized by ONNX Runtime's quantize_static: doctor's layers and its trial.

    Runs what ``cvdeploy doctor BUNDLE --data coco128.yaml --artifact onnx-int8 --only
    accuracy,layers --keep-float-noise N`` runs (the library call), and records the layers it
    names and its keep-float trial (calibration noise and placebo included).
    """
    from cvdeploy.bundle import Bundle
    from cvdeploy.diagnose import DoctorOptions, run_doctor
    from cvdeploy.optimize import QuantizeOptions, quantize_bundle

    yolox = _yolox(work, rw, coco)
    b = work / "yolox-ort"
    shutil.rmtree(b, ignore_errors=True)
    shutil.copytree(yolox, b)
    t0 = time.perf_counter()
    quantize_bundle(
        b,
        coco,
        options=QuantizeOptions(
            backend="onnxruntime", engine="ort", calib_size=128, force=True, measure=False,
            progress=False, source="onnx-fp32", save_refused=True,
        ),
    )  # fmt: skip
    gate = Bundle.load(b).artifact("onnx-int8").latest("parity")
    t1 = time.perf_counter()
    rep = run_doctor(
        b,
        DoctorOptions(
            data=coco, artifact="onnx-int8", sections=("accuracy", "layers"),
            keep_float_noise=noise, progress=False,
        ),
    )  # fmt: skip
    reports = rep.to_dict()["sections"]["layers"]["data"]["reports"]
    lr = next(r for r in reports if r["artifact"] == "onnx-int8")
    layers = sorted(lr["layers"], key=lambda s: -(s.get("output_share") or 0))
    out: dict[str, Any] = {
        "made_by": "cvdeploy quantize --backend onnxruntime --engine ort (quantize_static, "
        "minmax, per-channel weights, uint8 activations), 128 coco128 images",
        "passes_gate": bool(gate and gate.passed),
        "gate_failures": list((gate.data or {}).get("failures") or []) if gate else [],
        "command": "cvdeploy doctor BUNDLE --data coco128.yaml --artifact onnx-int8 --only "
        f"accuracy,layers --keep-float-noise {noise}",
        "doctor_seconds": round(time.perf_counter() - t1, 1),
        "keep_float": lr["keep_float"],
        "first_jump": lr["first_jump"],
        "largest_output_shares": [
            {
                "layer": s["layer"],
                "output_share": round(s.get("output_share") or 0, 3),
                "local_db": round(s["local_db"], 1),
            }
            for s in layers[:8]
        ],
        "findings": [f"{f.severity}: {f.title}" for f in rep.findings],
        "trial": lr.get("trial"),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    t = out["trial"] or {}
    print(
        f"  layers-ort: keep {lr['keep_float']}: {t.get('map_int8')} -> {t.get('map_keep')} "
        f"(FP32 {t.get('map_fp32')}), recovered {t.get('recovered')}, gate "
        f"{t.get('keep_passes_gate')} {t.get('error', '')}",
        flush=True,
    )
    return out


# drift --------------------------------------------------------------------------------------------
def _shift(img: np.ndarray, kind: str, strength: dict[str, float]) -> bytes:
    if kind == "brightness":
        img = np.clip(img.astype(np.float32) * strength["brightness"], 0, 255).astype(np.uint8)
    elif kind == "blur":
        img = cv2.GaussianBlur(img, (0, 0), strength["blur"])
    elif kind == "noise":
        rng = np.random.default_rng(int(img.sum()) % 2**32)
        img = np.clip(img + rng.normal(0, strength["noise"], img.shape), 0, 255).astype(np.uint8)
    q = int(strength["jpeg"]) if kind == "jpeg" else int(strength["base_q"])
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])[1].tobytes()


def _pool(b: Any, imgs: list[np.ndarray], kind: str | None, strength: dict[str, float]) -> Any:
    from cvdeploy.diagnose import ImageSource, collect

    srcs = [
        ImageSource(id=str(k), data=_shift(im, kind or "none", strength))
        for k, im in enumerate(imgs)
    ]
    table, _ = collect(b, srcs, label=f"features {kind or 'original'}")
    return table


def _drift_trials(
    ref_pool: Any, win_pools: dict[str, Any], n_ref: int, n_win: int, splits: int, shift_trials: int
) -> dict[str, Any]:
    from cvdeploy.diagnose import ReferenceSummary, compare

    rng = np.random.default_rng(0)
    n = len(ref_pool)
    out: dict[str, Any] = {"reference_images": n_ref, "window_images": n_win}
    alarms, secs = 0, []
    for s in range(splits):
        order = rng.permutation(n)
        ref = ReferenceSummary.from_table(ref_pool.subset(order[:n_ref]), {})
        t0 = time.perf_counter()
        r = compare(ref, ref_pool.subset(order[n_ref : n_ref + n_win]), seed=s, permutations=200)
        secs.append(time.perf_counter() - t0)
        alarms += r.verdict == "drift"
    out["no_shift"] = {"splits": splits, "false_alarms": alarms, "rate": alarms / splits}
    out["tests_seconds_per_window"] = {"median": statistics.median(secs), "max": max(secs)}
    for kind, pool in win_pools.items():
        hits, moved = 0, {}
        for s in range(shift_trials):
            order = rng.permutation(n)
            ref = ReferenceSummary.from_table(ref_pool.subset(order[:n_ref]), {})
            win = pool.subset(order[n_ref : n_ref + n_win])  # other images, shifted
            r = compare(ref, win, seed=s, permutations=200)
            hits += r.verdict == "drift"
            for d in r.drifted[:3]:
                moved[d] = moved.get(d, 0) + 1
        out[kind] = {
            "trials": shift_trials,
            "detected": hits,
            "rate": hits / shift_trials,
            "top_tests": moved,
        }
        print(f"  drift {kind}: {hits}/{shift_trials}", flush=True)
    return out


def _mnist(rw: Path, n: int) -> list[np.ndarray]:
    import gzip

    with gzip.open(rw / "datasets" / "mnist_t10k" / "t10k-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    return [cv2.cvtColor(x, cv2.COLOR_GRAY2BGR) for x in raw[:n]]


def part_drift(
    work: Path, rw: Path, coco: Path, splits: int, shift_trials: int, mnist_n: int
) -> dict[str, Any]:
    from cvdeploy.bundle import Bundle
    from cvdeploy.diagnose import image_features
    from cvdeploy.export import ImportOverrides, import_model

    out: dict[str, Any] = {}
    kinds = ("brightness", "blur", "noise", "jpeg")
    # MNIST: the real CNN, real digits, 500 reference / 200-image windows
    mb = work / "mnist"
    if not (mb / "bundle.json").is_file():
        import_model(
            rw / "models" / "mnist_cnn.onnx",
            out=mb,
            overrides=ImportOverrides(
                task="classify",
                color="gray",
                names=tuple(str(i) for i in range(10)),
                decoder="logits",
                scale=1 / 255,
                mean=(0.5,),
                std=(0.5,),
            ),
        )
    b = Bundle.load(mb)
    imgs = _mnist(rw, mnist_n)
    s_m = {"brightness": 0.75, "blur": 0.6, "noise": 8.0, "jpeg": 30, "base_q": 90}
    ref_pool = _pool(b, imgs, None, s_m)
    pools = {k: _pool(b, imgs, k, s_m) for k in kinds}
    res = _drift_trials(ref_pool, pools, 500, 200, splits, shift_trials)
    t0 = time.perf_counter()
    for im in imgs[:200]:
        image_features(im, side=28)
    res["features_seconds_per_window"] = time.perf_counter() - t0
    res["strength"] = s_m
    out["mnist"] = res
    # coco128: YOLOX-Nano on real photos, 64 / 64
    yb = Bundle.load(_yolox(work, rw, coco))
    cimgs = [
        cv2.imread(str(p)) for p in sorted((coco.parent / "images" / "train2017").glob("*.jpg"))
    ]
    s_c = {"brightness": 0.75, "blur": 1.5, "noise": 8.0, "jpeg": 30, "base_q": 90}
    ref_pool = _pool(yb, cimgs, None, s_c)
    pools = {k: _pool(yb, cimgs, k, s_c) for k in kinds}
    res = _drift_trials(ref_pool, pools, 64, 64, splits, shift_trials)
    t0 = time.perf_counter()
    for im in cimgs[:64]:
        image_features(im, side=416)
    res["features_seconds_per_window"] = (time.perf_counter() - t0) * 200 / 64
    res["strength"] = s_c
    out["coco128"] = res
    return out


# doctor and serve ---------------------------------------------------------------------------------
def _dark_production(work: Path, coco: Path) -> Path:
    prod = work / "prod-dark"
    if not prod.is_dir():
        prod.mkdir(parents=True)
        for p in sorted((coco.parent / "images" / "train2017").glob("*.jpg"))[64:]:
            img = (cv2.imread(str(p)) * 0.6).astype(np.uint8)
            cv2.imwrite(str(prod / p.name), img, [cv2.IMWRITE_JPEG_QUALITY, 75])
    return prod


def _current_reference(b: Path, coco: Path) -> None:
    """Record the drift reference of the INT8 artifact when it is missing or was recorded
    by an older version (without the raw embeddings MMD and the classifier test use)."""
    from cvdeploy.bundle import Bundle
    from cvdeploy.diagnose import load_reference, record_reference

    ref = load_reference(Bundle.load(b), "openvino-int8")
    if ref is None or not ref.has_embeddings:
        record_reference(Bundle.load(b), coco, artifact="openvino-int8", progress=False)


def part_doctor(work: Path, rw: Path, coco: Path) -> dict[str, Any]:
    from cvdeploy.diagnose import DoctorOptions, run_doctor

    b = _yolox(work, rw, coco)
    _current_reference(b, coco)
    prod = _dark_production(work, coco)
    out: dict[str, Any] = {
        "bundle": "YOLOX-Nano onnx-fp32, openvino-fp32, openvino-int8",
        "data": "coco128 (128 images)",
        "production": "64 darkened coco128 images",
    }
    for label, trial in (("with_keep_float_trial", True), ("without_keep_float_trial", False)):
        t0 = time.perf_counter()
        rep = run_doctor(
            b, DoctorOptions(data=coco, production=prod, keep_float_trial=trial, progress=False)
        )
        out[label] = {
            "seconds": round(time.perf_counter() - t0, 1),
            "sections": {k: round(s.seconds, 1) for k, s in rep.sections.items()},
            "findings": [f"{f.severity}: {f.title}" for f in rep.ranked()],
        }
        print(f"  doctor {label}: {out[label]['seconds']} s", flush=True)
    return out


def _drift_costs(b: Path, body: bytes, n: int) -> dict[str, Any]:
    """What the server's drift worker spends: per sampled image (the feature decode and the
    image statistics) and per window test (200 images), measured in this process."""
    from cvdeploy.bundle import Bundle
    from cvdeploy.diagnose import (
        FeatureTable,
        compare,
        decode_for_features,
        feature_side,
        image_features,
        load_reference,
    )

    ref = load_reference(Bundle.load(b), "openvino-int8")
    assert ref is not None
    fit = (416, 416)
    t0 = time.perf_counter()
    for _ in range(n):
        img, size, _ = decode_for_features(body, fit)
        image_features(img, data=body, size=size, side=feature_side(fit))
    per_sample = (time.perf_counter() - t0) / n
    rows = np.random.default_rng(0).choice(len(ref.table), 200)
    win = ref.table.subset(rows)
    window = FeatureTable(names=win.names, values=win.values, classes=win.classes)
    times = []
    for seed in range(3):
        t0 = time.perf_counter()
        compare(ref, window, alpha=0.01, permutations=200, seed=seed)
        times.append(time.perf_counter() - t0)
    return {
        "feature_ms_per_sample": round(per_sample * 1e3, 2),
        "check_seconds_per_window": round(statistics.median(times), 3),
    }


def part_serve(
    work: Path, rw: Path, coco: Path, rounds: int, block: int, budget_s: float = 150.0
) -> dict[str, Any]:
    """Interleaved A/B rounds (``block`` requests to one server, then the other, the order
    alternating), stopped after ``rounds`` or ``budget_s``; the overhead is the median of
    the per-round ratios of median latencies, with a bootstrap 95% interval over rounds."""
    import socket
    import urllib.request

    b = _yolox(work, rw, coco)
    _current_reference(b, coco)
    body = (rw / "images" / "bus.jpg").read_bytes()
    procs, ports = [], {}
    cfgs = {
        "drift_on": {"artifact": "openvino-int8"},
        "drift_off": {"artifact": "openvino-int8", "drift": {"enabled": False}},
    }
    try:
        for name, cfg in cfgs.items():
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            yml = work / f"serve-{name}.yaml"
            yml.write_text(json.dumps(cfg))  # JSON is YAML
            p = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cvdeploy.cli.main",
                    "serve",
                    str(b),
                    "--port",
                    str(port),
                    "--config",
                    str(yml),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(p)
            ports[name] = port
        for name, port in ports.items():
            end = time.monotonic() + 120
            while time.monotonic() < end:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    time.sleep(0.3)
            else:
                raise RuntimeError(f"server {name} not ready")
        lat: dict[str, list[float]] = {k: [] for k in ports}

        def send(port: int) -> float:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/models/yolox_nano/predict",
                data=body,
                headers={"content-type": "image/jpeg"},
            )
            t0 = time.perf_counter()
            with urllib.request.urlopen(req, timeout=30) as r:
                r.read()
            return (time.perf_counter() - t0) * 1e3

        for port in ports.values():  # warm-up
            for _ in range(10):
                send(port)
        order = list(ports)
        ratios: list[float] = []
        end = time.monotonic() + budget_s
        for r_ in range(rounds):
            if time.monotonic() > end:
                break
            got: dict[str, list[float]] = {}
            for name in order if r_ % 2 == 0 else order[::-1]:
                got[name] = [send(ports[name]) for _ in range(block)]
                lat[name].extend(got[name])
            ratios.append(
                statistics.median(got["drift_on"]) / statistics.median(got["drift_off"]) - 1
            )
        with urllib.request.urlopen(
            f"http://127.0.0.1:{ports['drift_on']}/v1/stats", timeout=5
        ) as r:
            stats = json.loads(r.read())
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
    p50 = {k: statistics.median(v) for k, v in lat.items()}
    rng = np.random.default_rng(0)
    boot = sorted(float(np.median(rng.choice(ratios, len(ratios)))) for _ in range(2000))
    return {
        "model": "YOLOX-Nano openvino-int8, bus.jpg, 1 request in flight",
        "requests_each": len(lat["drift_on"]),
        "rounds": len(ratios),
        "block": block,
        "p50_ms": p50,
        "overhead": statistics.median(ratios),
        "overhead_pooled_p50": p50["drift_on"] / p50["drift_off"] - 1,
        "overhead_ci95": [boot[49], boot[1949]],
        "drift_checks": {
            k: (v.get("last") or {}).get("seconds")
            for k, v in (stats.get("drift", {}).get("models") or {}).items()
        },
        "drift_dropped": {
            k: v.get("dropped") for k, v in (stats.get("drift", {}).get("models") or {}).items()
        },
        "worker_costs": _drift_costs(b, body, 5 if rounds < 10 else 50),
        "drift_sample_rate": stats.get("drift", {}).get("sample_rate"),
        "drift_window": {
            k: v.get("window") for k, v in (stats.get("drift", {}).get("models") or {}).items()
        },
    }


# the README's table -------------------------------------------------------------------------------
BEGIN, END = "<!-- doctor:begin -->", "<!-- doctor:end -->"
QUIET_LOAD = 1.0
"""A part timed with a 1-minute load average above this is not quoted (placeholder kept)."""


def _pct(n: int, d: int) -> str:
    return f"{n / d:.1%} ({n}/{d})" if d else "-"


def _timed(part: dict[str, Any] | None, value: str) -> str:
    if not part or part.get("conditions", {}).get("quick"):
        return "to be measured"
    load = part.get("conditions", {}).get("load_average_before", 99)
    return value if load <= QUIET_LOAD else f"to be measured (this run: {value}, load {load})"


def _trial_controls(t: dict[str, Any], samples: str) -> str:
    """A keep-float trial's calibration-noise and placebo figures, for a table cell."""
    out = ""
    if "noise_sd" in t:
        out += (
            f"; calibration noise sd {t['noise_sd']:.4f} over {len(t['noise_maps']) + 1} "
            f"{samples} " + ("within" if t["within_noise"] else "beyond") + " 2 sd"
        )
    if "map_placebo" in t:
        out += (
            f"; placebo ({len(t['placebo_keep'])} healthy layers in float) "
            f"{t['map_placebo'] - t['map_int8']:+.4f}"
        )
    return out


def _trial_met(t: dict[str, Any]) -> str:
    """Half the loss recovered, beyond the calibration noise and the placebo."""
    met = t["recovered"] >= 0.5 and not t.get("within_noise") and t.get("beyond_placebo", True)
    return "yes" if met else "**no**"


def readme_table(res: dict[str, Any]) -> str:
    """The README's doctor table from ``doctor.json`` (rows of parts not run: "not run")."""
    rows: list[tuple[str, str, str, str]] = []
    a = res.get("audit")
    if a:
        per = []
        for model, faults in a["models"].items():
            ok = sum(v["correct"] for k, v in faults.items() if k != "clean")
            n = sum(v["cases"] for k, v in faults.items() if k != "clean")
            per.append(f"{model.split(' (')[0]} {ok}/{n}")
        n_ok = round(a["named_correctly"] * a["cases"])
        rows.append(
            (
                f"preprocessing audit: injected faults named from {a['production_images']} "
                f"production inputs ({len(a['models'])} models, {a['trials']} splits each)",
                _pct(n_ok, a["cases"]) + "; " + ", ".join(per),
                ">= 95%, 3 models",
                "yes" if a["named_correctly"] >= 0.95 and len(a["models"]) >= 3 else "**no**",
            )
        )
        rows.append(
            (
                "preprocessing audit: clean inputs (no fault) with a false finding",
                f"{a['clean_false_findings']}/{a['clean_cases']}",
                "0",
                "yes" if a["clean_false_findings"] == 0 else "**no**",
            )
        )
    ly = res.get("layers")
    if ly:
        for name, v in ly["perturbed"].items():
            rows.append(
                (
                    f"layer localisation: {name} INT8 (OpenVINO) with one perturbed scale "
                    "(activation range / 16 or weight scales x 2)",
                    f"{v['localised']}/{v['cases']} localised"
                    + (
                        f" ({v['shared_quantizer_cases']} at a quantizer shared by several "
                        "layers: named with all of them)"
                        if v.get("shared_quantizer_cases")
                        else ""
                    )
                    + f"; clean artifact: first jump {v['clean_first_jump'] or 'none'}",
                    "every trial",
                    "yes"
                    if v["localised"] == v["cases"] and not v["clean_first_jump"]
                    else "**no**",
                )
            )
        t = (ly.get("yolox_real_int8") or {}).get("trial")
        if t and t.get("recovered") is not None:
            rows.append(
                (
                    "YOLOX-Nano INT8 (NNCF): keeping the named layers in float "
                    f"({len(t['keep_float'])}), share of the mAP50-95 loss recovered",
                    f"{t['recovered']:.0%} (mAP {t['map_int8']:.4f} -> {t['map_keep']:.4f}, "
                    f"FP32 {t['map_fp32']:.4f})"
                    + _trial_controls(t, "calibration samples: the change is"),
                    ">= 50%",
                    _trial_met(t),
                )
            )
        sets = (ly.get("yolox_real_int8") or {}).get("sets") or {}
        if sets:
            rows.append(
                (
                    "YOLOX-Nano INT8: other keep-float sets (layers: share of the loss recovered)",
                    "; ".join(
                        f"{k} ({v['layers']}): "
                        + (f"{v['recovered']:.0%}" if v.get("recovered") is not None else "failed")
                        for k, v in sets.items()
                    ),
                    ">= 50% with a few layers",
                    "yes"
                    if any(
                        (v.get("recovered") or 0) >= 0.5 and v["layers"] <= 8
                        for k, v in sets.items()
                        if not k.startswith("placebo")
                    )
                    else "**no**",
                )
            )
    lo = res.get("layers-ort") or {}
    t = lo.get("trial")
    if t and t.get("recovered") is not None:
        rows.append(
            (
                "YOLOX-Nano INT8 (ONNX Runtime `quantize_static`, loses "
                f"{t['gap']:.3f}; the INT8 gate refuses it): keeping the "
                f"{len(t['keep_float'])} layers doctor names in float "
                f"({', '.join(t['keep_float'])}), share of the loss recovered",
                f"{t['recovered']:.0%} (mAP {t['map_int8']:.4f} -> {t['map_keep']:.4f}, FP32 "
                f"{t['map_fp32']:.4f}; "
                + ("passes" if t.get("keep_passes_gate") else "still fails")
                + " the INT8 gate)"
                + _trial_controls(t, "samples:"),
                ">= 50%",
                _trial_met(t),
            )
        )
    d = res.get("drift")
    if d:
        for ds in ("mnist", "coco128"):
            v = d.get(ds)
            if not v:
                continue
            label = f"{ds} ({v['reference_images']} reference / {v['window_images']}-image windows)"
            ns = v["no_shift"]
            rows.append(
                (
                    f"drift false alarms, {label}, random no-shift splits",
                    f"{ns['rate']:.1%} ({ns['false_alarms']}/{ns['splits']})",
                    "<= 5% over >= 100 splits",
                    "yes" if ns["rate"] <= 0.05 and ns["splits"] >= 100 else "**no**",
                )
            )
            det = ", ".join(
                f"{k} {v[k]['rate']:.0%}" for k in ("brightness", "blur", "noise", "jpeg") if k in v
            )
            ok = all(v[k]["rate"] >= 0.9 for k in ("brightness", "blur", "noise", "jpeg") if k in v)
            rows.append(
                (
                    f"drift detection, {label}, moderate shifts",
                    det,
                    ">= 90% each (200-image windows)",
                    "yes"
                    if ok and v["window_images"] >= 200
                    else ("yes (64-image windows)" if ok else "**no**"),
                )
            )
            sec = v["tests_seconds_per_window"]["median"] + v.get("features_seconds_per_window", 0)
            rows.append(
                (
                    f"drift compute per window, {label} (statistics + tests)",
                    _timed(d, f"{sec:.2f} s"),
                    "< 1 s on 2 cores",
                    "",
                )
            )
    doc = res.get("doctor")
    if doc:
        for k in ("with_keep_float_trial", "without_keep_float_trial"):
            if k in doc:
                rows.append(
                    (
                        "cvdeploy doctor, YOLOX-Nano, coco128 + 64 production images, "
                        + k.replace("_", " "),
                        _timed(doc, f"{doc[k]['seconds']:.0f} s"),
                        "< 2 min",
                        "",
                    )
                )
    sv = res.get("serve")
    if sv:
        rows.append(
            (
                "server drift check overhead, default sample rate (p50, YOLOX-Nano INT8)",
                _timed(
                    sv,
                    f"{sv['overhead']:+.1%}"
                    + (
                        f" (95% CI {sv['overhead_ci95'][0]:+.1%} to {sv['overhead_ci95'][1]:+.1%}, "
                        f"{sv['rounds']} A/B rounds)"
                        if "overhead_ci95" in sv
                        else ""
                    ),
                ),
                "<= 3% of p50",
                "",
            )
        )
    targets = {
        "audit": ("preprocessing audit: injected faults named", ">= 95%, 3 models"),
        "layers": ("layer localisation, and the keep-float recovery", "every trial; >= 50%"),
        "layers-ort": ("keep-float recovery on YOLOX-Nano INT8 (quantize_static)", ">= 50%"),
        "drift": ("drift false alarms, detection, compute per window", "<= 5%; >= 90%; < 1 s"),
        "doctor": ("cvdeploy doctor wall time on coco128", "< 2 min"),
        "serve": ("server drift check overhead (p50)", "<= 3%"),
    }
    for part, (what, target) in targets.items():
        if not res.get(part):
            rows.append((what, f"to be measured (`--parts {part}`)", target, ""))
    head = "| measurement | result | target | met |\n|---|---|---|---|\n"
    body = "".join(f"| {a_} | {b_} | {c_} | {d_} |\n" for a_, b_, c_, d_ in rows)
    return head + body


def update_readme(res: dict[str, Any], readme: Path = ROOT / "README.md") -> bool:
    """Rewrite the table between the doctor markers; False when the markers are missing."""
    text = readme.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        return False
    a, rest = text.split(BEGIN, 1)
    _, b = rest.split(END, 1)
    readme.write_text(a + BEGIN + "\n" + readme_table(res) + END + b, encoding="utf-8")
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="audit,layers,layers-ort,drift,doctor,serve")
    ap.add_argument(
        "--trials", type=int, default=5, help="audit splits per model; layer perturbations per kind"
    )
    ap.add_argument("--splits", type=int, default=100, help="no-shift drift splits")
    ap.add_argument("--shift-trials", type=int, default=50)
    ap.add_argument("--mnist", type=int, default=3000, help="MNIST images summarised")
    ap.add_argument("--no-keep-float-trial", action="store_true")
    ap.add_argument(
        "--no-keep-float-sets",
        action="store_true",
        help="layers part: skip the YOLOX-Nano candidate keep-float sets (12 quantizations)",
    )
    ap.add_argument(
        "--keep-float-noise",
        type=int,
        default=3,
        help="layers part: calibration samples of the keep-float trial's noise baseline",
    )
    ap.add_argument(
        "--serve-budget", type=float, default=150.0, help="serve part: seconds of A/B rounds"
    )
    ap.add_argument("--quick", action="store_true", help="tiny budgets: checks the script runs")
    ap.add_argument(
        "--work", type=Path, default=Path.home() / ".cache" / "cvdeploy-bench" / "doctor"
    )
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument(
        "--readme", action="store_true", help="only rewrite the README's table from --out"
    )
    a = ap.parse_args()
    if a.readme:
        ok = update_readme(json.loads(a.out.read_text()))
        print("README table updated" if ok else "README has no doctor markers")
        return 0
    rw = realworld_root()
    if not rw.is_dir():
        print(f"skipped: {rw} is absent (real models and data)")
        return 0
    if a.quick:
        a.trials, a.splits, a.shift_trials, a.mnist = 1, 3, 2, 800
    coco = rw / "datasets" / "coco128" / "coco128.yaml"
    a.work.mkdir(parents=True, exist_ok=True)
    from cvdeploy.environment import fingerprint

    results: dict[str, Any] = json.loads(a.out.read_text()) if a.out.is_file() else {}
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "audit": lambda: part_audit(a.work, rw, coco, a.trials),
        "layers": lambda: part_layers(
            a.work,
            rw,
            coco,
            a.trials,
            not a.no_keep_float_trial,
            a.keep_float_noise,
            not a.no_keep_float_sets and not a.quick,
        ),
        "layers-ort": lambda: part_layers_ort(a.work, rw, coco, a.keep_float_noise),
        "drift": lambda: part_drift(a.work, rw, coco, a.splits, a.shift_trials, a.mnist),
        "doctor": lambda: part_doctor(a.work, rw, coco),
        "serve": lambda: part_serve(
            a.work, rw, coco, 2 if a.quick else 60, 5 if a.quick else 20, a.serve_budget
        ),
    }
    for part in [p.strip() for p in a.parts.split(",") if p.strip()]:
        print(f"[{part}]", flush=True)
        before, t0 = _load(), time.perf_counter()
        res = runners[part]()
        res["conditions"] = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "seconds": round(time.perf_counter() - t0, 1),
            "load_average_before": round(before, 2),
            "load_average_after": round(_load(), 2),
            "quick": a.quick,
            "cpu": fingerprint()["cpu"],
        }
        results[part] = res
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"[{part}] done in {res['conditions']['seconds']} s -> {a.out}", flush=True)
    if a.out == OUT and update_readme(results):
        print("README table updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
