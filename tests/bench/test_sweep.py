"""Sweeps on the tiny model, the JSON schema, recording in the manifest, the recommendation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cvdeploy.bench.harness import BenchResult
from cvdeploy.bench.stats import summarize
from cvdeploy.bench.sweep import recommend, run_sweep
from cvdeploy.bundle import Bundle, Check
from cvdeploy.errors import UsageError

STAT_KEYS = {"p50", "p90", "p99", "mean", "std", "n"}
RESULT_KEYS = {
    "artifact",
    "batch",
    "imgsz",
    "threads",
    "concurrency",
    "cold_start_ms",
    "e2e_ms",
    "stages_ms",
    "throughput_ips",
    "peak_rss_mb",
}


def test_sweep_schema_skips_and_records(tiny_bundle: Bundle, images: list[Path]) -> None:
    rep = run_sweep(
        tiny_bundle,
        images,
        artifacts="all",
        batches=(1, 2),
        imgszs=(None, (96, 96)),
        threads=(1,),
        warmup=1,
        iters=3,
    )
    d = json.loads(json.dumps(rep.to_dict()))  # JSON-serialisable, no NaN
    assert {"results", "recommended", "environment"} <= set(d)
    got = {(r["artifact"], r["batch"], tuple(r["imgsz"])) for r in d["results"]}
    assert got == {
        ("onnx-fp32", 1, (64, 64)),
        ("onnx-fp32", 2, (64, 64)),
        ("onnx-fp32", 1, (96, 96)),
        ("onnx-fp32", 2, (96, 96)),
        ("onnx-b1", 1, (64, 64)),
        ("openvino-fp32", 1, (64, 64)),
        ("openvino-fp32", 2, (64, 64)),
    }
    for r in d["results"]:
        assert set(r) >= RESULT_KEYS
        assert set(r["e2e_ms"]) == STAT_KEYS and r["e2e_ms"]["n"] == 3
        assert set(r["stages_ms"]) == {"decode", "preprocess", "inference", "postprocess"}
        assert all(set(v) == STAT_KEYS for v in r["stages_ms"].values())
        assert r["threads"] == 1 and r["concurrency"] == 1
        assert r["conditions"]["includes"]
    reasons = {
        (s["artifact"], s["batch"], tuple(s["imgsz"] or ())): s["reason"] for s in d["skipped"]
    }
    assert "fixed batch 1" in reasons[("onnx-b1", 2, ())]
    assert "fixed size 64x64" in reasons[("openvino-fp32", 1, (96, 96))]
    assert d["recommended"] in {"onnx-fp32", "onnx-b1", "openvino-fp32"}
    assert "cpu" in d["environment"] and "packages" in d["environment"]

    # recorded: one latency check per result, one history entry, survives a reload
    b = Bundle.load(tiny_bundle.path)
    assert b.manifest.history[-1].action == "bench"
    checks = [c for a in b.manifest.artifacts for c in a.checks if c.kind == "latency"]
    assert len(checks) == len(rep.results)
    lat = b.artifact("onnx-b1").latest("latency")
    assert lat is not None
    assert lat.data["e2e_ms"]["p50"] > 0 and set(lat.data["stages_ms"]) >= {"inference"}
    assert lat.name == next(r.key for r in rep.results if r.artifact == "onnx-b1")
    assert "batch 1" in lat.name and "64x64" in lat.name and "threads 1" in lat.name
    assert lat.data["environment"]["cpu"]


def test_no_record_leaves_the_bundle_alone(tiny_bundle: Bundle, images: list[Path]) -> None:
    before = (tiny_bundle.path / "bundle.json").read_text()
    run_sweep(tiny_bundle, images, warmup=0, iters=2, record=False)
    assert (tiny_bundle.path / "bundle.json").read_text() == before


def test_default_images_are_the_bundle_samples(tiny_bundle: Bundle, images: list[Path]) -> None:
    with pytest.raises(UsageError, match="--data"):
        run_sweep(tiny_bundle, None, iters=1, record=False)
    with tiny_bundle.edit(action="samples") as edit:
        edit.add_samples(images[:2])
    rep = run_sweep(tiny_bundle, None, iters=2, warmup=0, record=False)
    assert rep.images == 2


def test_accuracy_is_reported_beside_latency(tiny_bundle: Bundle, images: list[Path]) -> None:
    with tiny_bundle.edit(action="eval") as edit:
        edit.add_check(
            "onnx-b1",
            Check(
                kind="metrics",
                name="toy:val",
                data={"metrics": {"map50_95": 0.25, "map50": 0.4}, "protocol": {"imgsz": [64, 64]}},
            ),
        )
    rep = run_sweep(tiny_bundle, images, artifacts="onnx-b1", iters=2, warmup=0, record=False)
    acc = rep.results[0].accuracy
    assert acc is not None
    assert acc["map50_95"] == 0.25 and acc["imgsz"] == [64, 64] and acc["same_imgsz"]
    assert acc["dataset"] == "toy:val" and acc["precision"] == "fp32"


def _result(artifact: str, p50: float, acc: float | None, batch: int = 1) -> BenchResult:
    s = summarize([p50])
    return BenchResult(
        artifact=artifact,
        format="onnx",
        precision="fp32",
        batch=batch,
        imgsz=(64, 64),
        threads=None,
        concurrency=1,
        cold_start_ms=1.0,
        load_ms=0.5,
        first_ms=0.5,
        e2e_ms=s,
        stages_ms={k: s for k in ("decode", "preprocess", "inference", "postprocess")},
        throughput_ips=1.0,
        peak_rss_mb=1.0,
        file_size_bytes=1,
        conditions={},
        accuracy=None if acc is None else {"map50_95": acc, "imgsz": [64, 64]},
    )


def test_recommendation_prefers_fast_among_accurate() -> None:
    rs = [_result("fp32", 10.0, 0.40), _result("int8", 4.0, 0.395), _result("bad", 1.0, 0.30)]
    pick, why = recommend(rs)
    assert pick == "int8" and "0.4000" in why
    # batching: per-image latency counts
    pick, _ = recommend([_result("a", 10.0, None), _result("b", 16.0, None, batch=4)])
    assert pick == "b"
    assert recommend([])[0] is None


def test_rounds_keep_the_median_round_and_its_spread(
    tiny_bundle: Bundle, images: list[Path]
) -> None:
    rep = run_sweep(
        tiny_bundle, images, artifacts="onnx-b1", iters=6, warmup=0, record=False, rounds=3
    )
    (r,) = rep.results
    assert len(r.round_p50_ms) == 3
    assert r.e2e_ms.p50 == sorted(r.round_p50_ms)[1]  # the median round
    assert r.spread == pytest.approx(
        (max(r.round_p50_ms) - min(r.round_p50_ms)) / sorted(r.round_p50_ms)[1]
    )
    assert r.to_dict()["round_p50_ms"] == r.round_p50_ms


def test_differences_within_the_spread_are_called_noise() -> None:
    a, b = _result("a", 10.0, None), _result("b", 10.4, None)
    a.round_p50_ms, b.round_p50_ms = [9.0, 10.0, 11.0], [10.0, 10.4, 10.8]
    pick, why = recommend([a, b])
    assert pick == "a" and "within noise of b" in why
    c = _result("c", 20.0, None)
    c.round_p50_ms = [19.8, 20.0, 20.2]
    pick, why = recommend([a, c])
    assert pick == "a" and "noise" not in why


def test_bench_falls_back_to_the_last_evaluation_images(
    tiny_bundle: Bundle, images: list[Path]
) -> None:
    folder = images[0].parent
    with tiny_bundle.edit(action="eval") as edit:
        edit.add_check(
            "onnx-b1",
            Check(kind="metrics", name="x", data={"metrics": {}, "data": str(folder)}),
        )
    rep = run_sweep(tiny_bundle, None, artifacts="onnx-b1", iters=1, warmup=0, record=False)
    assert rep.images == len(images)
    assert any("last evaluation" in n and str(folder) in n for n in rep.notes)
