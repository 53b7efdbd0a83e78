"""`cvdeploy deploy`: one command from a model file to a measured deployment, whose printed
serve command and curl line work as printed."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from cvdeploy.bundle import Bundle
from cvdeploy.cli.main import app
from tests.serve.test_uvicorn import _free_port, _wait_ready

FAST = ["--threads", "1", "--iters", "4", "--formats", "onnx", "--precisions", "fp32"]


def _serve_and_curl(out: str, cwd: Path, model: str, tmp_path: Path) -> dict[str, object]:
    """Start the printed serve command (as this interpreter's module) and run the curl line."""
    lines = [ln.strip() for ln in out.splitlines()]
    serve = [ln for ln in lines if " serve " in ln and not ln.startswith("serve it")]
    curl = [ln for ln in lines if ln.startswith("curl ")]
    assert len(serve) == 1 and len(curl) == 1, out
    argv = shlex.split(serve[0])
    assert argv[1] == "serve" and model in curl[0]
    log = tmp_path / "server.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cvdeploy.cli.main", *argv[1:]], stdout=f, stderr=f, cwd=cwd
        )
    try:
        port = int(argv[argv.index("--port") + 1])
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            _wait_ready(client, proc, log)
        res = subprocess.run(
            shlex.split(curl[0]), capture_output=True, timeout=60, check=True, cwd=cwd
        )
        answer: dict[str, object] = json.loads(res.stdout)
        return answer
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@pytest.mark.slow
def test_deploy_the_zoo_detector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    from cvdeploy.data.synthetic import make_detection_dataset

    data = make_detection_dataset(tmp_path / "data", n_train=0, n_val=12, seed=7)
    monkeypatch.chdir(tmp_path)
    port = _free_port()
    res = CliRunner().invoke(
        app,
        ["deploy", "detector-n", "--data", str(data), "--out", "dep", "--port", str(port), *FAST],
    )
    assert res.exit_code == 0, res.output
    b = Bundle.load(tmp_path / "dep" / "bundle")
    assert b.manifest.recommended is not None and b.manifest.recommended.artifact == "onnx-fp32"
    report = (tmp_path / "dep" / "report.html").read_text()
    assert "onnx-fp32" in report and "Latency (cvdeploy bench)" in report
    assert "onnx-fp32*" in res.stdout and "report:" in res.stderr
    assert res.stdout.strip().splitlines()[-1].strip().startswith("curl ")  # the last line
    answer = _serve_and_curl(res.stdout, tmp_path, "detector-n", tmp_path)
    assert answer["model"] == "detector-n"


@pytest.mark.slow
@pytest.mark.realworld
def test_deploy_yolox_nano(
    realworld: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real FP32 YOLOX-Nano file (no metadata: its preset is given) on coco8."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    monkeypatch.chdir(tmp_path)
    port = _free_port()
    model = realworld / "models" / "yolox_nano.onnx"
    data = realworld / "datasets" / "coco8" / "coco8.yaml"
    res = CliRunner().invoke(app, ["deploy", str(model), "--data", str(data), "--out", "y"])
    assert res.exit_code == 2 and "--preset" in res.output  # a clear question, nothing made
    args = ["deploy", str(model), "--data", str(data), "--out", "y", "--preset", "yolox"]
    res = CliRunner().invoke(app, [*args, "--port", str(port), "--overwrite", *FAST])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "y" / "report.html").is_file()
    answer = _serve_and_curl(res.stdout, tmp_path, "y", tmp_path)
    assert answer["model"] == "y"


def test_deploy_refuses_bad_input_cleanly(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app, ["deploy", "no-such-model", "--data", str(tmp_path / "nope.yaml"), "--json"]
    )
    assert res.exit_code == 2
    assert json.loads(res.stdout)["error"]["message"].startswith("--data")
    data = tmp_path / "imgs"
    data.mkdir()
    res = CliRunner().invoke(
        app, ["deploy", "no-such-model", "--data", str(data), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "Traceback" not in res.output
