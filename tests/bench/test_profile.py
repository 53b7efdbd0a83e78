"""Per-operator profiles from ONNX Runtime and OpenVINO."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cvdeploy.bench.harness import BenchConfig, bench_artifact
from cvdeploy.bench.profile import parse_ort_trace, profile_artifact, summarize_ops
from cvdeploy.bundle import Bundle


def test_parse_ort_trace_drops_the_first_run(tmp_path: Path) -> None:
    def node(ts: int, name: str, op: str, dur: int) -> dict:
        return {
            "cat": "Node",
            "name": f"{name}_kernel_time",
            "ts": ts,
            "dur": dur,
            "args": {"op_name": op},
        }

    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
        node(10, "conv1", "Conv", 90),  # first run: dropped
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
        node(210, "conv1", "Conv", 30),
        node(250, "sig", "Sigmoid", 10),
        {"cat": "Node", "name": "conv1_fence_before", "ts": 205, "dur": 1},
        {"cat": "Session", "name": "model_run", "ts": 400, "dur": 100},
        node(410, "conv1", "Conv", 50),
        node(450, "sig", "Sigmoid", 10),
    ]
    f = tmp_path / "t.json"
    f.write_text(json.dumps(events))
    samples, runs = parse_ort_trace(f)
    assert runs == 2 and len(samples) == 4
    total, types, nodes = summarize_ops(samples, runs=runs)
    assert total == pytest.approx(0.05)  # (30+10+50+10) us / 2 runs
    assert types[0].op_type == "Conv" and types[0].share == pytest.approx(0.8)
    assert types[0].ms == pytest.approx(0.04) and types[0].calls == 1
    assert nodes[1].name == "sig"


@pytest.mark.parametrize("artifact", ["onnx-fp32", "openvino-fp32"])
def test_profile_real_runtimes(tiny_bundle: Bundle, images: list[Path], artifact: str) -> None:
    p = profile_artifact(tiny_bundle, artifact, images, runs=3)
    assert p.runs == 3 and p.by_type, p.notes
    assert sum(o.share for o in p.by_type) == pytest.approx(1.0, abs=1e-6)
    assert p.source in ("onnxruntime profiler", "openvino performance counters")


def test_bench_with_profile_keeps_it_apart(tiny_bundle: Bundle, images: list[Path]) -> None:
    r = bench_artifact(
        tiny_bundle,
        "onnx-fp32",
        images,
        config=BenchConfig(warmup=0, iters=2),
        profile=True,
        profile_runs=2,
    )
    assert r.profile is not None and r.profile["by_type"]
    assert r.e2e_ms.n == 2
