"""`benchmarks/doctor.py`: the README's doctor table from fake JSON (no timing, nothing run)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def doc() -> ModuleType:
    sys.path.insert(0, str(BENCH))  # the script imports _common
    try:
        spec = importlib.util.spec_from_file_location("bench_doctor", BENCH / "doctor.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    return mod


def _cond(load: float, quick: bool = False) -> dict:
    return {"conditions": {"load_average_before": load, "quick": quick}}


def test_missing_parts_are_placeholders(doc: ModuleType) -> None:
    table = doc.readme_table({})
    assert table.count("to be measured (`--parts ") == 6
    assert "to be measured (`--parts layers-ort`)" in table


def test_the_quantize_static_keep_float_row(doc: ModuleType) -> None:
    trial = {
        "keep_float": ["Conv_44", "Conv_47"],
        "map_fp32": 0.3346,
        "map_int8": 0.1646,
        "map_keep": 0.2912,
        "gap": 0.17,
        "recovered": 0.745,
        "keep_passes_gate": True,
        "noise_maps": [0.117, 0.120, 0.115],
        "noise_sd": 0.024,
        "within_noise": False,
        "placebo_keep": ["a", "b"],
        "map_placebo": 0.1598,
        "beyond_placebo": True,
    }

    def row(t: dict[str, object]) -> str:
        table = doc.readme_table({"layers-ort": {"trial": t}})
        return next(r for r in table.splitlines() if "quantize_static" in r)

    met = row(trial)
    assert "74% (mAP 0.1646 -> 0.2912" in met and "passes the INT8 gate" in met
    assert "beyond 2 sd" in met and met.endswith("| >= 50% | yes |")
    for worse in ({"recovered": 0.3}, {"within_noise": True}, {"beyond_placebo": False}):
        assert row({**trial, **worse}).endswith("| **no** |"), worse


def test_accuracy_rows_are_quoted_and_busy_timings_are_not(doc: ModuleType) -> None:
    res = {
        "audit": {
            "models": {
                "m1 (onnx-fp32)": {
                    "clean": {"correct": 1, "cases": 1},
                    "color": {"correct": 2, "cases": 2},
                },
            },
            "named_correctly": 1.0,
            "cases": 2,
            "trials": 2,
            "production_images": 32,
            "clean_false_findings": 0,
            "clean_cases": 2,
        },
        "drift": {
            "mnist": {
                "reference_images": 500,
                "window_images": 200,
                "no_shift": {"rate": 0.03, "false_alarms": 3, "splits": 100},
                "brightness": {"rate": 1.0},
                "blur": {"rate": 0.5},
                "tests_seconds_per_window": {"median": 0.2},
                "features_seconds_per_window": 0.3,
            },
            **_cond(load=6.0),
        },
        "serve": {"overhead": 0.01, **_cond(load=0.3)},
    }
    table = doc.readme_table(res)
    assert "100.0% (2/2); m1 2/2" in table
    assert "3.0% (3/100)" in table
    assert "brightness 100%, blur 50% | >= 90% each (200-image windows) | **no**" in table
    assert "to be measured (this run: 0.50 s, load 6.0)" in table  # a busy machine's timing
    assert "| +1.0% |" in table  # a quiet one's
    assert "to be measured (`--parts layers`)" in table


def test_update_readme_needs_the_markers(doc: ModuleType, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    assert not doc.update_readme({}, readme)
    readme.write_text(f"a\n{doc.BEGIN}\nold\n{doc.END}\nb\n")
    assert doc.update_readme({}, readme)
    text = readme.read_text()
    assert text.startswith("a\n") and text.endswith("b\n") and "old" not in text


def test_layers_rows_name_shared_quantizers_the_placebo_and_the_sets(doc: ModuleType) -> None:
    trial = {
        "keep_float": ["a", "b"],
        "recovered": 0.6,
        "map_int8": 0.32,
        "map_keep": 0.325,
        "map_fp32": 0.33,
        "noise_sd": 0.0001,
        "noise_maps": [0.32, 0.3201],
        "within_noise": False,
        "placebo_keep": ["x", "y"],
        "map_placebo": 0.326,
        "beyond_placebo": False,
    }
    res = {
        "layers": {
            "perturbed": {
                "zoo": {
                    "localised": 20,
                    "cases": 20,
                    "shared_quantizer_cases": 2,
                    "clean_first_jump": None,
                }
            },
            "yolox_real_int8": {
                "trial": trial,
                "sets": {
                    "head": {"layers": 36, "recovered": 0.7},
                    "top8": {"layers": 8, "recovered": 0.04},
                    "placebo8": {"layers": 8, "recovered": 0.9},
                    "first": {"layers": 1, "error": "refused by the gate"},
                },
            },
        }
    }
    table = doc.readme_table(res)
    assert "20/20 localised (2 at a quantizer shared by several layers" in table
    # beyond the calibration noise but not beyond the placebo: not met
    assert "placebo (2 healthy layers in float) +0.0060 | >= 50% | **no**" in table
    # a set of 36 layers, or a placebo, does not meet "a few layers"
    assert "head (36): 70%; top8 (8): 4%; placebo8 (8): 90%; first (1): failed" in table
    assert "| >= 50% with a few layers | **no** |" in table
