"""`cvdeploy tune` on the command line: JSON output, exit codes, nothing recorded on failure."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cvdeploy.workflows.tune as tune_mod
from cvdeploy.bundle import Bundle
from cvdeploy.cli.main import app
from cvdeploy.export.importer import ImportOverrides, import_model
from cvdeploy.workflows.tune_report import Accuracy, TuneOptions
from cvdeploy.workflows.tune_space import Settings
from tests.tiny_models import NC, tiny_detector_onnx
from tests.workflows.test_tune import make_dataset


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    src = tiny_detector_onnx(tmp_path / "tiny.onnx")
    b, _ = import_model(
        src,
        out=tmp_path / "b",
        overrides=ImportOverrides(
            decoder="yolov8", names=tuple(f"c{i}" for i in range(NC)), imgsz=(64, 64)
        ),
    )
    return b.path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "ds")


def _run(args: Sequence[str]) -> tuple[int, str, str]:
    res = CliRunner().invoke(app, list(args))
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    return res.exit_code, res.stdout, res.stderr


BASE = ["--formats", "onnx", "--precisions", "fp32", "--threads", "1", "--iters", "2"]


def test_tune_json_records_recommended(bundle: Path, data: Path) -> None:
    code, out, err = _run(["tune", str(bundle), "--data", str(data), *BASE, "--json"])
    assert code == 0, err
    d = json.loads(out)
    assert {"candidates", "recommended", "reference"} <= set(d)
    assert d["reference"]["artifact"] == "onnx-fp32"
    assert all(c["status"] == "ok" for c in d["candidates"])
    rec = d["recommended"]
    assert rec["artifact"] == "onnx-fp32" and rec["options"]["threads"] == 1
    assert Bundle.load(bundle).manifest.recommended == rec
    code, out, _ = _run(["info", str(bundle)])
    assert code == 0 and "recommended" in out


def test_tune_table(bundle: Path, data: Path) -> None:
    code, out, err = _run(["tune", str(bundle), "--data", str(data), *BASE])
    assert code == 0, err
    assert "onnx-fp32*" in out and "threads 1, all, sequential" in out
    assert "recommended: onnx-fp32" in err


def test_no_candidate_keeps_floor_exits_1(
    bundle: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_eval(b: Bundle, aid: str, s: Settings, d: Path, o: TuneOptions) -> Accuracy:
        return Accuracy(0.5, {"map50_95": 0.5}, "fake:val", 4, {})

    monkeypatch.setattr(tune_mod, "eval_accuracy", fake_eval)
    before = (bundle / "bundle.json").read_bytes()
    code, out, err = _run(
        ["tune", str(bundle), "--data", str(data), *BASE, "--min-map", "0.9", "--json"]
    )
    assert code == 1
    assert json.loads(out)["recommended"] is None
    assert "no candidate keeps the accuracy floor" in err and "nothing was recorded" in err
    assert (bundle / "bundle.json").read_bytes() == before


def test_bad_usage_exits_2(bundle: Path, data: Path, tmp_path: Path) -> None:
    code, _, err = _run(
        ["tune", str(bundle), "--data", str(data), "--min-map", "0.3", "--max-drop", "0.01"]
    )
    assert code == 2 and "exclude each other" in err
    code, _, err = _run(["tune", str(bundle), "--data", str(tmp_path / "missing.yaml")])
    assert code == 2 and "does not exist" in err
    code, _, err = _run(["tune", str(bundle), "--data", str(data), "--formats", "nope"])
    assert code == 2 and "unknown format" in err
    code, _, err = _run(["tune", str(bundle), "--data", str(data), "--target", "speed"])
    assert code == 2


def test_library_output_does_not_corrupt_json(
    bundle: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Third-party prints during tuning (NNCF logs to stdout) never reach stdout under --json:
    with --verbose they go to stderr, by default to a log file that the command names."""
    real = tune_mod.eval_accuracy

    def noisy(b: Bundle, aid: str, s: Settings, d: Path, o: TuneOptions) -> Accuracy:
        print("INFO:nncf:something on stdout")
        return real(b, aid, s, d, o)

    monkeypatch.setattr(tune_mod, "eval_accuracy", noisy)
    code, out, err = _run(["tune", str(bundle), "--data", str(data), *BASE, "--json", "--verbose"])
    assert code == 0, err
    assert json.loads(out)["recommended"]["artifact"] == "onnx-fp32"
    assert "INFO:nncf" in err
    monkeypatch.setenv("XDG_CACHE_HOME", str(bundle.parent / "cache"))
    code, out, err = _run(["tune", str(bundle), "--data", str(data), *BASE, "--json"])
    assert code == 0, err
    assert json.loads(out)["recommended"]["artifact"] == "onnx-fp32"
    assert "INFO:nncf" not in err and "third-party output" in err
    (log,) = (bundle.parent / "cache" / "cvdeploy" / "logs").glob("tune-*.log")
    assert "INFO:nncf:something on stdout" in log.read_text()


