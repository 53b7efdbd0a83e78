"""The demo runs end to end on the shipped weights and its report shows equal mAPs."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cvdeploy.bundle import Bundle
from cvdeploy.cli.main import app
from cvdeploy.export import EXPORTERS
from tests.cpu import native

pytestmark = pytest.mark.slow


def _announced() -> set[str]:
    """Every artifact the demo announces on this machine."""
    ids = {"torch-fp32", "onnx-fp32"}
    if EXPORTERS.availability("openvino").available:
        ids |= {"openvino-fp32", "openvino-int8"}
        if "bf16" in native():
            ids.add("openvino-bf16")
    if EXPORTERS.availability("tflite").available:
        ids.add("tflite-fp32")
    return ids


def test_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--val-images", "40"])
    assert res.exit_code == 0, res.output
    report = out / "report.html"
    assert str(report.resolve()) in res.output.replace("\n", "")
    b = Bundle.load(out / "bundle")
    maps = {
        a.id: a.latest("metrics", "synthetic-val").data["metrics"]["map50_95"]  # type: ignore[union-attr]
        for a in b.manifest.artifacts
    }
    assert set(maps) == _announced()  # every announced artifact, with its mAP
    for aid in maps:
        if aid.endswith("-fp32"):  # FP32 is FP32 on every CPU
            assert maps[aid] == pytest.approx(maps["torch-fp32"], abs=0.002), aid
    assert maps["torch-fp32"] > 0.6  # the shipped detector (0.75 on its own val split)
    for aid in set(maps) - {"torch-fp32"}:
        assert b.artifact(aid).latest("parity").passed, aid  # type: ignore[union-attr]
    text = report.read_text()
    for aid in maps:
        assert aid in text and f"{maps[aid]:.4f}" in text
    assert 'class="refused"' not in text and "announced artifact(s) refused" not in text
    assert len(list((out / "predictions").glob("*.jpg"))) == 4
    # a second run replaces the first demo
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--val-images", "40"])
    assert res.exit_code == 0, res.output


def test_demo_shows_a_refusal_and_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An announced artifact refused by the gate is a red row, and the demo exits 1 naming it."""
    import cvdeploy.export.gate as gate

    real = gate.check_parity

    def openvino_diverges(source, candidate, images, **kw):  # type: ignore[no-untyped-def]
        res = real(source, candidate, images, **kw)
        if candidate.runner.format == "openvino":
            res.passed, res.failures = False, ["output 'output0' diverged (planted)"]
        return res

    monkeypatch.setattr(gate, "check_parity", openvino_diverges)
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--val-images", "12"])
    assert res.exit_code == 1, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("demo failed:") and "openvino-fp32" in last and "openvino-int8" in last
    assert "REFUSED" in res.output and "diverged (planted)" in res.output
    text = (out / "report.html").read_text()
    assert 'class="refused"' in text and "diverged (planted)" in text
    assert "announced artifact(s) refused" in text


def test_demo_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "not a cvdeploy demo folder" in res.output
    assert (tmp_path / "mine.txt").read_text() == "keep"
