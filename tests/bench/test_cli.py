"""`cvdeploy bench` on the command line."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cvdeploy.bundle import Bundle
from cvdeploy.cli.main import app


def test_bench_json_and_html(tiny_bundle: Bundle, images: list[Path], tmp_path: Path) -> None:
    html = tmp_path / "out" / "bench.html"
    res = CliRunner().invoke(
        app,
        [
            "bench",
            str(tiny_bundle.path),
            "--images",
            str(images[0].parent),
            "--artifact",
            "all",
            "--batch",
            "1,2",
            "--iters",
            "3",
            "--warmup",
            "1",
            "--concurrency",
            "1,2",
            "--json",
            "--html",
            str(html),
        ],
    )
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert {r["concurrency"] for r in d["results"]} == {1, 2}
    assert any(s["artifact"] == "onnx-b1" and s["batch"] == 2 for s in d["skipped"])
    assert html.read_text().startswith("<!doctype html>")
    info = CliRunner().invoke(app, ["info", str(tiny_bundle.path)])
    assert info.exit_code == 0 and " ms" in info.stdout


def test_bench_table(tiny_bundle: Bundle, images: list[Path]) -> None:
    res = CliRunner().invoke(
        app,
        [
            "bench",
            str(tiny_bundle.path),
            "--images",
            str(images[0].parent),
            "--iters",
            "2",
            "--artifact",
            "onnx-fp32",
            "--profile",
            "--no-record",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "onnx-fp32" in res.stdout and "operators" in res.stdout


def test_bench_bad_input_exits_2(tiny_bundle: Bundle, images: list[Path]) -> None:
    base = ["bench", str(tiny_bundle.path), "--images", str(images[0].parent)]
    cases = [
        ["--iters", "2", "--seconds", "1"],
        ["--artifact", "onnx-b1", "--imgsz", "96"],
        ["--artifact", "nope"],
        ["--batch", "x"],
    ]
    for extra in cases:
        res = CliRunner().invoke(app, base + extra)
        assert res.exit_code == 2, (extra, res.output)
        assert "Traceback" not in res.output
    res = CliRunner().invoke(app, ["bench", str(tiny_bundle.path / "missing")])
    assert res.exit_code == 2
