"""Bad input: a clear message and exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from cvdeploy.cli.main import app
from tests.tiny_models import tiny_detector_onnx, write_image


def _ultra(path: Path) -> Path:
    m = onnx.load(str(tiny_detector_onnx(path, batch=1)))
    for k, v in {
        "author": "Ultralytics",
        "task": "detect",
        "stride": "32",
        "imgsz": "[64, 64]",
        "names": "{0: 'a', 1: 'b', 2: 'c'}",
    }.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(m, str(path))
    return path


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    res = CliRunner().invoke(
        app, ["import", str(_ultra(tmp_path / "m.onnx")), "--out", str(tmp_path / "b")]
    )
    assert res.exit_code == 0, res.output
    return tmp_path / "b"


def _yolo(root: Path, label: str) -> Path:
    write_image(root / "images" / "val" / "x.jpg")
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "val" / "x.txt").write_text(label)
    (root / "data.yaml").write_text(
        "path: .\ntrain: images/val\nval: images/val\nnames: [a, b, c]\n"
    )
    return root / "data.yaml"


def _run(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(app, args)
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.output


def test_missing_and_corrupted_model(tmp_path: Path) -> None:
    code, out = _run(["import", str(tmp_path / "none.onnx"), "--out", str(tmp_path / "b")])
    assert code == 2 and "does not exist" in out
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x01\x02 not a model" * 10)
    code, out = _run(["import", str(bad), "--out", str(tmp_path / "b")])
    assert code == 2 and "bad.onnx" in out


def test_image_that_does_not_decode(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    code, out = _run(["predict", str(bundle), str(tmp_path / "broken.jpg")])
    assert code == 2 and "broken.jpg" in out


def test_label_outside_names_and_empty_dataset(bundle: Path, tmp_path: Path) -> None:
    data = _yolo(tmp_path / "ds", "7 0.5 0.5 0.2 0.2\n")
    code, out = _run(["eval", str(bundle), "--data", str(data)])
    assert code == 2 and "x.txt" in out
    (tmp_path / "empty" / "images" / "val").mkdir(parents=True)
    (tmp_path / "empty" / "data.yaml").write_text("path: .\nval: images/val\nnames: [a, b, c]\n")
    code, out = _run(["eval", str(bundle), "--data", str(tmp_path / "empty" / "data.yaml")])
    assert code == 2


def test_altered_bundle_file(bundle: Path) -> None:
    f = bundle / "onnx-fp32" / "model.onnx"
    f.write_bytes(f.read_bytes() + b"\x00")
    code, out = _run(["info", str(bundle)])
    assert code == 2 and "onnx-fp32/model.onnx was altered" in out


def test_eval_records_and_info_json(bundle: Path, tmp_path: Path) -> None:
    data = _yolo(tmp_path / "ds", "1 0.5 0.5 0.2 0.2\n")
    code, out = _run(["eval", str(bundle), "--data", str(data), "--json"])
    assert code == 0, out
    code, out = _run(["info", str(bundle), "--json"])
    assert code == 0 and '"metrics"' in out and '"history"' in out


def test_real_process_has_no_traceback(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "cvdeploy.cli.main", "info", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and "does not exist" in res.stderr


def test_help_lists_commands() -> None:
    code, out = _run(["--help"])
    assert code == 0
    for cmd in ("import", "info", "export", "predict", "eval"):
        assert cmd in out
