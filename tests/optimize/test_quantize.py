"""INT8 artifacts of the tiny detector go through the gate and are recorded with provenance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cvdeploy.bundle import Bundle
from cvdeploy.errors import UsageError
from cvdeploy.optimize import QuantizeOptions, quantize_bundle


def test_onnxruntime_qdq_through_the_gate(tiny_bundle: Path, calib_120: Path) -> None:
    notes: list[str] = []
    rep = quantize_bundle(
        tiny_bundle,
        calib_120,
        options=QuantizeOptions(backend="onnxruntime", progress=False, measure=False),
        log=notes.append,
    )
    assert rep.artifact == "onnx-int8"
    assert rep.parity["passed"]
    b = Bundle.load(tiny_bundle)
    art = b.artifact("onnx-int8")
    assert art.precision == "int8" and art.format == "onnx"
    opts = art.produced_by.options
    assert opts["calib_count"] == 120 and opts["calib_method"] == "minmax"
    assert len(opts["calib_sha256"]) == 64
    assert opts["quant_format"] == "QDQ"
    assert sorted(opts["head_float"]) == sorted(rep.head_float) and len(rep.head_float) == 5
    gate = art.latest("parity")
    assert gate is not None and gate.passed and gate.data["precision"] == "int8"
    assert any("300" in n for n in notes)  # hygiene warning reached the log
    import onnx

    ops = {n.op_type for n in onnx.load(str(b.model_file(art))).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # the head's nodes are not wrapped in Q/DQ: the Sigmoid reads a float tensor
    g = onnx.load(str(b.model_file(art))).graph
    producer = {o: n.op_type for n in g.node for o in n.output}
    sig = next(n for n in g.node if n.op_type == "Sigmoid")
    assert producer.get(sig.input[0]) != "DequantizeLinear"
    assert json.loads((tiny_bundle / "bundle.json").read_text())["history"][-1]["action"] == (
        "quantize"
    )


def test_tensorrt_backend_writes_symmetric_qdq(tiny_bundle: Path, calib_120: Path) -> None:
    rep = quantize_bundle(
        tiny_bundle,
        calib_120,
        options=QuantizeOptions(backend="tensorrt", progress=False, measure=False),
    )
    art = Bundle.load(tiny_bundle).artifact(rep.artifact)
    assert art.produced_by.options["activations"] == "int8-symmetric"
    assert "cvdeploy export BUNDLE --format tensorrt:int8" in art.produced_by.options["tensorrt"]


def test_openvino_nncf_through_the_gate(tiny_bundle: Path, calib_120: Path) -> None:
    pytest.importorskip("nncf")
    rep = quantize_bundle(
        tiny_bundle,
        calib_120,
        options=QuantizeOptions(backend="openvino", progress=False, measure=True),
    )
    b = Bundle.load(tiny_bundle)
    art = b.artifact("openvino-int8")
    assert art.format == "openvino" and art.files[0].path.endswith("model.xml")
    # FP32 on the same runtime was exported first (through the export gate) and is the source
    assert b.artifact("openvino-fp32").precision == "fp32"
    assert art.produced_by.source == "openvino-fp32" and rep.source == "openvino-fp32"
    assert art.produced_by.options["converted_from_onnx"] is False
    assert rep.rows[0].p50_ms is not None and rep.rows[1].p50_ms is not None
    assert rep.speedup is not None
    # INT8 computes its float parts in f32 on every CPU (pinned, recorded)
    assert art.inference_precision == "f32"
    assert art.latest("parity").data["inference_precision"] == "f32"  # type: ignore[union-attr]
    # INT8 with bf16 float parts is an artifact of its own, gated against the FP32 source
    from cvdeploy.errors import BackendUnavailable
    from cvdeploy.export import export_model
    from tests.cpu import native

    if "bf16" not in native():
        with pytest.raises(BackendUnavailable, match="no native bf16"):
            export_model(tiny_bundle, formats=["openvino:int8-bf16"])
        return
    out = export_model(tiny_bundle, formats=["openvino:int8-bf16"])
    assert out.ok, [o.message for o in out.outcomes]
    mixed = Bundle.load(tiny_bundle).artifact("openvino-int8-bf16")
    assert (mixed.precision, mixed.inference_precision) == ("int8-bf16", "bf16")
    assert mixed.produced_by.source == "openvino-int8"
    assert [f.sha256 for f in mixed.files] == [f.sha256 for f in art.files]  # the same IR
    par = mixed.latest("parity")
    assert par is not None and par.passed and par.name == "openvino-fp32"
    assert par.data["inference_precision"] == "bf16"
    assert par.data["tolerance"]["cosine_min"] == 0.98  # the INT8 tolerance


def test_refusals_change_nothing(tiny_bundle: Path, calib_120: Path, tmp_path: Path) -> None:
    before = (tiny_bundle / "bundle.json").read_text()
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(calib_120.iterdir())[:10]:
        (few / p.name).write_bytes(p.read_bytes())
    with pytest.raises(UsageError, match="at least 100"):
        quantize_bundle(tiny_bundle, few, options=QuantizeOptions(backend="onnxruntime"))
    with pytest.raises(UsageError, match="--eval-data"):
        quantize_bundle(tiny_bundle, calib_120, options=QuantizeOptions(max_drop=0.01))
    with pytest.raises(UsageError, match="matches no node"):
        quantize_bundle(
            tiny_bundle,
            calib_120,
            options=QuantizeOptions(backend="onnxruntime", keep_float=("nope*",), progress=False),
        )
    assert (tiny_bundle / "bundle.json").read_text() == before


def _labelled(root: Path, n: int = 6) -> Path:
    """A YOLO dataset in the tiny model's classes (one box per image)."""
    from tests.tiny_models import write_image

    (root / "labels" / "val").mkdir(parents=True)
    for i in range(n):
        write_image(root / "images" / "val" / f"{i}.png", seed=50 + i)
        (root / "labels" / "val" / f"{i}.txt").write_text(f"{i % 3} 0.5 0.5 0.4 0.4\n")
    y = root / "data.yaml"
    y.write_text("path: .\ntrain: images/val\nval: images/val\nnames: {0: c0, 1: c1, 2: c2}\n")
    return y


