"""The demo's last words: a serve command and a curl line, and both work as printed."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cvdeploy.workflows.demo import serve_instructions
from tests.serve.conftest import make_bundle
from tests.serve.test_uvicorn import _free_port, _wait_ready
from tests.tiny_models import write_image


def test_serve_and_curl_lines_work_as_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    tiny_bundle = make_bundle(tmp_path / "serve-bundle")  # the serve tests' tiny bundle
    image = write_image(tmp_path / "val 0.jpg", h=48, w=80)  # a space: quoting matters
    port = _free_port()
    monkeypatch.chdir(tmp_path)
    lines = serve_instructions(tiny_bundle, "tiny", image, port=port)
    serve = [ln.strip() for ln in lines if " serve " in ln]
    curl = [ln.strip() for ln in lines if ln.strip().startswith("curl ")]
    assert len(serve) == 1 and len(curl) == 1, lines
    argv = shlex.split(serve[0])
    assert argv[1:] == ["serve", str(tiny_bundle), "--port", str(port)], argv
    # the printed cvdeploy, run as this interpreter's module (same program, any PATH)
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cvdeploy.cli.main", *argv[1:]], stdout=out, stderr=out
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            _wait_ready(client, proc, log)
        res = subprocess.run(shlex.split(curl[0]), capture_output=True, timeout=60, check=True)
        answer = json.loads(res.stdout)
        assert answer["model"] == "tiny" and answer["results"][0]["width"] == 80, answer
    finally:
        proc.terminate()
        proc.wait(timeout=15)