def test_failures_are_summarised_below_the_table_and_strict_exits_1(
    bundle: Path, data: Path
) -> None:
    """An INT8 candidate that cannot be made (4 calibration images) is one line below the
    table with its reason and a fix in tune's terms; --strict makes it exit 1."""
    args = ["tune", str(bundle), "--data", str(data), "--formats", "onnx"]
    args += ["--precisions", "fp32,int8", "--threads", "1", "--iters", "2"]
    code, out, err = _run(args)
    assert code == 0, err
    text = " ".join(err.split())
    assert "1 of 2 candidates could not be made or measured:" in text
    assert text.count("onnx-int8: could not be made (quantize)") == 1  # each reason once
    assert "fix: calibrate on 100 images or more (--data or --calib)" in text
    assert "or pass --force to accept fewer" in text
    assert "(hint:" not in text  # quantize's own hints (its flags) are not repeated by tune
    assert "recommended: onnx-fp32" in text
    code, out, err = _run([*args, "--strict", "--json"])
    assert code == 1
    obj = json.loads(out)  # one object, with the error in it
    assert obj["recommended"]["artifact"] == "onnx-fp32"
    assert obj["error"]["exit_code"] == 1 and "--strict" in obj["error"]["message"]
    assert obj["failures"][0]["artifacts"] == ["onnx-int8"]


def test_table_fits_80_columns_and_wide_adds_columns(bundle: Path, data: Path) -> None:
    from rich.console import Console

    from cvdeploy.cli.tune_cmds import tune_table
    from cvdeploy.workflows import TuneOptions as Opts
    from cvdeploy.workflows import tune_bundle

    opts = Opts(formats=("onnx",), precisions=("fp32",), threads=(1,), iters=2, progress=False)
    rep = tune_bundle(bundle, data, options=opts)
    con = Console(width=80, record=True)
    con.print(tune_table(rep))
    text = con.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "onnx-fp32*" in text  # the recommended marker is not cut off
    wide = Console(width=200, record=True)
    wide.print(tune_table(rep, wide=True))
    assert "img/s" in wide.export_text() and "img/s" not in text


def test_quantize_failure_fix_names_the_quantize_command_for_the_format() -> None:
    """A quantize failure other than too few images points at `cvdeploy quantize` with the
    backend of that format (and NNCF for ONNX Runtime); too few images asks for more."""
    from cvdeploy.errors import CheckFailed, UsageError
    from cvdeploy.workflows.tune import _fix_for
    from cvdeploy.workflows.tune_space import ArtifactPlan

    onnx = ArtifactPlan(format="onnx", precision="int8", make="quantize")
    fix = _fix_for(onnx, RuntimeError("ranges collapsed"))
    assert "cvdeploy quantize BUNDLE --data DATA --backend onnxruntime --engine nncf" in fix
    ov = ArtifactPlan(format="openvino", precision="int8", make="quantize")
    assert "--backend openvino`" in _fix_for(ov, RuntimeError("x"))
    few = _fix_for(onnx, UsageError("only 4 calibration image(s) from d"))
    assert few.startswith("calibrate on 100 images or more")
    # a gate failure whose text mentions calibration (warnings, hints) is not "too few images"
    gate = CheckFailed(
        "onnx-int8 failed the integrity gate against onnx-fp32: cosine 0.93 < 0.98",
        hint="calibrate on more representative calibration images",
    )
    assert "cvdeploy quantize BUNDLE" in _fix_for(onnx, gate)
