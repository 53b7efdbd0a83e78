"""`tune_bundle` on the tiny fixture bundle, with injected (deterministic) timings and accuracy.

The latency and accuracy functions are replaced by fakes so that no test depends on timing:
one setting is made deliberately slower, one artifact deliberately inaccurate.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from cvdeploy.bench.stats import Stats
from cvdeploy.bundle import Bundle, BundleEdit
from cvdeploy.errors import UsageError
from cvdeploy.pipeline.predictor import Predictor
from cvdeploy.workflows.tune import tune_bundle
from cvdeploy.workflows.tune_report import Accuracy, Measurement, TuneOptions
from cvdeploy.workflows.tune_space import Settings, plan_artifacts, settings_grid
from tests.cpu import native
from tests.tiny_models import write_image

CANDIDATE_KEYS = {
    "artifact",
    "format",
    "precision",
    "settings",
    "created",
    "status",
    "message",
    "accuracy",
    "drop",
    "e2e_ms",
    "throughput_ips",
    "pre_post_share",
    "round_p50_ms",
    "p50_spread_ms",
    "fix",
}


def make_dataset(root: Path, n: int = 4) -> Path:
    """A tiny YOLO dataset (images + one box each) with the tiny model's class names."""
    for i in range(n):
        write_image(root / "images" / "val" / f"{i}.jpg", seed=i)
        (root / "labels" / "val").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "val" / f"{i}.txt").write_text("1 0.5 0.5 0.4 0.4\n")
    (root / "data.yaml").write_text("path: .\nval: images/val\nnames: [c0, c1, c2]\n")
    return root / "data.yaml"


class Fakes:
    """Deterministic accuracy per artifact and latency per (artifact, settings)."""

    def __init__(self, acc: dict[str, float], fail: Sequence[str] = ()) -> None:
        self.acc = acc
        self.fail = set(fail)
        self.evaluated: list[tuple[str, tuple[Any, ...]]] = []
        self.measured: list[tuple[str, Settings]] = []

    def evaluate(
        self, bundle: Bundle, aid: str, s: Settings, data: Path, opts: TuneOptions
    ) -> Accuracy:
        self.evaluated.append((aid, s.accuracy_key()))
        v = self.acc[aid]
        return Accuracy(v, {"map50_95": v}, "fake:val", 4, {})

    def measure(
        self, bundle: Bundle, aid: str, s: Settings, images: Sequence[Path], opts: TuneOptions
    ) -> Measurement:
        self.measured.append((aid, s))
        if aid in self.fail:
            raise RuntimeError("simulated runtime crash")
        # threads=2 is deliberately slower than threads=1; "basic" and "parallel" cost more
        ms = 10.0 * (s.threads or 4) + (
            5 if s.extra.get("graph_optimization_level") == "basic" else 0
        )
        ms += 1 if s.extra.get("execution_mode") == "parallel" else 0
        ms += 0.5 if aid == "onnx-b1" else 0.0
        if aid.startswith("openvino"):
            ms = 1.0  # the fastest of all, but too inaccurate in these tests
        stats = Stats(p50=ms, p90=ms * 1.1, p99=ms * 1.2, mean=ms, std=0.0, n=3)
        return Measurement(stats, 1000.0 / ms, 0.1)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "ds")


@pytest.fixture
def made(tiny_bundle: Bundle) -> str:
    """The artifact tune must make (a real OpenVINO export through its gate) on this CPU:
    ``openvino-fp16`` where the CPU computes FP16 natively; elsewhere FP16 compute is not
    tried, so ``openvino-fp32`` is taken out of the bundle first and tune makes that."""
    if "f16" in native():
        return "openvino-fp16"
    with tiny_bundle.edit(action="test-setup") as edit:
        edit.remove_artifact("openvino-fp32")
    return "openvino-fp32"


@pytest.fixture
def fp16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """cvdeploy sees a CPU with native FP16 (for tests whose export is a fake)."""
    import cvdeploy.environment as environment

    real = environment.cpu_info

    def cpu_info(*a: Any, **k: Any) -> dict[str, Any]:
        info = dict(real(*a, **k))
        info["flags"] = sorted({*info["flags"], "avx512_fp16"})
        return info

    monkeypatch.setattr(environment, "cpu_info", cpu_info)


