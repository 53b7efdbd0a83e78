"""Quantization-aware training: the Q/DQ export, the gate, the loss, resume, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from cvdeploy.bundle import Bundle
from cvdeploy.cli.main import app
from cvdeploy.compress import QatOptions, TrainingInterrupted, qat_model
from cvdeploy.compress.qdq import export_qdq_onnx, freeze_ranges, prepare_qat, qdq_structure
from cvdeploy.zoo import load_zoo_model


def _images(det64: Path) -> Path:
    return det64.parent / "images" / "train"


def test_qdq_export_is_clean_with_the_head_in_float(tmp_path: Path) -> None:
    # per-channel here; the slow end-to-end test checks the per-tensor scheme's structure
    model, _ = load_zoo_model("detector-n")
    prepared = prepare_qat(model, torch.rand(2, 3, 64, 64), per_channel=True)
    with torch.no_grad():
        prepared(torch.rand(4, 3, 64, 64))
    freeze_ranges(prepared)
    export_qdq_onnx(prepared, tmp_path / "q.onnx", imgsz=64)
    st = qdq_structure(tmp_path / "q.onnx")
    assert st["decomposed"] == {}  # real QuantizeLinear/DequantizeLinear, no Mul/Round/Add
    assert st["quantize"] > 0 and st["dequantize"] > st["quantize"]  # + weight DQs
    assert st["convs_quantized"] == st["convs"] == 63  # input and weight both dequantized
    assert st["head_qdq"] == 0  # the decoding stays in float
    assert {"Softmax", "Sigmoid", "Concat"} <= set(st["head_ops"])


def test_training_the_prepared_model_leaves_the_teacher_and_the_bn_statistics_alone() -> None:
    # torch.export's module shares the float model's parameters and BatchNorm buffers: QAT
    # then trained the float teacher along with the student (its target moved with it, and
    # 60 steps took mAP50-95 from 0.744 to 0.665); prepare_qat exports a copy. And a QAT
    # step in eval mode must not update the exported BatchNorms' running statistics.
    model, _ = load_zoo_model("detector-n")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = prepare_qat(model, torch.rand(2, 3, 64, 64), per_channel=False)
    with torch.no_grad():
        prepared(torch.rand(4, 3, 64, 64))
    freeze_ranges(prepared)
    stats = {k: v.clone() for k, v in prepared.state_dict().items() if "running_" in k}
    assert stats  # the exported BatchNorms' buffers
    prepared.train(False)
    opt = torch.optim.SGD([p for p in prepared.parameters() if p.requires_grad], lr=0.1)
    out = prepared(torch.rand(4, 3, 64, 64))
    (out[0] if isinstance(out, list | tuple) else out).square().mean().backward()
    opt.step()
    after = prepared.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in before.items() if k in after)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"the float model's {k} changed"
    for k, v in stats.items():
        assert torch.equal(after[k], v), f"{k} changed in an eval-mode step"


def test_aggressive_scheme_quantizes_the_head_logits_and_keeps_the_decoding_float(
    tmp_path: Path,
) -> None:
    import onnx
    from onnx import numpy_helper

    model, _ = load_zoo_model("detector-n")
    prepared = prepare_qat(model, torch.rand(2, 3, 64, 64), per_channel=False, head_outputs=True)
    with torch.no_grad():
        prepared(torch.rand(4, 3, 64, 64))
    freeze_ranges(prepared)
    export_qdq_onnx(prepared, tmp_path / "a.onnx", imgsz=64)
    st = qdq_structure(tmp_path / "a.onnx")
    assert st["decomposed"] == {}
    assert st["convs_quantized"] == st["convs"] == 63
    # the 6 last convolutions (box-distribution and class logits of 3 levels): each output
    # goes through QuantizeLinear -> DequantizeLinear, and nothing after them is quantized
    assert st["head_convs"] == 6 and st["head_outputs_quantized"] == 6
    assert st["head_qdq"] == 0
    assert {"Softmax", "Sigmoid", "Concat"} <= set(st["head_ops"])
    # per-tensor weights: every weight DequantizeLinear has one scale
    g = onnx.load(str(tmp_path / "a.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    for conv in (n for n in g.node if n.op_type == "Conv"):
        wdq = producer[conv.input[1]]
        assert wdq.op_type == "DequantizeLinear" and inits[wdq.input[1]].size == 1
    # the default scheme on the same model keeps the logits float (the check above sees it)
    default = prepare_qat(model, torch.rand(2, 3, 64, 64), per_channel=False)
    with torch.no_grad():
        default(torch.rand(4, 3, 64, 64))
    freeze_ranges(default)
    export_qdq_onnx(default, tmp_path / "d.onnx", imgsz=64)
    sd = qdq_structure(tmp_path / "d.onnx")
    assert sd["head_convs"] == 6 and sd["head_outputs_quantized"] == 0 and sd["head_qdq"] == 0


def _run(args: list[str]) -> tuple[int, str]:
    r = CliRunner().invoke(app, args)
    return r.exit_code, r.output


@pytest.mark.slow
def test_qat_gate_loss_resume_and_explain(tmp_path: Path, onnx_teacher: Path, det64: Path) -> None:
    out = tmp_path / "q"
    opts = QatOptions(
        minutes=None, iters=10, calib_size=16, scheme="per-tensor", progress=False,
        latency_rounds=1, eval_data=det64,
    )  # fmt: skip

    def interrupt(step: int, _loss: float) -> None:
        if step == 4:
            raise KeyboardInterrupt

    # the source is a bundle holding a torch artifact (detector-n at 64 px)
    with pytest.raises(TrainingInterrupted):
        qat_model(str(onnx_teacher), _images(det64), out, options=opts, on_step=interrupt)
    rep = qat_model(
        str(onnx_teacher), _images(det64), out,
        options=QatOptions(**{**opts.__dict__, "resume": True}),
    )  # fmt: skip
    tr = rep.training[0]
    assert tr["resumed_from"] == 4 and tr["iterations"] == 10
    # the default lr (3e-4): 1e-3 moved a calibrated model too far for the gate in 10 steps
    assert tr["loss_last"] < tr["loss_first"]
    assert [r.name for r in rep.rows] == ["fp32", "ptq", "qat"]
    assert all(r.value is not None and r.p50_ms for r in rep.rows)
    assert "recovered" in rep.target and rep.target["scheme"]["weights"].endswith("per-tensor")
    assert rep.target["scheme"]["name"] == "per-tensor" and rep.target["gate_refused"] == {}
    b = Bundle.load(out)
    for art_id in ("onnx-int8-ptq", "onnx-int8-qat"):
        art = b.artifact(art_id)
        assert art.precision == "int8" and art.latest("parity").passed  # type: ignore[union-attr]
        assert art.produced_by.options["qdq"]["head_qdq"] == 0
        assert art.produced_by.options["scheme"]["activations"] == "uint8 asymmetric per-tensor"
    # `quantize --explain` reads QAT artifacts too
    code, text = _run(["quantize", "--explain", str(out), "--artifact", "onnx-int8-qat", "--json"])
    assert code == 0, text
    assert json.loads(text[text.index("{") :])["artifact"] == "onnx-int8-qat"


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--backend", "tflite"], "unknown backend"),
        (["--max-drop", "0.01"], "--eval-data"),
        (["--init", "random"], "--init"),
        (["--scheme", "int4"], "unknown scheme"),
    ],
)
def test_bad_options_exit_2(tmp_path: Path, det64: Path, extra: list[str], needle: str) -> None:
    code, out = _run(
        ["qat", "detector-n", "--data", str(_images(det64)), "--out", str(tmp_path / "o"), *extra]
    )
    assert code == 2, out
    assert needle in out and "Traceback" not in out


def test_bad_source_or_data_exit_2(tmp_path: Path, det64: Path) -> None:
    code, out = _run(
        ["qat", "nope-model", "--data", str(_images(det64)), "--out", str(tmp_path / "o")]
    )
    assert code == 2 and "nope-model" in out
    (tmp_path / "e").mkdir()
    code, out = _run(
        ["qat", "detector-n", "--data", str(tmp_path / "e"), "--out", str(tmp_path / "o")]
    )
    assert code == 2 and "no usable images" in out
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(_images(det64).iterdir())[:3]:
        shutil.copy(p, few / p.name)
    code, out = _run(["qat", "detector-n", "--data", str(few), "--out", str(tmp_path / "o")])
    assert code == 2 and "too few" in out and "Traceback" not in out
    assert not (tmp_path / "o").exists()  # nothing half-written


@pytest.mark.slow
def test_a_qat_artifact_refused_by_the_gate(
    tmp_path: Path, onnx_teacher: Path, det64: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cvdeploy.compress import qat as qat_mod

    real = qat_mod.check_parity
    reason = "forced by the test: 0.10 of the source's detections matched (< 0.90)"

    def refuse_qat(src: object, cand: object, images: object, *, precision: str) -> object:
        r = real(src, cand, images, precision=precision)  # type: ignore[arg-type]
        if str(getattr(cand, "artifact_id", "")).endswith("-qat"):
            r.passed, r.failures = False, [reason]
        return r

    monkeypatch.setattr(qat_mod, "check_parity", refuse_qat)
    images = str(_images(det64))
    # the command: the refusal and its reason are shown, exit 1, no bundle delivered
    out = tmp_path / "cli"
    code, text = _run(
        ["qat", str(onnx_teacher), "--data", images, "--out", str(out), "--iters", "2",
         "--calib-size", "8"]
    )  # fmt: skip
    assert code == 1, text
    assert "onnx-int8-qat was refused by the INT8 gate" in text and "forced by the test" in text
    assert "Traceback" not in text and not out.exists()
    assert (tmp_path / "cli.work").is_dir()  # the trained state is kept (--resume)
    # measure mode (benchmarks/qat.py): scored and timed from the working folder, reported;
    # it resumes the run above from its working folder (nothing exported or trained again)
    out = tmp_path / "measure"
    rep = qat_model(
        str(onnx_teacher), _images(det64), out,
        options=QatOptions(
            minutes=10.0, iters=2, calib_size=8, progress=False, latency_rounds=1,
            eval_data=det64, score_refused=True, resume=True, work_dir=tmp_path / "cli.work",
        ),
    )  # fmt: skip
    assert rep.training[0]["resumed_from"] == 2
    assert rep.target["met"] is False
    assert rep.target["gate_refused"] == {"onnx-int8-qat": reason}
    qat_row = rep.row("qat")
    assert qat_row is not None and qat_row.value is not None and qat_row.p50_ms
    assert "refused by the INT8 gate" in qat_row.note
    ids = {a.id for a in Bundle.load(out).manifest.artifacts}
    assert "onnx-int8-ptq" in ids and "onnx-int8-qat" not in ids
    assert any("QAT artifact was refused" in n for n in rep.notes)


def test_a_keep_float_name_the_model_does_not_have_exits_2(tmp_path: Path, det64: Path) -> None:
    code, out = _run(
        ["qat", "detector-n", "--data", str(_images(det64)), "--out", str(tmp_path / "o"),
         "--keep-float", "activation_post_process_999", "--iters", "1"]
    )  # fmt: skip
    assert code == 2, out
    assert "not activation quantizers" in out and "Traceback" not in out
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["qat", "prune"])
def test_training_images_are_resized_aligned_and_padded_as_the_spec_says(
    tmp_path: Path, onnx_teacher: Path, det64: Path, command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The images a model is calibrated and fine-tuned on are resized, aligned and padded
    as its spec says (stopped once the images are read)."""
    import yaml

    import cvdeploy.compress.pruning as pruning
    import cvdeploy.compress.qat as qat
    from cvdeploy.compress import PruneOptions, prune_model

    b = Bundle.load(onnx_teacher)
    spec = b.spec.model_dump(mode="json")
    spec["preprocess"]["align"] = "top-left"
    spec["preprocess"]["pad_value"] = 0
    spec["preprocess"]["resize"] = "stretch"
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    onnx_file = b.model_file(b.artifact("onnx-fp32"))
    (tmp_path / "det_factory.py").write_text(  # prune needs torch code: module:factory
        "from cvdeploy.zoo.models import build_model\n\n"
        f"def build():\n    return build_model('detector-n', num_classes={len(b.spec.names)})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: list[tuple[str, int, str]] = []

    class Stop(Exception):
        pass

    def spy(*args: object, preprocess: Any = None, **kw: object) -> None:
        seen.append((preprocess.align, preprocess.pad_value, preprocess.resize))
        raise Stop

    module = qat if command == "qat" else pruning
    monkeypatch.setattr(module, "load_train_images", spy)
    with pytest.raises(Stop):
        if command == "qat":
            qat_model(str(onnx_file), _images(det64), tmp_path / "o", spec_file=spec_file,
                      options=QatOptions(iters=1, minutes=None, progress=False))  # fmt: skip
        else:
            prune_model("det_factory:build", _images(det64), tmp_path / "o", spec_file=spec_file,
                        options=PruneOptions(ratio=0.2, progress=False))  # fmt: skip
    assert seen == [("top-left", 0, "stretch")]
