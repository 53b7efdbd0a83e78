"""`cvdeploy zoo train` ends with the eval stage on a bundle; `zoo list` shows the weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cvdeploy.bundle import Bundle
from cvdeploy.cli.main import app
from cvdeploy.data.synthetic import make_detection_dataset


@pytest.mark.slow
def test_zoo_train_then_eval(tmp_path: Path) -> None:
    data = make_detection_dataset(tmp_path / "ds", n_train=16, n_val=8, imgsz=64, seed=3)
    args = [
        "zoo",
        "train",
        "--data",
        str(data),
        "--epochs",
        "1",
        "--imgsz",
        "64",
        "--batch",
        "8",
        "--threads",
        "1",
        "--out",
        str(tmp_path / "run"),
        "--json",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # stdout is exactly one JSON object
    assert 0.0 <= out["metrics"]["map50_95"] <= 1.0
    b = Bundle.load(out["bundle"])
    assert b.artifact("torch-fp32").latest("metrics", "train-val") is not None


def test_zoo_train_needs_a_budget(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["zoo", "train", "--data", str(tmp_path)])
    assert res.exit_code == 2 and "--epochs" in res.output


def test_zoo_list_json() -> None:
    res = CliRunner().invoke(app, ["zoo", "list", "--json"])
    assert res.exit_code == 0
    entries = {e["name"]: e for e in json.loads(res.output)}
    assert entries["detector-n"]["task"] == "detect"
    assert "mAP50-95" in entries["detector-n"]["metrics"]