def _opts(**kw: Any) -> TuneOptions:
    base: dict[str, Any] = {
        "formats": ("onnx", "openvino"),
        "precisions": ("fp32",),
        "threads": (1, 2),
    }
    base.update(kw)
    return TuneOptions(**base)


def test_picks_faster_setting_and_refuses_inaccurate(tiny_bundle: Bundle, data: Path) -> None:
    fakes = Fakes({"onnx-fp32": 0.50, "onnx-b1": 0.50, "openvino-fp32": 0.30})
    rep = tune_bundle(
        tiny_bundle, data, options=_opts(), measure=fakes.measure, evaluate=fakes.evaluate
    )
    assert rep.reference == {"artifact": "onnx-fp32", "accuracy": 0.5, "dataset": "fake:val"}
    assert rep.floor == pytest.approx(0.49)
    rec = rep.recommended
    assert rec is not None and rec.artifact == "onnx-fp32"
    assert rec.options.threads == 1
    assert rec.options.extra == {
        "graph_optimization_level": "all",
        "execution_mode": "sequential",
    }
    # the fast but inaccurate artifact is refused and never timed
    ov = [c for c in rep.candidates if c.artifact == "openvino-fp32"]
    assert ov and all(c.status == "too-inaccurate" for c in ov)
    assert all(c.drop == pytest.approx(0.2) for c in ov)
    assert not any(aid == "openvino-fp32" for aid, _ in fakes.measured)
    # accuracy once per artifact (the reference result is reused)
    assert sorted(a for a, _ in fakes.evaluated) == ["onnx-b1", "onnx-fp32", "openvino-fp32"]
    # recorded: the manifest, and the predictor applies the settings
    b = Bundle.load(tiny_bundle.path)
    assert b.manifest.recommended is not None
    assert b.manifest.recommended["artifact"] == "onnx-fp32"
    assert b.manifest.recommended["options"]["threads"] == 1
    assert b.manifest.history[-1].action == "tune"
    with Predictor.from_bundle(b) as pred:
        assert pred.artifact_id == "onnx-fp32"
        assert pred.runner.options.threads == 1
        so = pred.runner.session.get_session_options()  # type: ignore[attr-defined]
        assert so.intra_op_num_threads == 1


def test_predictor_applies_recommended_threads(tiny_bundle: Bundle) -> None:
    with tiny_bundle.edit(action="test") as edit:
        edit.set_recommended(
            {
                "artifact": "onnx-fp32",
                "options": {
                    "threads": 1,
                    "device": "cpu",
                    "extra": {"graph_optimization_level": "basic"},
                },
            }
        )
    with Predictor.from_bundle(Bundle.load(tiny_bundle.path)) as pred:
        so = pred.runner.session.get_session_options()  # type: ignore[attr-defined]
        assert so.intra_op_num_threads == 1
        assert "BASIC" in str(so.graph_optimization_level)
    # an explicit artifact other than the recommended one does not inherit its options
    other = Predictor.from_bundle(Bundle.load(tiny_bundle.path), "onnx-b1")
    assert other.runner.options.threads is None


def test_throughput_target(tiny_bundle: Bundle, data: Path) -> None:
    fakes = Fakes({"onnx-fp32": 0.5, "onnx-b1": 0.5, "openvino-fp32": 0.5})
    rep = tune_bundle(
        tiny_bundle,
        data,
        options=_opts(target="throughput", formats=("onnx",)),
        measure=fakes.measure,
        evaluate=fakes.evaluate,
    )
    assert rep.recommended is not None and rep.recommended.target == "throughput"
    assert rep.recommended.options.threads == 1  # 1000/10 img/s beats 1000/20


