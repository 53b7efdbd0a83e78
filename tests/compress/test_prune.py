"""Pruning: the exported graph, the gate, the head rule, bad input, the command end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import onnx
import pytest
import torch
from onnx import numpy_helper
from typer.testing import CliRunner

from cvdeploy.bundle import Bundle
from cvdeploy.cli.main import app
from cvdeploy.compress.measure import export_candidate, write_torch_bundle
from cvdeploy.compress.prune import check_ratio, output_layers, prune_step
from cvdeploy.compress.rewrite import make_prunable
from cvdeploy.errors import UsageError
from cvdeploy.export import zoo_spec
from cvdeploy.runtime.torch import load_checkpoint
from cvdeploy.zoo import load_zoo_model


def _pruned_detector(ratio: float) -> torch.nn.Module:
    model, _ = load_zoo_model("detector-n")
    model = make_prunable(model).eval()
    prune_step(model, torch.zeros(1, 3, 256, 256), ratio=ratio, round_to=8)
    return model


def test_output_layers_are_the_head_outputs() -> None:
    model, _ = load_zoo_model("detector-n")
    model = make_prunable(model)
    keep = output_layers(model, torch.zeros(1, 3, 64, 64))
    names = sorted(n for n, m in model.named_modules() if any(m is k for k in keep))
    assert names == [f"head.{b}.{i}.2" for b in ("box", "cls") for i in range(3)]


def test_pruning_keeps_the_output_layout_and_rounds_channels() -> None:
    model = _pruned_detector(0.3)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert convs["head.box.0.2"].out_channels == 64 and convs["head.cls.0.2"].out_channels == 6
    hidden = [m for n, m in convs.items() if not n.endswith(".2") or not n.startswith("head.")]
    assert all(m.out_channels % 8 == 0 for m in hidden)
    original, _ = load_zoo_model("detector-n")
    assert sum(p.numel() for p in model.parameters()) < 0.7 * sum(
        p.numel() for p in original.parameters()
    )
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 256, 256)).shape == (1, 10, 1344)


@pytest.mark.slow
def test_pruned_export_graph_matches_and_passes_the_gate(tmp_path: Path, det256: Path) -> None:
    model = _pruned_detector(0.4)
    spec = zoo_spec("detect", ("circle", "square", "triangle", "star", "cross", "ring"), (256, 256))
    images = det256.parent / "images" / "val"
    b = write_torch_bundle(
        model, out=tmp_path / "b", name="p", spec=spec, builder="pruned:zoo:detector-n",
        samples=sorted(images.iterdir())[:4], tool="prune", options={}, pruned=True,
    )  # fmt: skip
    b = export_candidate(b, runtime="onnxruntime", gate_data=images)
    art = b.artifact("onnx-fp32")
    parity = art.latest("parity")
    assert parity is not None and parity.passed
    # the ONNX graph has the pruned torch model's convolutions, channel for channel
    g = onnx.load(str(b.model_file(art))).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    onnx_out = sorted(int(inits[n.input[1]].shape[0]) for n in g.node if n.op_type == "Conv")
    torch_out = sorted(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert onnx_out == torch_out
    # the torch artifact rebuilds the narrower layers from its weights
    reloaded, _ = load_checkpoint(b.model_file("torch-fp32"))
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), model(x))


def test_refuses_a_ratio_that_breaks_the_head() -> None:
    model, _ = load_zoo_model("detector-n")
    model = make_prunable(model)
    x = torch.zeros(1, 3, 64, 64)
    with pytest.raises(UsageError, match="head") as e:
        check_ratio(copy.deepcopy(model), x, ratio=0.9, round_to=None)
    # the head's minimum (8) refuses, not the rounding: a smaller --round-to would not help
    assert "round-to 1)" in str(e.value) and "--round-to" not in (e.value.hint or "")
    assert "--ratio 0.75 or less" in (e.value.hint or "")
    with pytest.raises(UsageError, match="ratio"):
        check_ratio(model, x, ratio=0.95, round_to=8)
    check_ratio(model, x, ratio=0.3, round_to=8)  # fine


def _run(args: list[str]) -> tuple[int, str]:
    r = CliRunner().invoke(app, args)
    return r.exit_code, r.output


def test_cli_refuses_head_breaking_ratio(tmp_path: Path, det64: Path) -> None:
    code, out = _run(
        ["prune", "detector-n", "--data", str(det64.parent / "images" / "train"),
         "--out", str(tmp_path / "o"), "--ratio", "0.9", "--round-to", "1", "--iters", "1"]
    )  # fmt: skip
    assert code == 2, out
    assert "head" in out and "Traceback" not in out
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("source", "data_kind", "needle"),
    [
        ("no-such-model", "images", "no-such-model"),
        ("detector-n", "empty", "no usable images"),
        ("detector-n", "missing", "does not exist"),
        ("detector-n", "few", "too few"),
    ],
)
def test_bad_source_or_data_exit_2(
    tmp_path: Path, det64: Path, source: str, data_kind: str, needle: str
) -> None:
    images = det64.parent / "images" / "train"
    data = {"images": images, "empty": tmp_path / "empty", "missing": tmp_path / "nope"}.get(
        data_kind, tmp_path / "few"
    )
    if data_kind == "empty":
        data.mkdir()
    if data_kind == "few":
        data.mkdir()
        for p in sorted(images.iterdir())[:3]:
            (data / p.name).write_bytes(p.read_bytes())
    code, out = _run(
        ["prune", source, "--data", str(data), "--out", str(tmp_path / "o"), "--iters", "1"]
    )
    assert code == 2, out
    assert needle in out and "Traceback" not in out


@pytest.mark.slow
def test_prune_command_end_to_end(tmp_path: Path, det256: Path) -> None:
    out = tmp_path / "pruned"
    code, text = _run(
        ["prune", "detector-n", "--data", str(det256.parent / "images" / "train"),
         "--out", str(out), "--ratio", "0.3", "--steps", "1", "--iters", "3",
         "--eval-data", str(det256), "--json"]
    )  # fmt: skip
    assert code == 0, text
    rep = json.loads(text[text.index("{") :])
    names = [r["name"] for r in rep["rows"]]
    assert names == ["source", "step 1"]
    src, step = rep["rows"]
    assert step["params"] < src["params"] and step["macs"] < src["macs"]
    assert step["p50_ms"] > 0 and step["value"] is not None and "selected" in step["note"]
    b = Bundle.load(out)
    assert {a.id for a in b.manifest.artifacts} >= {"torch-fp32", "onnx-fp32"}
    assert b.manifest.history[-1].action == "prune"
    assert b.artifact("onnx-fp32").latest("parity").passed  # type: ignore[union-attr]
    assert not (tmp_path / "pruned.work").exists()


def test_a_pruned_bundle_is_a_source_whose_new_checkpoints_still_load(
    tmp_path: Path, det256: Path
) -> None:
    """`cvdeploy qat pruned/` (or a second prune) writes the source's checkpoint again: it must
    keep saying the layers are narrower than the builder makes them, or it does not load."""
    from cvdeploy.compress.sources import resolve_source

    model = _pruned_detector(0.4)
    spec = zoo_spec("detect", ("circle", "square", "triangle", "star", "cross", "ring"), (256, 256))
    samples = sorted((det256.parent / "images" / "val").iterdir())[:2]
    write_torch_bundle(
        model, out=tmp_path / "pruned", name="p", spec=spec, builder="pruned:zoo:detector-n",
        samples=samples, tool="prune", options={}, pruned=True,
    )  # fmt: skip
    src = resolve_source(str(tmp_path / "pruned"))
    assert src.pruned and src.builder == "pruned:zoo:detector-n"
    unpruned = resolve_source("detector-n")
    assert not unpruned.pruned
    again = write_torch_bundle(
        src.module, out=tmp_path / "again", name="p", spec=src.spec, builder=src.builder,
        samples=samples, tool="qat-source", options={}, pruned=src.pruned,
    )  # fmt: skip
    reloaded, _ = load_checkpoint(again.model_file("torch-fp32"))
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), model(x))
