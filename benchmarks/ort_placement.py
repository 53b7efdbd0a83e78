"""Why ONNX Runtime INT8 is slower than FP32 on YOLOX-Nano: where the Q/DQ nodes go.

ONNX Runtime runs a convolution in INT8 only as ``DequantizeLinear -> Conv ->
QuantizeLinear`` (fused into ``QLinearConv``). YOLOX (like the zoo detector) follows every
convolution with SiLU (``Sigmoid`` x ``Mul``). Two placements are possible:

* **after the activation** (NNCF, ``cvdeploy quantize --engine nncf``): the SiLU output is
  quantized; the convolution's own output is not, so nothing fuses and every convolution
  runs in float between Dequantize nodes;
* **every convolution output** (``quantize_static``, ``--engine ort``): every
  convolution fuses into ``QLinearConv`` (and the SiLU into ``QLinearSigmoid``/
  ``QLinearMul``), but the pre-activation tensor gets one per-tensor 8-bit scale.

This script measures both on the same calibration images (coco128, 128 images, through the
bundle spec's preprocessing), with the detection head's decoding kept in float as
``cvdeploy quantize`` does: ONNX Runtime inference p50 (2 threads, the models interleaved
round by round, thread spinning off so that one session's idle pool does not slow the
next one), the fused INT8 operator count, and mAP50-95 on coco128 with the same
evaluation as ``cvdeploy eval``. The integrity gate is not applied (the point is to measure
what it refuses). Writes ``benchmarks/results/ort_placement.json``; skips (exit 0) without
``../shared/realworld``.

Usage::

    python benchmarks/ort_placement.py [--rounds 12]
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

import numpy as np
from _common import ROOT, realworld_root

IMAGES_PER_ROUND = 8


def _session(path: Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    # the four sessions take turns: a pool spinning after its run would slow the next one
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _map(bundle: Any, source: Any, model: Path, tmp: Path, evalset: Any) -> float:
    from cvdeploy.optimize import QuantizedModel, candidate_predictor
    from cvdeploy.optimize.calibration import predictor_map

    d = tmp / f"eval-{model.stem}"
    d.mkdir()
    shutil.copy(model, d / "model.onnx")
    cand = QuantizedModel(
        directory=d, main_file="model.onnx", format="onnx", io=source.io, kept_float=[], facts={}
    )
    with candidate_predictor(bundle, cand, model.stem) as p:
        return predictor_map(p, evalset)


def main() -> int:
    """Quantize YOLOX-Nano both ways, time and evaluate, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=12, help="interleaved timing rounds")
    args = ap.parse_args()
    rw = realworld_root()
    if not rw.is_dir():
        print(f"skipped: {rw} is absent (real-world models and data)")
        return 0
    from cvdeploy.bundle import Bundle
    from cvdeploy.environment import fingerprint
    from cvdeploy.export.importer import ImportOverrides, import_model
    from cvdeploy.optimize.calibration import EvalSet, build_calibration_set, preprocessed
    from cvdeploy.optimize.explain import onnx_op_stats
    from cvdeploy.optimize.ort_quant import (
        OrtQuantOptions,
        float_head_nodes,
        needs_reduce_range,
        pre_process,
        quantize_qdq,
        quantize_qdq_nncf,
    )
    from cvdeploy.optimize.quantize import _source_predictor

    data = rw / "datasets" / "coco128" / "coco128.yaml"
    env = fingerprint()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="cvdeploy-ort-placement-") as tmp_s:
        tmp = Path(tmp_s)
        b, _ = import_model(
            rw / "models" / "yolox_nano.onnx",
            out=tmp / "bundle",
            overrides=ImportOverrides(preset="yolox"),
        )
        bundle = Bundle.load(b.path)
        source = bundle.manifest.artifacts[0]
        cal = build_calibration_set(data, size=128, method="minmax", force=True)
        evalset = EvalSet.load(data, bundle.spec.names)
        prepared = tmp / "fp32.onnx"
        head = tuple(float_head_nodes(pre_process(bundle.model_file(source), prepared)))
        with _source_predictor(bundle, source) as sp:
            batches = list(preprocessed(sp, cal.paths))
        rr = needs_reduce_range(env.get("cpu", {}), symmetric=False)
        variants: dict[str, dict[str, Any]] = {
            "fp32": {"placement": "none (FP32)", "path": prepared},
            "after_activation": {
                "placement": "after the SiLU (NNCF, --engine nncf)",
                "path": tmp / "after_activation.onnx",
            },
            "every_conv_output_minmax": {
                "placement": "every conv output (quantize_static minmax, --engine ort)",
                "path": tmp / "every_conv_output_minmax.onnx",
            },
            "every_conv_output_percentile": {
                "placement": "every conv output (quantize_static percentile 99.999)",
                "path": tmp / "every_conv_output_percentile.onnx",
            },
        }
        print("quantizing (NNCF placement)", flush=True)
        quantize_qdq_nncf(
            prepared,
            variants["after_activation"]["path"],
            iter(batches),
            options=OrtQuantOptions(exclude=head, engine="nncf"),
        )
        for method in ("minmax", "percentile"):
            print(f"quantizing (quantize_static {method})", flush=True)
            quantize_qdq(
                prepared,
                variants[f"every_conv_output_{method}"]["path"],
                iter(batches),
                options=OrtQuantOptions(method=method, exclude=head, reduce_range=rr),
            )
        sessions = {k: _session(v["path"]) for k, v in variants.items()}
        name = sessions["fp32"].get_inputs()[0].name
        xs = batches[:IMAGES_PER_ROUND]
        for s in sessions.values():  # warm-up, not timed
            for x in xs[:3]:
                s.run(None, {name: x})
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for r in range(args.rounds):
            order = list(sessions) if r % 2 == 0 else list(reversed(sessions))
            for k in order:
                for x in xs:
                    t0 = time.perf_counter()
                    sessions[k].run(None, {name: x})
                    times[k].append((time.perf_counter() - t0) * 1e3)
        fp32_p50 = float(np.median(times["fp32"]))
        out: dict[str, Any] = {}
        for k, v in variants.items():
            print(f"evaluating {k}", flush=True)
            ops = onnx_op_stats(v["path"], threads=2)
            m = _map(bundle, source, v["path"], tmp, evalset)
            p50 = float(np.median(times[k]))
            out[k] = {
                "placement": v["placement"],
                "inference_p50_ms": p50,
                "inference_ratio_vs_fp32": p50 / fp32_p50,
                "n": len(times[k]),
                "map50_95": m,
                "fused_int8_ops": ops["fused_int8_ops"],
                "qdq_left_after_optimization": ops["qdq_left_after_optimization"],
                "quantized_input_float_output": ops["quantized_input_float_output"],
            }
        for k in out:
            out[k]["map_drop_vs_fp32"] = out["fp32"]["map50_95"] - out[k]["map50_95"]
    result = {
        "benchmark": "ort_placement",
        "model": "yolox_nano.onnx (--preset yolox)",
        "data": "coco128: 128 calibration images (--force), mAP on the same 128",
        "timing": f"ONNX Runtime CPU, 2 threads, no spinning, {args.rounds} interleaved rounds "
        f"of {IMAGES_PER_ROUND} images (order reversed every other round), inference only",
        "reduce_range": rr,
        "head_float": list(head),
        "environment": env,
        "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg": os.getloadavg()[0],
        "variants": out,
    }
    path = ROOT / "benchmarks" / "results" / "ort_placement.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    for k, v in out.items():
        print(
            f"{k:30s} p50 {v['inference_p50_ms']:6.1f} ms ({v['inference_ratio_vs_fp32']:.2f}x) "
            f"mAP {v['map50_95']:.4f}  fused {v['fused_int8_ops']}"
        )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
