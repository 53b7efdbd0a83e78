"""The demo runs end to end on the shipped weights and its report shows equal mAPs."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cvdeploy.bundle import Bundle
from cvdeploy.cli.main import app

pytestmark = pytest.mark.slow


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
    assert {"torch-fp32", "onnx-fp32"} <= set(maps)
    assert maps["onnx-fp32"] == pytest.approx(maps["torch-fp32"], abs=0.002)
    assert maps["torch-fp32"] > 0.6  # the shipped detector (0.75 on its own val split)
    assert b.artifact("onnx-fp32").latest("parity").passed  # type: ignore[union-attr]
    text = report.read_text()
    assert "onnx-fp32" in text and f"{maps['onnx-fp32']:.4f}" in text
    assert len(list((out / "predictions").glob("*.jpg"))) == 4
    # a second run replaces the first demo
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--val-images", "40"])
    assert res.exit_code == 0, res.output


def test_demo_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "not a cvdeploy demo folder" in res.output
    assert (tmp_path / "mine.txt").read_text() == "keep"
