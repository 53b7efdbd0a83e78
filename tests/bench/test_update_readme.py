"""`benchmarks/update_readme.py`: the README performance table from fake JSON (no timing)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "update_readme.py"


@pytest.fixture(scope="module")
def ur() -> ModuleType:
    spec = importlib.util.spec_from_file_location("update_readme", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["update_readme"] = mod
    spec.loader.exec_module(mod)
    return mod


def _fake_results(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    env = {"cpu": {"model": "Fake CPU", "logical_cores": 2}}
    (d / "e2e_vs_naive.json").write_text(
        json.dumps(
            {
                "naive": {"e2e_ms": {"p50": 100.0}},
                "cvdeploy": {"artifact": "openvino-int8", "e2e_ms": {"p50": 40.0}},
                "environment": env,
            }
        )
    )
    (d / "pipeline_overhead.json").write_text(
        json.dumps(
            {
                "protocols": {
                    "predict": {"pre_post_share_of_e2e": 0.05, "e2e_ms": {"mean": 90.0}},
                    "eval": {"pre_post_share_of_e2e": 0.30},
                },
                "environment": env,
            }
        )
    )
    (d / "broken.json").write_text("{not json")
    return d


README = "# x\n\nintro\n\n<!-- bench:begin -->\nold table\n<!-- bench:end -->\n\nafter\n"


def test_render_table(ur: ModuleType, tmp_path: Path) -> None:
    res = ur.load_results(_fake_results(tmp_path / "r"))
    assert set(res) == {"e2e_vs_naive", "pipeline_overhead"}
    table = ur.render_table(res)
    assert "| 0.40x (40.0 ms `openvino-int8` vs 100.0 ms) | <= 0.5x | yes |" in table
    assert "predict thresholds | 5.0% of 90.0 ms mean | <= 25% | yes |" in table
    assert "eval thresholds | 30.0% | <= 25% | **no** |" in table
    assert "mAP50-95 drop vs FP32 | not run | <= 0.01 | n/a |" in table  # no quantize.json
    assert "Fake CPU, 2 logical cores" in table


def test_main_rewrites_only_between_markers(ur: ModuleType, tmp_path: Path) -> None:
    results = _fake_results(tmp_path / "r")
    readme = tmp_path / "README.md"
    readme.write_text(README)
    args = ["--results", str(results), "--readme", str(readme)]
    assert ur.main([*args, "--check"]) == 1
    assert ur.main(args) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\nintro\n\n<!-- bench:begin -->\n| measurement |")
    assert text.endswith("<!-- bench:end -->\n\nafter\n") and "old table" not in text
    assert ur.main([*args, "--check"]) == 0
    assert ur.main(args) == 0 and readme.read_text() == text  # idempotent


def test_missing_markers(ur: ModuleType, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert ur.main(["--results", str(tmp_path), "--readme", str(readme)]) == 2
    assert readme.read_text() == "# no markers\n"
    with pytest.raises(ValueError):
        ur.replace_block("<!-- bench:end -->\n<!-- bench:begin -->\n", "x")


def test_zoo_quantize_rows(ur: ModuleType, tmp_path: Path) -> None:
    d = _fake_results(tmp_path / "r")
    summary = {
        "openvino": {"map_drop": 0.004, "inference_ratio": 0.7},
        "onnxruntime": {"status": "refused", "message": "gate"},
        "onnxruntime_max_drop_0.005": {"met": False, "saved_artifact_on_refusal": False},
    }
    (d / "quantize_zoo.json").write_text(json.dumps({"summary": summary}))
    table = ur.render_table(ur.load_results(d))
    assert "| zoo detector-n OpenVINO INT8 (NNCF): mAP50-95 drop vs FP32 | 0.0040 |" in table
    assert "| zoo detector-n OpenVINO INT8: inference p50 vs FP32 | 0.70x | <= 0.6x | **no** |" in (
        table
    )
    assert "zoo detector-n ONNX Runtime Q/DQ INT8 (quantize_static)" in table
    assert "| zoo detector-n onnxruntime INT8 `--max-drop 0.005` | stopped" in table
    assert "`quantize_zoo.json`" in table
    without = ur.render_table(ur.load_results(_fake_results(tmp_path / "r2")))
    assert "zoo detector-n" not in without  # no rows for a benchmark never run


def test_repeat_and_serve_rows(ur: ModuleType, tmp_path: Path) -> None:
    d = _fake_results(tmp_path / "r")
    (d / "bench_repeat.json").write_text(
        json.dumps(
            {
                "by_threads": {
                    "1": {"p50_ms": [30.0, 31.5], "spread": 0.05},
                    "2": {"p50_ms": [20.0, 28.0], "spread": 0.4},
                }
            }
        )
    )
    targets = {"throughput_x_at_16": 2.5, "p99_over_p50_at_16": 3.5, "cvdeploy_failures": 0}
    bf16 = {"environment": {"cpu": {"flags": ["avx2", "amx_bf16"]}}, "targets": targets}
    (d / "serve_load.json").write_text(
        json.dumps({"tiny": {"targets": targets}, "yolox-tuned": bf16})
    )
    table = ur.render_table(ur.load_results(d))
    assert "1 thread): p50 spread | 5.0% (30.0, 31.5 ms) | <= 10% | yes |" in table
    assert "2 threads): p50 spread | 40.0% (20.0, 28.0 ms) | <= 10% | **no** |" in table
    # runs without a recorded environment were on the AVX2-only EPYC
    assert "tiny detector, AVX2-only CPU, 16 in flight: throughput | 2.50x | >= 2x | yes |" in table
    assert "tuned (vs plain ONNX Runtime FP32), CPU with native bf16, 16 in flight" in table
    assert "p99 / p50, failed requests | 3.5x, 0 | <= 3x, 0 | **no** |" in table
    assert "YOLOX-Nano, 16 in flight" not in table  # a model not in the file has no row


def test_e2e_rows_per_cpu_kind_and_precision_table(ur: ModuleType, tmp_path: Path) -> None:
    d = tmp_path / "r"
    d.mkdir()
    e2e = {
        "naive": {"e2e_ms": {"p50": 20.0}},
        "cvdeploy": {"artifact": "openvino-int8-bf16", "e2e_ms": {"p50": 14.0}},
        "environment": {"cpu": {"model": "Xeon", "logical_cores": 2}},
    }
    (d / "e2e_vs_naive_bf16.json").write_text(json.dumps(e2e))
    e2e["cvdeploy"] = {"artifact": "openvino-int8", "e2e_ms": {"p50": 17.0}}
    (d / "e2e_vs_naive_avx2.json").write_text(json.dumps(e2e))
    row = {
        "artifact": "openvino-bf16",
        "inference_precision": "bf16",
        "map50_95": 0.33,
        "map_drop_vs_onnx_fp32": 0.004,
        "inference_p50_ms": 6.4,
        "inference_vs_onnx_fp32": 0.57,
        "e2e_p50_ms": 11.0,
    }
    (d / "precision.json").write_text(
        json.dumps(
            {
                "rows": [row],
                "started": "2026-12-06 02:00 UTC",
                "conditions": {"threads": 2, "rounds": 30, "images_per_round": 16},
                "cpu": {"model": "Xeon", "logical_cores": 2},
                "native_text": "native bf16 (amx_bf16)",
            }
        )
    )
    res = ur.load_results(d)
    table = ur.render_table(res)
    assert "batch 1, CPU with native bf16: cvdeploy p50 / tutorial pipeline p50 | 0.70x" in table
    assert "| <= 0.75x | yes |" in table
    assert "batch 1, AVX2-only CPU: cvdeploy p50 / tutorial pipeline p50 | 0.85x" in table
    assert "| <= 0.5x | **no** |" in table
    prec = ur.render_precision(res)
    assert "| `openvino-bf16` | bf16 | 0.3300 (+0.0040) | 6.40 ms | 0.57 | 11.00 ms |" in prec
    assert "native bf16 (amx_bf16)" in prec
    readme = tmp_path / "README.md"
    readme.write_text(README + "\n<!-- precision:begin -->\nold\n<!-- precision:end -->\n")
    assert ur.main(["--results", str(d), "--readme", str(readme)]) == 0
    assert "`openvino-bf16` | bf16" in readme.read_text()
    assert ur.main(["--results", str(d), "--readme", str(readme), "--check"]) == 0


def test_compress_rows(ur: ModuleType, tmp_path: Path) -> None:
    d = _fake_results(tmp_path / "r")
    prune = {
        "status": "done",
        "rows": {
            "pruned onnx-fp32": {"p50_ms": 6.0},
            "source onnx-fp32": {"p50_ms": 10.0},
        },
        "summary": {
            "onnxruntime": {"latency_ratio": 0.6, "map_drop": 0.01, "met": True},
            "openvino": {"latency_ratio": 0.75, "map_drop": 0.01, "met": False},
            "channel_ratio": 0.4,
            "recovery_minutes": 9.5,
            "int8_openvino": {
                "artifact": "openvino-int8",
                "latency_ratio_vs_onnx_fp32_original": 0.35,
                "map_drop_vs_original": 0.02,
                "met": True,
            },
            "int8_onnxruntime": {"status": "refused", "message": "gate said no\n  hint: x"},
        },
    }
    phases = {
        "prune": prune,
        "distill": {
            "student": "zoo:detector-p",
            "budget_minutes": 4.0,
            "label_free": {"map50_95": 0.5},
            "labelled": {"map50_95": 0.4},
            "summary": {"map_ratio": 1.25},
        },
        "yolox": {"summary": {"teacher_map50_95": 0.25, "student_map50_95": 0.05}},
        "classifier": {"summary": {"top1": 0.96, "train_minutes": 9.8}},
        "floor": {
            "summary": {
                "best_any": {"key": "ratio 0.75 openvino-fp32", "latency_ratio": 0.418},
                "best_int8": {"key": "ratio 0.75 onnx-int8", "latency_ratio": 0.479},
                "best_inference_only": {"key": "x", "inference_ratio": 0.35},
                "target_latency_ratio": 0.4,
                "target_reachable": False,
            }
        },
    }
    (d / "compress.json").write_text(json.dumps({"threads": 2, "phases": phases}))
    table = ur.render_table(ur.load_results(d))
    assert (
        "| INT8 at best 0.48x; any pruned artifact 0.42x (ratio 0.75 openvino-fp32); "
        "inference alone 0.35x | <= 0.4x reachable at all | **no** |" in table
    )
    assert "| 0.60x (6.0 vs 10.0 ms), drop 0.0100, 40% of channels removed" in table
    assert "OpenVINO end to end, batch 1, 2 threads" in table
    assert "| 0.35x, drop 0.0200 | <= 0.4x, <= 0.03 | yes |" in table
    assert "| refused by its gate: gate said no | <= 0.4x, <= 0.03 | **no** |" in table
    assert "| 1.25 (0.5000 vs 0.4000) | >= 0.95 | yes |" in table
    assert "teacher 0.2500, student 0.0500" in table
    assert "| 96.0%, 9.8 min | >= 95%, <= 10 min | yes |" in table
    assert "`compress.json`" in table
    (d / "compress.json").write_text(json.dumps({"quick": True, "phases": {"prune": prune}}))
    assert "`--quick` check, not a measurement" in ur.render_table(ur.load_results(d))


def test_compress_rows_show_the_best_one_step_pruning_run(ur: ModuleType, tmp_path: Path) -> None:
    """``--steps 1`` runs merged into compress.json: the one that met the pruning target
    with the lowest latency is shown beside the default run, labelled with its settings."""
    d = _fake_results(tmp_path / "r")

    def run(ratio: float, latency: float, met: bool) -> dict[str, Any]:
        return {
            "status": "done",
            "recovery_lr": 0.002,
            "summary": {
                "onnxruntime": {"latency_ratio": latency, "map_drop": 0.011, "met": met},
                "channel_ratio": ratio,
                "recovery_minutes": 10.0,
            },
        }

    phases = {
        "prune_one_step_ratio_0.3_lr_0.002": run(0.3, 0.73, False),
        "prune_one_step_ratio_0.35_lr_0.002": run(0.35, 0.69, True),
        "prune_one_step_ratio_0.38_lr_0.002": run(0.38, 0.64, True),
    }
    (d / "compress.json").write_text(json.dumps({"threads": 2, "phases": phases}))
    table = ur.render_table(ur.load_results(d))
    assert (
        "detector-n pruned (one step, ratio 0.38, --lr 0.002) (recovered without labels)" in table
    )
    assert "| 0.64x, drop 0.0110, 38% of channels removed" in table
    assert "ratio 0.35" not in table and "ratio 0.3," not in table
    phases["prune_one_step_ratio_0.38_lr_0.002"] = run(0.38, 0.64, False)
    phases["prune_one_step_ratio_0.35_lr_0.002"] = run(0.35, 0.69, False)
    (d / "compress.json").write_text(json.dumps({"threads": 2, "phases": phases}))
    assert "one step" not in ur.render_table(ur.load_results(d))  # none met: none shown
