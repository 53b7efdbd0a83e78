"""INT8 post-training quantization of YOLOX-Nano: accuracy, speed, and the budget search.

Targets (YOLOX-Nano FP32 ONNX, ``--preset yolox``, calibrated and evaluated on coco128):

* OpenVINO INT8 (NNCF) loses at most 0.01 mAP50-95 and its inference takes at most 0.6x the
  OpenVINO FP32 time;
* ONNX Runtime Q/DQ INT8 loses at most 0.015 mAP50-95 and is faster than ORT FP32;
* with ``--max-drop 0.005`` each backend either meets the budget or stops with "could not
  meet the budget; best found: ..." and saves nothing.

coco128 has only 128 images, so calibration uses ``--calib-size 128 --force`` (below the
100/300 hygiene thresholds' recommendation: the run records the warning), and the same
images are the evaluation set (calibration and evaluation overlap: the drop is optimistic).
The integrity gate's raw-output cosine is relaxed to 0.95 (recorded with each parity
check): YOLOX's raw head scores low on the offsets and class scores of empty anchors even
when detections agree (see the report's gate figures).

Writes ``benchmarks/results/quantize.json``. Skips with a message (exit 0) when
``../shared/realworld`` (or ``$CVDEPLOY_REALWORLD``) is absent.

``--model zoo`` runs the same plans and budgets on the shipped zoo detector (``detector-n``,
its FP32 ONNX export) instead: calibrated on 300 images of the seed-0 synthetic train split
and evaluated on its 200-image val split (no overlap, no ``--force``), writing
``benchmarks/results/quantize_zoo.json``. It needs no ``../shared``.

Usage::

    python benchmarks/quantize.py [--model yolox|zoo] [--threads N] [--skip-budget]
        [--budget-backends onnxruntime] [--only openvino,onnxruntime,onnxruntime_nncf]

``--budget-backends`` picks which ``--max-drop 0.005`` runs to do (NNCF's accuracy control
on OpenVINO takes about 12 minutes here); a budget run not done this time is carried over
from the previous ``quantize.json`` under ``carried_over`` with its date, never mixed into
this run's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, realworld_root

GATE_COSINE = 0.95


def _import(rw: Path, out: Path) -> Path:
    from cvdeploy.export.importer import ImportOverrides, import_model

    import_model(
        rw / "models" / "yolox_nano.onnx", out=out, overrides=ImportOverrides(preset="yolox")
    )
    return out


ZOO_MODEL = "detector-n"
ZOO_CALIB, ZOO_VAL, ZOO_SEED = 300, 200, 0


def _zoo_data(out: Path) -> Path:
    """The seed-0 synthetic split: 300 train images to calibrate on, 200 val to evaluate on."""
    from cvdeploy.data.synthetic import make_detection_dataset

    return make_detection_dataset(out, n_train=ZOO_CALIB, n_val=ZOO_VAL, seed=ZOO_SEED)


def _zoo_bundle(data: Path, out: Path) -> Path:
    """The shipped zoo detector exported to FP32 ONNX (through the parity gate)."""
    from cvdeploy.export import ExportOptions, export_model

    export_model(ZOO_MODEL, formats=["onnx"], out=out, data=data, options=ExportOptions())
    return out


def _run(bundle: Path, data: Path, backend: str, *, zoo: bool = False, **kw: Any) -> dict[str, Any]:
    from cvdeploy.errors import CheckFailed
    from cvdeploy.optimize import QuantizeOptions, quantize_bundle

    opts = QuantizeOptions(
        backend=backend,
        calib_size=ZOO_CALIB if zoo else 128,
        force=not zoo,
        eval_data=data,
        gate_cosine=None if zoo else GATE_COSINE,
        progress=False,
        **kw,
    )
    log: list[str] = []
    t0 = time.perf_counter()
    try:
        rep = quantize_bundle(bundle, data, options=opts, log=log.append)
    except CheckFailed as exc:
        return {
            "status": "refused",
            "message": str(exc),
            "seconds": time.perf_counter() - t0,
            "log": log,
            "saved": _has(bundle, backend),
        }
    d = rep.to_dict()
    d.update(status="added", seconds=time.perf_counter() - t0, log=log)
    return d


def _has(bundle: Path, backend: str) -> bool:
    from cvdeploy.bundle import Bundle
    from cvdeploy.optimize import ARTIFACT_IDS

    b = Bundle.load(bundle)
    return any(a.id == ARTIFACT_IDS[backend] for a in b.manifest.artifacts)


def _summary(res: dict[str, Any], max_drop: float, ratio_max: float | None) -> dict[str, Any]:
    if res.get("status") != "added":
        return {"status": res.get("status"), "message": res.get("message")}
    fp32, int8 = res["rows"]
    ratio = int8["inference_p50_ms"] / fp32["inference_p50_ms"]
    out = {
        "fp32_artifact": fp32["artifact"],
        "fp32_map50_95": fp32["map50_95"],
        "int8_map50_95": int8["map50_95"],
        "map_drop": res["map_drop"],
        "drop_ok": res["map_drop"] is not None and res["map_drop"] <= max_drop,
        "fp32_inference_p50_ms": fp32["inference_p50_ms"],
        "int8_inference_p50_ms": int8["inference_p50_ms"],
        "inference_ratio": ratio,
        "e2e_speedup": res["speedup"],
        "size_mb": {"fp32": fp32["size_mb"], "int8": int8["size_mb"]},
        "gate": res["parity"],
        "findings": [f["code"] for f in (res.get("explanation") or {}).get("findings", [])],
    }
    out["speed_ok"] = ratio <= ratio_max if ratio_max is not None else ratio < 1.0
    return out


def main() -> int:
    """Run the benchmark and write ``results/quantize.json``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-budget", action="store_true", help="skip the --max-drop runs")
    ap.add_argument(
        "--budget-backends",
        default="onnxruntime,openvino",
        help="backends of the --max-drop 0.005 runs (comma-separated)",
    )
    ap.add_argument(
        "--only",
        default=None,
        help="run only these plans (comma-separated); the others are carried over from the "
        "previous results file and labelled with its start time",
    )
    ap.add_argument(
        "--model",
        choices=["yolox", "zoo"],
        default="yolox",
        help="YOLOX-Nano on coco128 (realworld), or the zoo detector on synthetic data",
    )
    args = ap.parse_args()
    zoo = args.model == "zoo"
    out_path = ROOT / "benchmarks" / "results" / ("quantize_zoo.json" if zoo else "quantize.json")
    previous = _previous(out_path)
    rw = realworld_root()
    if not zoo and not rw.is_dir():
        print(f"skipped: {rw} is absent (real-world models and data)")
        return 0
    from cvdeploy.environment import fingerprint

    data = rw / "datasets" / "coco128" / "coco128.yaml"  # the zoo's is made below
    if zoo:
        model_desc = f"{ZOO_MODEL} (zoo, shipped weights, FP32 ONNX export)"
        data_desc = (
            f"synthetic seed {ZOO_SEED} (calibration: {ZOO_CALIB} train images; evaluation: "
            f"{ZOO_VAL} val images, no overlap)"
        )
    else:
        model_desc = "yolox_nano.onnx (--preset yolox)"
        data_desc = "coco128 (calibration: 128 images, --force; evaluation: the same 128)"
    results: dict[str, Any] = {
        "model": model_desc,
        "data": data_desc,
        "gate_cosine": None if zoo else GATE_COSINE,
        "threads": args.threads,
        "environment": fingerprint(),
        "loadavg_before": os.getloadavg()[0],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="cvdeploy-bench-quant-") as tmp:
        t = Path(tmp)
        if zoo:
            data = _zoo_data(t / "data")
        plans: list[tuple[str, str, dict[str, Any]]] = [
            ("openvino", "openvino", {}),
            ("onnxruntime", "onnxruntime", {}),
            ("onnxruntime_nncf", "onnxruntime", {"engine": "nncf"}),
        ]
        if args.only:
            keep = set(args.only.split(","))
            plans = [p for p in plans if p[0] in keep]
        budget = [] if args.skip_budget else args.budget_backends.split(",")
        if args.only is None:
            plans += [(f"{b}_max_drop_0.005", b, {"max_drop": 0.005}) for b in budget]
        earlier = {  # runs of the previous file, and what it had carried over itself
            **(previous.get("carried_over") or {}),
            **{
                k: {**v, "from_run_started": previous.get("started", "unknown")}
                for k, v in (previous.get("runs") or {}).items()
            },
        }
        carried = {k: v for k, v in earlier.items() if k not in {p[0] for p in plans}}
        if carried:
            results["carried_over"] = carried
        for name, backend, kw in plans:
            print(f"== {name}", flush=True)
            bundle = _zoo_bundle(data, t / name) if zoo else _import(rw, t / name)
            res = _run(bundle, data, backend, zoo=zoo, threads=args.threads, **kw)
            results["runs"][name] = res
            print(f"   {res['status']} in {res['seconds']:.0f} s", flush=True)
            _write(results, out_path)  # after every run: a long budget search can be stopped
    results["loadavg_after"] = os.getloadavg()[0]
    out = _write(results, out_path)
    print(json.dumps(results["summary"], indent=2, default=str))
    print(f"wrote {out}")
    return 0


def _previous(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _write(results: dict[str, Any], out: Path) -> Path:
    carried = results.get("carried_over") or {}
    runs = {**carried, **results["runs"]}
    summary: dict[str, Any] = {}
    for name, max_drop, ratio_max in (
        ("openvino", 0.01, 0.6),
        ("onnxruntime", 0.015, None),
        ("onnxruntime_nncf", 0.015, None),
    ):
        if name in runs:
            summary[name] = _summary(runs[name], max_drop, ratio_max)
            if "from_run_started" in runs[name]:
                summary[name]["from_run_started"] = runs[name]["from_run_started"]
    for name in ("openvino_max_drop_0.005", "onnxruntime_max_drop_0.005"):
        r = runs.get(name) or carried.get(name)
        if r is not None:
            summary[name] = {
                "from_run_started": r.get("from_run_started", results.get("started")),
                "status": r["status"],
                "met": r["status"] == "added",
                "saved_artifact_on_refusal": r.get("saved", False),
                "message": r.get("message"),
                "budget": r.get("budget"),
                "map_drop": r.get("map_drop"),
            }
    results["summary"] = summary
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    sys.exit(main())
