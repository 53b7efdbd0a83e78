"""Environment fingerprint comparison and `cvdeploy env`."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from cvdeploy.bundle import Bundle, Check
from cvdeploy.cli.main import app
from cvdeploy.environment import compare, fingerprint, recorded_environment
from cvdeploy.export.importer import import_model
from tests.export.test_targets import _ultra_onnx


def _fp() -> dict[str, Any]:
    return {
        "python": "3.11.7",
        "implementation": "cpython",
        "os": "Linux 6.1",
        "cvdeploy": "0.1.0",
        "packages": {"numpy": "2.4.6", "openvino": "2026.4.1", "onnx2tf": "1.29.24"},
        "cpu": {"model": "Xeon", "arch": "x86_64", "logical_cores": 8, "flags": ["avx2", "fma"]},
        "gpus": [],
    }


def test_same_environment_has_no_differences() -> None:
    assert compare(_fp(), _fp()) == []
    cur = fingerprint()
    assert compare(cur, copy.deepcopy(cur)) == []


def test_differences_that_change_numerics_or_speed() -> None:
    rec, cur = _fp(), _fp()
    cur["packages"]["openvino"] = "2025.1.0"
    cur["packages"]["onnx2tf"] = "1.30.0"
    cur["cpu"]["flags"] = ["avx2", "fma", "avx512_vnni", "amx_int8"]
    cur["cpu"]["model"] = "Sapphire Rapids"
    cur["python"] = "3.12.1"
    cur["gpus"] = [{"name": "NVIDIA L4", "driver": "550.1", "memory": "23034 MiB"}]
    diffs = {d.field: d for d in compare(cur, rec)}
    assert set(diffs) == {
        "packages.openvino",
        "packages.onnx2tf",
        "cpu.flags",
        "cpu.model",
        "python",
        "gpus",
    }
    assert diffs["packages.openvino"].affects == "numerics and speed"
    assert diffs["packages.onnx2tf"].affects == "re-export"
    assert diffs["cpu.flags"].affects == "numerics and speed"
    assert "amx_int8" in diffs["cpu.flags"].current and "avx512_vnni" in diffs["cpu.flags"].note
    assert diffs["cpu.model"].affects == "speed"
    assert diffs["gpus"].recorded == "none" and "NVIDIA L4" in diffs["gpus"].current
    order = [d.affects for d in compare(cur, rec)]
    assert order == sorted(order, key=["numerics and speed", "speed", "re-export"].index)


def test_runtime_package_missing_now_and_partial_records() -> None:
    rec, cur = _fp(), _fp()
    del cur["packages"]["openvino"]
    (d,) = compare(cur, rec)
    assert d.field == "packages.openvino" and d.current == "absent"
    assert compare(cur, {"python": "3.11.7"}) == []  # only what was recorded is compared


def test_latency_conditions_read_as_a_fingerprint() -> None:
    data = {
        "conditions": {
            "hardware": {"cpu": "Xeon", "logical_cores": 8, "cpu_flags": ["avx2"], "gpus": []},
            "versions": {"python": "3.11.7", "cvdeploy": "0.1.0", "openvino": "2026.4.1"},
        }
    }
    env = recorded_environment(data)
    assert env is not None
    assert env["packages"] == {"openvino": "2026.4.1"} and env["cpu"]["flags"] == ["avx2"]
    diffs = {d.field for d in compare(_fp(), env)}
    assert diffs == {"cpu.flags"}  # fma is new here
    assert recorded_environment({"metrics": {}}) is None


def test_env_cli_compares_a_bundle(tmp_path: Path) -> None:
    import_model(_ultra_onnx(tmp_path / "m.onnx"), out=tmp_path / "b")
    b = Bundle.load(tmp_path / "b")
    old = _fp()
    old["packages"]["onnxruntime"] = "1.0.0"
    with b.edit(action="test") as edit:
        edit.add_check("onnx-fp32", Check(kind="metrics", name="x", data={"environment": old}))
    res = CliRunner().invoke(app, ["env", "--compare", str(tmp_path / "b"), "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.output)
    assert obj["current"]["python"]
    made, measured = obj["comparisons"]
    assert made["record"] == "made" and made["differences"] == []
    assert measured["record"] == "metrics x"
    assert "packages.onnxruntime" in {d["field"] for d in measured["differences"]}
    res = CliRunner().invoke(app, ["env", "--compare", str(tmp_path / "b")])
    assert res.exit_code == 0 and "packages.onnxruntime" in res.output
    res = CliRunner().invoke(app, ["env", "--compare", str(tmp_path / "none")])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = CliRunner().invoke(app, ["env", "--help"])
    assert res.exit_code == 0 and "--compare" in res.output