def test_failing_candidates_are_skipped(
    tiny_bundle: Bundle, data: Path, monkeypatch: pytest.MonkeyPatch, fp16_cpu: None
) -> None:
    import cvdeploy.export as export_stage

    def broken_export(*a: Any, **k: Any) -> Any:
        raise RuntimeError("simulated exporter crash")

    monkeypatch.setattr(export_stage, "export_model", broken_export)
    fakes = Fakes({"onnx-fp32": 0.5, "onnx-b1": 0.5, "openvino-fp32": 0.5}, fail=["onnx-fp32"])
    rep = tune_bundle(
        tiny_bundle,
        data,
        options=_opts(formats=("onnx", "openvino"), precisions=("fp32", "fp16")),
        measure=fakes.measure,
        evaluate=fakes.evaluate,
    )
    by_status = {(c.artifact, c.status) for c in rep.candidates}
    assert ("openvino-fp16", "failed") in by_status  # could not be made
    made = next(c for c in rep.candidates if c.artifact == "openvino-fp16")
    assert "simulated exporter crash" in made.message and made.settings is None
    assert all(c.status == "failed" for c in rep.candidates if c.artifact == "onnx-fp32")
    assert any("onnx:fp16" in n for n in rep.notes)  # no stage makes it: a note, not a row
    assert rep.recommended is not None and rep.recommended.artifact == "openvino-fp32"


def test_no_candidate_keeps_floor_records_nothing(tiny_bundle: Bundle, data: Path) -> None:
    before = (tiny_bundle.path / "bundle.json").read_bytes()
    fakes = Fakes({"onnx-fp32": 0.5, "onnx-b1": 0.5, "openvino-fp32": 0.3})
    rep = tune_bundle(
        tiny_bundle,
        data,
        options=_opts(min_map=0.9),
        measure=fakes.measure,
        evaluate=fakes.evaluate,
    )
    assert rep.recommended is None and not rep.recorded
    assert {c.status for c in rep.candidates} == {"too-inaccurate"}
    assert fakes.measured == []
    assert (tiny_bundle.path / "bundle.json").read_bytes() == before
    assert rep.reference["artifact"] == "onnx-fp32" and rep.reference["accuracy"] == 0.5
    assert _leftovers(tiny_bundle) == []


def test_json_schema(tiny_bundle: Bundle, data: Path) -> None:
    fakes = Fakes({"onnx-fp32": 0.5, "onnx-b1": 0.48, "openvino-fp32": 0.3})
    rep = tune_bundle(
        tiny_bundle,
        data,
        options=_opts(max_drop=0.05),
        measure=fakes.measure,
        evaluate=fakes.evaluate,
    )
    d = json.loads(json.dumps(rep.to_dict()))
    assert {"candidates", "recommended", "reference"} <= set(d)
    for c in d["candidates"]:
        assert set(c) == CANDIDATE_KEYS
        assert c["status"] in {"ok", "too-inaccurate", "failed", "skipped"}
        if c["status"] == "ok":
            assert set(c["e2e_ms"]) == {"p50", "p90", "p99", "mean", "std", "n"}
            assert set(c["settings"]) == {"threads", "device", "extra"}
    r = d["recommended"]
    assert r["artifact"] == "onnx-fp32" and r["source"] == "tune"
    assert set(r["options"]) == {"threads", "device", "extra"}
    assert r["floor"] == pytest.approx(0.45) and r["e2e_ms"]["p50"] == 10.0
    b1 = [c for c in d["candidates"] if c["artifact"] == "onnx-b1"]
    assert all(c["status"] == "ok" and c["drop"] == pytest.approx(0.02) for c in b1)
    assert Bundle.load(tiny_bundle.path).manifest.recommended == r


