"""The harness: warm-up exclusion, cold start, concurrency, applicability."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cvdeploy.bench import harness
from cvdeploy.bench.harness import BenchConfig, bench_artifact, not_applicable
from cvdeploy.bundle import Bundle
from cvdeploy.errors import UsageError
from cvdeploy.pipeline import predictor as predictor_module
from cvdeploy.pipeline.predictor import Predictor
from cvdeploy.runtime.base import Runner
from tests.tiny_models import N_ANCHORS, NC


class FakeClock:
    """A perf_counter that only moves when the fake runner says so."""

    def __init__(self) -> None:
        self.t = 0.0
        self.lock = threading.Lock()

    def perf_counter(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.t += seconds


class SlowStartRunner(Runner):
    """Its first ``slow`` calls take 1 s of fake time, every later call 1 ms."""

    format = "onnx"
    instances: list[SlowStartRunner]

    def __init__(self, *args: Any, clock: FakeClock, slow: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.clock = clock
        self.slow = slow
        self.calls = 0

    def _load(self) -> None:
        return None

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        self.calls += 1
        self.clock.advance(1.0 if self.calls <= self.slow else 0.001)
        return [np.zeros((x.shape[0], 4 + NC, N_ANCHORS), dtype=np.float32)]


def _fake(monkeypatch: pytest.MonkeyPatch, slow: int) -> tuple[FakeClock, list[SlowStartRunner]]:
    clock = FakeClock()
    made: list[SlowStartRunner] = []

    def make(bundle: Bundle, art: Any, cfg: BenchConfig, options: Any) -> Predictor:
        r = SlowStartRunner(bundle.model_file(art), art.io, clock=clock, slow=slow)
        made.append(r)
        return Predictor(spec=bundle.spec, runner=r, artifact_id=art.id, batch=cfg.batch)

    monkeypatch.setattr(harness, "_make_predictor", make)
    monkeypatch.setattr(harness, "time", clock)
    monkeypatch.setattr(predictor_module, "time", clock)  # the stages are timed by run_batch
    return clock, made


def test_warmup_is_excluded_and_cold_start_reported_apart(
    tiny_bundle: Bundle, images: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, made = _fake(monkeypatch, slow=4)  # the first request + 3 warm-up requests are slow
    cfg = BenchConfig(warmup=3, iters=10)
    r = bench_artifact(tiny_bundle, "onnx-fp32", images, config=cfg, environment={})
    assert r.first_ms == pytest.approx(1000.0)
    assert r.cold_start_ms == pytest.approx(1000.0)
    inf = r.stages_ms["inference"]
    assert inf.n == 10 and inf.p99 == pytest.approx(1.0) and inf.std == pytest.approx(0.0)
    assert r.e2e_ms.n == 10 and r.e2e_ms.mean == pytest.approx(1.0)
    for s in ("decode", "preprocess", "postprocess"):
        assert r.stages_ms[s].mean == 0.0
    assert made[0].calls == 1 + 3 + 10
    assert r.throughput_ips == pytest.approx(1000.0)  # 10 images in 10 ms of fake time


def test_too_few_warmups_show_in_the_tail(
    tiny_bundle: Bundle, images: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake(monkeypatch, slow=3)
    r = bench_artifact(
        tiny_bundle, "onnx-fp32", images, config=BenchConfig(warmup=0, iters=10), environment={}
    )
    # two slow calls land in the measured window: the statistics must show them
    assert r.stages_ms["inference"].p99 > 900.0
    assert r.stages_ms["inference"].p50 == pytest.approx(1.0)


def test_concurrency_uses_one_runner_per_worker(
    tiny_bundle: Bundle, images: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, made = _fake(monkeypatch, slow=0)
    cfg = BenchConfig(warmup=2, iters=12, concurrency=3, batch=2)
    r = bench_artifact(tiny_bundle, "onnx-fp32", images, config=cfg, environment={})
    assert len(made) == 3
    assert r.e2e_ms.n == 12 and r.concurrency == 3 and r.batch == 2
    assert sum(m.calls for m in made) == 3 * (1 + 2) + 12
    assert r.conditions["concurrency_model"] == "one runner per worker thread"


def test_real_run_with_real_runner(tiny_bundle: Bundle, images: list[Path]) -> None:
    cfg = BenchConfig(warmup=1, iters=5, batch=2)
    r = bench_artifact(tiny_bundle, "onnx-fp32", images, config=cfg)
    assert r.e2e_ms.n == 5 and r.imgsz == (64, 64)
    assert set(r.stages_ms) == {"decode", "preprocess", "inference", "postprocess"}
    assert r.peak_rss_mb > 0 and r.file_size_bytes > 0 and r.cold_start_ms > 0
    assert r.conditions["hardware"]["cpu"]
    assert "onnxruntime" in r.conditions["versions"]
    assert r.conditions["runtime"]["format"] == "onnx"


def test_seconds_budget(tiny_bundle: Bundle, images: list[Path]) -> None:
    r = bench_artifact(tiny_bundle, "onnx-fp32", images, config=BenchConfig(warmup=0, seconds=0.3))
    assert r.e2e_ms.n >= 1 and r.conditions["budget"] == "0.3 s"


def test_applicability(tiny_bundle: Bundle) -> None:
    b1 = tiny_bundle.artifact("onnx-b1")
    assert "fixed batch 1" in (not_applicable(b1, batch=4, imgsz=None) or "")
    assert "fixed size 64x64" in (not_applicable(b1, batch=1, imgsz=(96, 96)) or "")
    assert not_applicable(b1, batch=1, imgsz=(64, 64)) is None
    dyn = tiny_bundle.artifact("onnx-fp32")
    assert not_applicable(dyn, batch=8, imgsz=(96, 128)) is None


def test_bad_config_and_inputs(tiny_bundle: Bundle, images: list[Path]) -> None:
    with pytest.raises(UsageError, match="exclude"):
        BenchConfig(iters=3, seconds=1.0)
    with pytest.raises(UsageError, match="concurrency"):
        BenchConfig(concurrency=0)
    with pytest.raises(UsageError, match="no images"):
        bench_artifact(tiny_bundle, "onnx-fp32", [])
    with pytest.raises(UsageError, match="fixed batch"):
        bench_artifact(tiny_bundle, "onnx-b1", images, config=BenchConfig(batch=2))
    with pytest.raises(UsageError, match="not in bundle"):
        bench_artifact(tiny_bundle, "nope", images)