def test_budget_met_is_recorded(tiny_bundle: Path, calib_120: Path, tmp_path: Path) -> None:
    data = _labelled(tmp_path / "ds")
    rep = quantize_bundle(
        tiny_bundle,
        calib_120,
        options=QuantizeOptions(
            backend="onnxruntime", max_drop=0.05, eval_data=data, progress=False, measure=False
        ),
    )
    assert rep.budget is not None and rep.budget["met"]
    b = Bundle.load(tiny_bundle)
    assert b.artifact("onnx-int8").latest("metrics") is not None  # evaluate_bundle recorded it
    assert b.artifact("onnx-fp32").latest("metrics") is not None
    assert rep.rows[1].map50_95 is not None


def test_budget_missed_saves_nothing(
    tiny_bundle: Path, calib_120: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cvdeploy.errors import CheckFailed
    from cvdeploy.optimize import calibration, quantize

    scores = iter([0.5] + [0.4] * 20)  # FP32, then every candidate 0.1 below it
    fake = lambda predictor, evalset: next(scores)  # noqa: E731
    monkeypatch.setattr(quantize, "predictor_map", fake)
    monkeypatch.setattr(calibration, "predictor_map", fake)
    before = (tiny_bundle / "bundle.json").read_text()
    with pytest.raises(CheckFailed, match="could not meet the budget") as exc:
        quantize_bundle(
            tiny_bundle,
            calib_120,
            options=QuantizeOptions(
                backend="onnxruntime",
                max_drop=0.01,
                eval_data=_labelled(tmp_path / "ds"),
                progress=False,
            ),
        )
    assert "best found: drop 0.1000" in exc.value.message
    assert "--engine nncf" in (exc.value.hint or "")  # quantize_static: the other engine
    assert (tiny_bundle / "bundle.json").read_text() == before


def test_cli_quantize_json(tiny_bundle: Path, calib_120: Path) -> None:
    from typer.testing import CliRunner

    from cvdeploy.cli.main import app

    args = ["quantize", str(tiny_bundle), "--calib", str(calib_120), "--backend", "onnxruntime"]
    res = CliRunner().invoke(app, [*args, "--method", "percentile", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # stdout is exactly one JSON object
    assert out["artifact"] == "onnx-int8" and out["calibration"]["calib_method"] == "percentile"
    assert out["rows"][1]["p50_ms"] > 0 and out["speedup"] > 0
    res = CliRunner().invoke(app, args)  # exists already: exit 2, nothing changed
    assert res.exit_code == 2 and "--overwrite" in res.output


def test_onnxruntime_nncf_engine_through_the_gate(tiny_bundle: Path, calib_120: Path) -> None:
    rep = quantize_bundle(
        tiny_bundle,
        calib_120,
        options=QuantizeOptions(
            backend="onnxruntime", engine="nncf", progress=False, measure=False
        ),
    )
    assert rep.artifact == "onnx-int8" and rep.parity["passed"]
    b = Bundle.load(tiny_bundle)
    art = b.artifact("onnx-int8")
    assert art.produced_by.options["engine"].startswith("nncf")
    import onnx

    g = onnx.load(str(b.model_file(art))).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in g.node}
    # the head stays float for this engine too
    producer = {o: n.op_type for n in g.node for o in n.output}
    sig = next(n for n in g.node if n.op_type == "Sigmoid")
    assert producer.get(sig.input[0]) != "DequantizeLinear"


def test_engine_only_for_onnxruntime(tiny_bundle: Path, calib_120: Path) -> None:
    with pytest.raises(UsageError, match="onnxruntime only"):
        quantize_bundle(
            tiny_bundle, calib_120, options=QuantizeOptions(backend="openvino", engine="nncf")
        )
    with pytest.raises(UsageError, match="unknown engine"):
        quantize_bundle(tiny_bundle, calib_120, options=QuantizeOptions(engine="tflite"))


def test_cli_json_stdout_is_only_json_with_nncf(tiny_bundle: Path, calib_120: Path) -> None:
    """NNCF logs INFO lines and draws progress bars on stdout; --json must stay parseable."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "cvdeploy.cli.main", "quantize", str(tiny_bundle)]
    cmd += ["--calib", str(calib_120), "--backend", "onnxruntime", "--engine", "nncf"]
    res = subprocess.run([*cmd, "--no-measure", "--json"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)  # the whole of stdout
    assert out["artifact"] == "onnx-int8" and out["parity"]["passed"]


def test_a_refused_artifact_is_saved_only_with_save_refused(
    tiny_bundle: Path, calib_120: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """save_refused (doctor's keep-float trial, on a scratch copy) keeps an artifact the gate
    refuses, with the failed check recorded; without it nothing is saved."""
    import dataclasses

    import cvdeploy.verify.parity as parity
    from cvdeploy.errors import CheckFailed

    impossible = dataclasses.replace(parity.TOLERANCES["int8"], cosine_min=1.5)
    monkeypatch.setitem(parity.TOLERANCES, "int8", impossible)
    before = (tiny_bundle / "bundle.json").read_text()
    opts = {"backend": "onnxruntime", "progress": False, "measure": False}
    with pytest.raises(CheckFailed, match="failed the integrity gate") as refused:
        quantize_bundle(tiny_bundle, calib_120, options=QuantizeOptions(**opts))
    assert "--engine nncf" in (refused.value.hint or "")  # quantize_static: the other engine
    assert (tiny_bundle / "bundle.json").read_text() == before
    notes: list[str] = []
    rep = quantize_bundle(
        tiny_bundle, calib_120, options=QuantizeOptions(**opts, save_refused=True), log=notes.append
    )
    assert not rep.parity["passed"]
    check = Bundle.load(tiny_bundle).artifact("onnx-int8").latest("parity")
    assert check is not None and not check.passed
    assert any("saved anyway" in n for n in notes)
