"""The runtime path (import, predict, eval, info) works without torch installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx

from tests.tiny_models import tiny_detector_onnx, write_image

SCRIPT = r"""
import sys
sys.modules["torch"] = None  # any `import torch` now fails, as in a slim container
from typer.testing import CliRunner
from cvdeploy.cli.main import app
from cvdeploy.runtime import RUNTIMES

assert not RUNTIMES.availability("torch").available
root = sys.argv[1]
r = CliRunner()
for args in (["import", f"{root}/m.onnx", "--out", f"{root}/b"],
             ["predict", f"{root}/b", f"{root}/ds/images/val", "--json"],
             ["eval", f"{root}/b", "--data", f"{root}/ds/data.yaml", "--json"],
             ["info", f"{root}/b"], ["runtimes"]):
    res = r.invoke(app, args)
    assert res.exit_code == 0, (args, res.output, res.exception)
assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
print("ok")
"""


def test_runtime_path_without_torch(tmp_path: Path) -> None:
    m = onnx.load(str(tiny_detector_onnx(tmp_path / "m.onnx", batch=1)))
    for k, v in {
        "author": "Ultralytics",
        "task": "detect",
        "imgsz": "[64, 64]",
        "names": "{0: 'a', 1: 'b', 2: 'c'}",
    }.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(m, str(tmp_path / "m.onnx"))
    for i in range(3):
        write_image(tmp_path / "ds" / "images" / "val" / f"{i}.jpg", seed=i)
    (tmp_path / "ds" / "labels" / "val").mkdir(parents=True)
    (tmp_path / "ds" / "labels" / "val" / "0.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    (tmp_path / "ds" / "data.yaml").write_text("path: .\nval: images/val\nnames: [a, b, c]\n")
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
