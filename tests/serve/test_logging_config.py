"""Sampled request logging (rotation, export), the config, and `cvdeploy serve` input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cvdeploy.cli.main import app
from cvdeploy.errors import InputError, UsageError
from cvdeploy.serve.config import ServeConfig, load_config
from cvdeploy.serve.logging_store import RequestLog, export_logs, read_entries
from tests.serve.conftest import serving


def test_request_log_rotation_and_export(tmp_path: Path, jpeg: bytes) -> None:
    log = RequestLog(tmp_path / "log", sample_rate=1.0, max_bytes=len(jpeg) * 5, seed=0)
    ids = [
        log.write(
            model="m",
            version="1",
            image=jpeg,
            size=(80, 48),
            outputs={"i": i},
            timings={"total": 1.0},
        )
        for i in range(12)
    ]
    entries = log.entries()
    assert 0 < len(entries) <= 5  # rotated: the cap holds
    assert entries[0]["id"] == ids[-1] and entries[0]["outputs"] == {"i": 11}
    files = list((tmp_path / "log" / "images").iterdir())
    assert len(files) == len(entries) and sum(f.stat().st_size for f in files) <= len(jpeg) * 5
    summary = export_logs(tmp_path / "log", tmp_path / "out", limit=2)
    assert summary["images"] == 2
    preds = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [p["predictions"] for p in preds] == [{"i": 11}, {"i": 10}]
    assert all((tmp_path / "out" / p["image"]).read_bytes() == jpeg for p in preds)
    with pytest.raises(InputError, match="not empty"):
        export_logs(tmp_path / "log", tmp_path / "out")
    with pytest.raises(InputError, match="not a request log"):
        read_entries(tmp_path)


def test_sampling_rate(tmp_path: Path) -> None:
    log = RequestLog(tmp_path, sample_rate=0.25, max_bytes=10_000, seed=1)
    hits = sum(log.sample() for _ in range(4000))
    assert 800 < hits < 1200
    assert not RequestLog(tmp_path / "z", sample_rate=0.0, max_bytes=10_000).sample()


def test_server_samples_requests_and_logs_export_cli(
    tmp_path: Path, tiny_bundle: Path, jpeg: bytes
) -> None:
    with serving(tiny_bundle, sample_rate=1.0, log_dir=tmp_path / "log") as c:
        for _ in range(3):
            assert (
                c.post(
                    "/v1/models/tiny/predict", content=jpeg, headers={"content-type": "image/jpeg"}
                ).status_code
                == 200
            )
        assert c.get("/v1/stats").json()["sampling"] == {"rate": 1.0, "enabled": True}
    entries = read_entries(tmp_path / "log")  # background writes finished at shutdown
    assert len(entries) == 3 and entries[0]["model"] == "tiny"
    assert entries[0]["outputs"]["detections"] and "inference" in entries[0]["timings"]
    r = CliRunner().invoke(
        app, ["logs", "export", str(tmp_path / "log"), "--out", str(tmp_path / "x"), "--json"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["images"] == 3
    assert len(list((tmp_path / "x" / "images").iterdir())) == 3
    r = CliRunner().invoke(app, ["logs", "export", str(tmp_path), "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "not a request log" in r.output


def test_config(tmp_path: Path, tiny_bundle: Path) -> None:
    (tmp_path / "s.yaml").write_text("max_batch: 4\nqueue_size: 10\n")
    cfg = load_config(tmp_path / "s.yaml", source=tiny_bundle, max_batch=2, workers=None)
    assert (cfg.max_batch, cfg.queue_size, cfg.workers) == (2, 10, None)
    with pytest.raises(Exception):  # noqa: B017 - frozen pydantic model
        cfg.max_batch = 3  # type: ignore[misc]
    (tmp_path / "bad.yaml").write_text("max_bacth: 4\n")
    with pytest.raises(UsageError, match="max_bacth"):
        load_config(tmp_path / "bad.yaml", source=tiny_bundle)
    with pytest.raises(UsageError, match="log_dir"):
        load_config(None, source=tiny_bundle, sample_rate=0.5)
    with pytest.raises(UsageError, match="max_batch"):
        load_config(None, source=tiny_bundle, max_batch=0)
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", source=tiny_bundle)
    assert ServeConfig(source=tiny_bundle).artifact == "auto"


def test_serve_cli_bad_input_exits_2(tmp_path: Path, tiny_bundle: Path) -> None:
    run = CliRunner().invoke
    r = run(app, ["serve", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = run(app, ["serve", str(tiny_bundle), "--artifact", "tflite-int8"])
    assert r.exit_code == 2 and "tflite-int8" in r.output
    r = run(app, ["serve", str(tiny_bundle), "--max-batch", "0"])
    assert r.exit_code == 2 and "max_batch" in r.output
    assert "Traceback" not in r.output
    assert run(app, ["serve", "--help"]).exit_code == 0


def test_auto_workers(tmp_path: Path, tiny_bundle: Path) -> None:
    import os

    from cvdeploy.bundle import Bundle
    from cvdeploy.export.importer import ImportOverrides, import_model
    from cvdeploy.serve.models import auto_workers, default_predictors
    from tests.serve.conftest import NAMES
    from tests.tiny_models import tiny_detector_onnx

    n = max(1, min(4, len(os.sched_getaffinity(0))))
    dynamic = Bundle.load(tiny_bundle)  # one single-threaded runner per core (no spinning)
    assert auto_workers(dynamic, None, None) == (n, 1 if n > 1 else None)
    assert auto_workers(dynamic, None, 2) == (1, 2)
    fixed, _ = import_model(
        tiny_detector_onnx(tmp_path / "f.onnx", batch=1),
        out=tmp_path / "fixed",
        overrides=ImportOverrides(decoder="yolov8", names=NAMES),
    )
    assert auto_workers(fixed, None, None) == (n, 1 if n > 1 else None)
    assert auto_workers(fixed, None, 2) == (1, 2)  # explicit threads: one runner
    preds = default_predictors(fixed, ServeConfig(source=fixed.path))
    assert len(preds) == n and all(p.batch == 1 for p in preds)
    assert len(default_predictors(fixed, ServeConfig(source=fixed.path, workers=3))) == 3