def test_failure_while_recording_leaves_manifest_intact(
    tiny_bundle: Bundle, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = (tiny_bundle.path / "bundle.json").read_bytes()

    def boom(self: BundleEdit, rec: Any) -> None:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(BundleEdit, "set_recommended", boom)
    fakes = Fakes({"onnx-fp32": 0.5, "onnx-b1": 0.5, "openvino-fp32": 0.5})
    with pytest.raises(OSError, match="simulated"):
        tune_bundle(
            tiny_bundle, data, options=_opts(), measure=fakes.measure, evaluate=fakes.evaluate
        )
    assert (tiny_bundle.path / "bundle.json").read_bytes() == before
    assert Bundle.load(tiny_bundle.path).manifest.recommended is None
    assert _leftovers(tiny_bundle) == []


def test_budget_skips_the_rest(tiny_bundle: Bundle, data: Path) -> None:
    fakes = Fakes({"onnx-fp32": 0.5, "onnx-b1": 0.5, "openvino-fp32": 0.5})
    rep = tune_bundle(
        tiny_bundle,
        data,
        options=_opts(budget_minutes=1e-9),
        measure=fakes.measure,
        evaluate=fakes.evaluate,
    )
    assert {c.status for c in rep.candidates} == {"skipped"}
    assert rep.recommended is None


def test_options_and_grids() -> None:
    with pytest.raises(UsageError, match="exclude"):
        TuneOptions(min_map=0.3, max_drop=0.01)
    with pytest.raises(UsageError):
        TuneOptions(target="speed")
    with pytest.raises(UsageError):
        Settings(threads=0)
    onnx = settings_grid("onnx", threads=[1, 2])
    assert {s.extra["graph_optimization_level"] for s in onnx} == {"all", "basic"}
    assert {s.threads for s in onnx} == {1, 2}
    ov = settings_grid("openvino", threads=[1], cpu_flags=["avx512_bf16"])
    assert {s.extra["PERFORMANCE_HINT"] for s in ov} == {"LATENCY", "THROUGHPUT"}
    # precision is the artifact's (the runner pins it): no setting changes it
    assert not any("INFERENCE_PRECISION_HINT" in s.extra for s in ov)
    assert {s.accuracy_key() for s in ov} == {()}
    explicit = Settings(1, {"INFERENCE_PRECISION_HINT": "bf16"})
    assert explicit.accuracy_key() == (("INFERENCE_PRECISION_HINT", "bf16"),)
    assert settings_grid("tflite", threads=[1, 2]) == [Settings(1), Settings(2)]


def test_plan(tiny_bundle: Bundle) -> None:
    plans, notes = plan_artifacts(
        tiny_bundle,
        formats=("onnx", "openvino"),
        precisions=("int8-bf16", "fp32", "fp16", "bf16", "int8"),
        cpu_flags=["avx2", "avx512_bf16", "avx512_fp16"],
    )
    got = [(p.format, p.precision, p.artifact_id, p.make) for p in plans]
    assert ("onnx", "fp32", "onnx-fp32", None) in got
    assert ("onnx", "int8", None, "quantize") in got
    assert ("openvino", "fp16", None, "export") in got
    assert ("openvino", "bf16", None, "export") in got
    assert ("openvino", "int8", None, "quantize") in got
    # the bf16 variant of INT8 is derived from the INT8 artifact: planned after it
    ov = [g[1] for g in got if g[0] == "openvino"]
    assert ov.index("int8") < ov.index("int8-bf16")
    assert any(n.startswith("onnx:fp16") for n in notes)
    # a CPU without native bf16/FP16: those are notes with the reason, never plans
    plans, notes = plan_artifacts(
        tiny_bundle,
        formats=("openvino",),
        precisions=("fp32", "fp16", "bf16", "int8", "int8-bf16"),
        cpu_flags=["avx2", "fma"],
    )
    assert {p.precision for p in plans} == {"fp32", "int8"}
    for prec in ("fp16", "bf16", "int8-bf16"):
        assert any(n.startswith(f"openvino:{prec}: not tried") and "native" in n for n in notes)
    with pytest.raises(UsageError):
        plan_artifacts(tiny_bundle, formats=("nope",), precisions=("fp32",))


def _leftovers(bundle: Bundle) -> list[str]:
    return sorted(p.name for p in bundle.path.parent.iterdir() if p.name.startswith("."))


def test_real_measurement_and_evaluation(tiny_bundle: Bundle, data: Path) -> None:
    """The default functions (evaluate_bundle, bench harness) on the tiny model: schema only."""
    rep = tune_bundle(
        tiny_bundle,
        data,
        options=TuneOptions(
            formats=("onnx",), precisions=("fp32",), threads=(1,), iters=2, warmup=1
        ),
    )
    assert rep.recommended is not None
    ok = [c for c in rep.candidates if c.status == "ok"]
    assert ok and all(c.measurement and c.measurement.e2e_ms.n == 2 for c in ok)
    b = Bundle.load(tiny_bundle.path)
    assert b.manifest.recommended is not None
    checks = [c for c in b.artifact(rep.recommended.artifact).checks if c.kind == "metrics"]
    assert checks and checks[-1].data["by"] == "tune"


def test_made_artifact_is_added_atomically(tiny_bundle: Bundle, data: Path, made: str) -> None:
    """A missing candidate is exported (real OpenVINO export + gate) and kept when chosen."""
    fakes = Fakes({"onnx-fp32": 0.5, "openvino-fp32": 0.3, made: 0.5})
    rep = tune_bundle(
        tiny_bundle,
        data,
        options=_opts(formats=("openvino",), precisions=("fp32", "fp16"), threads=(1,)),
        measure=fakes.measure,
        evaluate=fakes.evaluate,
    )
    assert rep.created == [made]
    assert rep.recommended is not None and rep.recommended.artifact == made
    assert rep.kept == [made]
    b = Bundle.load(tiny_bundle.path)  # verifies every file's sha256
    art = b.artifact(made)
    assert art.precision == made.split("-")[1] and art.latest("parity") is not None
    assert b.manifest.recommended is not None
    assert b.manifest.recommended["artifact"] == made
    assert [h.action for h in b.manifest.history][-1] == "tune"  # one edit, no export entry
    assert _leftovers(tiny_bundle) == []
    if made == "openvino-fp32":  # FP16 compute was not tried here, and the table says why
        assert any(n.startswith("openvino:fp16: not tried") for n in rep.notes)


def test_keep_recommended_drops_unused_new_artifacts(
    tiny_bundle: Bundle, data: Path, made: str
) -> None:
    fakes = Fakes({"onnx-fp32": 0.5, "openvino-fp32": 0.5, made: 0.1})
    rep = tune_bundle(
        tiny_bundle,
        data,
        options=_opts(
            formats=("onnx", "openvino"),
            precisions=("fp32", "fp16"),
            threads=(1,),
            keep="recommended",
        ),
        measure=fakes.measure,
        evaluate=fakes.evaluate,
    )
    assert rep.created == [made] and rep.kept == []
    best = "openvino-fp32" if made != "openvino-fp32" else "onnx-fp32"
    assert rep.recommended is not None and rep.recommended.artifact == best
    ids = {a.id for a in Bundle.load(tiny_bundle.path).manifest.artifacts}
    assert made not in ids


class Drifting(Fakes):
    """The first pass favours a candidate that is slower in every later measurement."""

    def measure(
        self, bundle: Bundle, aid: str, s: Settings, images: Sequence[Path], opts: TuneOptions
    ) -> Measurement:
        first = not any(m == (aid, s) for m in self.measured)
        self.measured.append((aid, s))
        lucky = s.threads == 2 and s.extra.get("graph_optimization_level") == "all"
        lucky = lucky and s.extra.get("execution_mode") == "sequential"
        ms = 5.0 if (lucky and first) else (30.0 if lucky else 10.0 * (s.threads or 4))
        stats = Stats(p50=ms, p90=ms, p99=ms, mean=ms, std=0.0, n=3)
        return Measurement(stats, 1000.0 / ms, 0.1)


def test_leaders_are_measured_again_and_keep_their_median(tiny_bundle: Bundle, data: Path) -> None:
    fakes = Drifting({"onnx-fp32": 0.5})
    rep = tune_bundle(
        tiny_bundle,
        data,
        options=_opts(formats=("onnx",), final_top=2, final_rounds=2),
        measure=fakes.measure,
        evaluate=fakes.evaluate,
    )
    assert rep.recommended is not None
    assert rep.recommended.options.threads == 1  # the lucky single pass did not win
    lucky = [c for c in rep.candidates if c.settings and c.settings.threads == 2]
    assert any("median of 3" in c.message for c in lucky)


def test_no_remeasurement_with_zero_rounds(tiny_bundle: Bundle, data: Path) -> None:
    fakes = Drifting({"onnx-fp32": 0.5})
    rep = tune_bundle(
        tiny_bundle,
        data,
        options=_opts(formats=("onnx",), final_rounds=0),
        measure=fakes.measure,
        evaluate=fakes.evaluate,
    )
    assert rep.recommended is not None and rep.recommended.options.threads == 2
