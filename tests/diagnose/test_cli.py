"""`cvdeploy doctor`, `cvdeploy eval` recording the drift reference, `cvdeploy logs drift`:
exit codes, --json, --html, and a server's request log fed straight to doctor."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
from typer.testing import CliRunner

from cvdeploy.bundle import Bundle
from cvdeploy.cli.main import app
from tests.diagnose.conftest import colour_images

pytest.importorskip("scipy")


def _run(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(app, args)
    return res.exit_code, res.output


def test_eval_records_the_drift_reference(stack: Path, stack_root: Path) -> None:
    data = str(stack_root / "data" / "data.yaml")
    code, out = _run(["eval", str(stack), "--data", data, "--no-reference", "--json"])
    assert code == 0 and Bundle.load(stack).artifact("onnx-fp32").latest("reference") is None
    code, out = _run(["eval", str(stack), "--data", data, "--json"])
    assert code == 0, out
    assert json.loads(out)["reference"]["images"] == 48
    ref = Bundle.load(stack).artifact("onnx-fp32").latest("reference")
    assert ref is not None and (stack / ref.data.file).is_file()
    assert [h.action for h in Bundle.load(stack).manifest.history][-2:] == ["eval", "reference"]


def test_doctor_exit_codes_json_and_html(stack: Path, stack_root: Path, tmp_path: Path) -> None:
    data = str(stack_root / "data" / "data.yaml")
    html = tmp_path / "report" / "doctor.html"
    code, out = _run(["doctor", str(stack), "--data", data, "--json", "--html", str(html)])
    assert code == 0, out
    rep = json.loads(out)
    assert rep["healthy"] and rep["findings"] == [] and rep["html"] == str(html)
    assert "Controlled dataset" in html.read_text()
    dark = tmp_path / "dark"
    colour_images(dark, 40, seed=5, scale=0.5)
    code, out = _run(
        ["doctor", str(stack), "--data", data, "--production", str(dark), "--only", "drift"]
    )
    assert code == 1, out
    assert "WARNING" in out and "drifted" in out and "fix:" in out


def test_doctor_bad_input_exits_2(stack: Path, stack_root: Path, tmp_path: Path) -> None:
    code, out = _run(["doctor", str(stack)])
    assert code == 2 and "needs images" in out and "Traceback" not in out
    code, out = _run(["doctor", str(stack), "--data", str(tmp_path / "nope.yaml")])
    assert code == 2 and "nope.yaml" in out
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"not a png")
    code, out = _run(["doctor", str(stack), "--production", str(bad), "--only", "drift"])
    assert code == 2 and "x.png" in out, out
    code, out = _run(
        [
            "doctor",
            str(stack),
            "--data",
            str(stack_root / "data" / "data.yaml"),
            "--only",
            "layers",
            "--artifact",
            "onnx-fp32",
        ]
    )
    assert code == 2 and "no float source" in out
    code, out = _run(["doctor", str(stack), "--production", str(bad), "--logs", str(bad)])
    assert code == 2 and "not both" in out


def test_a_request_log_feeds_doctor(stack: Path, stack_root: Path, tmp_path: Path) -> None:
    from cvdeploy.diagnose import record_reference
    from cvdeploy.serve.logging_store import RequestLog

    record_reference(Bundle.load(stack), stack_root / "data" / "data.yaml", progress=False)
    log = RequestLog(tmp_path / "logs", sample_rate=1.0, max_bytes=10**8)
    for p in colour_images(tmp_path / "sent", 30, seed=12, scale=0.5):
        img = cv2.imread(str(p))
        det = {"box": [1.0, 1.0, 9.0, 9.0], "score": 0.8, "class_id": 1, "class_name": "b"}
        log.write(
            model="stack",
            version="1",
            image=p.read_bytes(),
            size=(img.shape[1], img.shape[0]),
            outputs={"image": p.name, "detections": [det]},
            timings={"total": 1.0},
        )
    code, out = _run(["logs", "drift", str(tmp_path / "logs"), str(stack), "--json"])
    assert code == 1, out
    rep = json.loads(out)
    assert rep["verdict"] == "drift" and rep["n_window"] == 30
    code, out = _run(
        ["doctor", str(stack), "--logs", str(tmp_path / "logs"), "--only", "drift", "--json"]
    )
    assert code == 1 and json.loads(out)["inputs"]["logged_requests"] == 30
    code, out = _run(["logs", "drift", str(tmp_path / "empty-log"), str(stack)])
    assert code == 2 and "not a request log" in out
