"""The newcomer's friction points, each with a test: names that match, output that fits the
command, hints that name the command's own flags."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cvdeploy.bundle import Bundle
from cvdeploy.cli.main import app
from tests.serve.conftest import make_bundle
from tests.serve.test_uvicorn import cli_server
from tests.tiny_models import tiny_detector_onnx, write_image


def _invoke(args: list[str]) -> tuple[int, str, str]:
    res = CliRunner().invoke(app, args)
    assert "Traceback" not in res.output, res.output
    return res.exit_code, res.stdout, res.stderr


@pytest.fixture
def imported(tmp_path: Path) -> Path:
    src = tiny_detector_onnx(tmp_path / "tiny.onnx", batch=1)
    imgs = tmp_path / "imgs"
    for i in range(3):
        write_image(imgs / f"{i}.jpg", seed=i)
    code, _, err = _invoke(
        ["import", str(src), "--out", str(tmp_path / "my-detector"), "--decoder", "yolov8",
         "--names", str(_names(tmp_path)), "--imgsz", "64", "--data", str(imgs)]
    )  # fmt: skip
    assert code == 0, err
    return tmp_path / "my-detector"


def _names(tmp: Path) -> Path:
    p = tmp / "names.txt"
    p.write_text("a\nb\nc\n")
    return p


def test_import_names_the_bundle_after_its_folder(imported: Path) -> None:
    assert Bundle.load(imported).name == "my-detector"
    assert len(Bundle.load(imported).manifest.samples) == 3  # --data stores samples
    code, out, _ = _invoke(["info", str(imported)])
    assert code == 0 and out.splitlines()[0].startswith("my-detector")


def test_serve_prints_the_model_urls_and_a_curl_line_that_works(
    tmp_path: Path,
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    bundle = make_bundle(tmp_path / "b")
    with cli_server(bundle, tmp_path) as client:
        log = (tmp_path / "server.log").read_text()
        port = client.base_url.port
    # read while the server still runs: the curl line, with an image
    url = f"http://127.0.0.1:{port}/v1/models/tiny/predict"
    assert f"model 'tiny' (artifact onnx-fp32): POST {url}" in log, log
    (curl,) = [ln.split("try: ", 1)[1] for ln in log.splitlines() if "try: curl" in ln]
    assert curl == f"curl -s -F image=@IMAGE.jpg {url}"


def test_serve_curl_line_runs_as_printed(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    bundle = make_bundle(tmp_path / "b")
    image = write_image(tmp_path / "IMAGE.jpg", h=48, w=80)
    with cli_server(bundle, tmp_path):
        log = (tmp_path / "server.log").read_text()
        (curl,) = [ln.split("try: ", 1)[1] for ln in log.splitlines() if "try: curl" in ln]
        res = subprocess.run(
            shlex.split(curl), capture_output=True, timeout=60, check=True, cwd=image.parent
        )
    assert json.loads(res.stdout)["model"] == "tiny"


def test_predict_prints_a_legend_and_eval_keeps_per_class_rows_for_the_flag(
    imported: Path, tmp_path: Path
) -> None:
    code, out, err = _invoke(["predict", str(imported), str(tmp_path / "imgs")])
    assert code == 0
    assert "[decode + preprocess + inference + postprocess]" in " ".join(err.split())
    data = tmp_path / "ds"
    for i in range(2):
        write_image(data / "images" / "val" / f"{i}.jpg", seed=i)
        (data / "labels" / "val").mkdir(parents=True, exist_ok=True)
        (data / "labels" / "val" / f"{i}.txt").write_text("1 0.5 0.5 0.4 0.4\n")
    (data / "data.yaml").write_text("path: .\nval: images/val\nnames: [a, b, c]\n")
    code, out, err = _invoke(["eval", str(imported), "--data", str(data / "data.yaml")])
    assert code == 0 and "per-class" not in out and "--per-class" in err
    code, out, err = _invoke(
        ["eval", str(imported), "--data", str(data / "data.yaml"), "--per-class"]
    )
    assert code == 0 and "per-class AP50-95" in out
    code, out, _ = _invoke(["eval", str(imported), "--data", str(data / "data.yaml"), "--json"])
    assert "per_class" in json.loads(out)["metrics"]  # always in --json


def test_info_shows_the_recommended_configuration_as_a_table(imported: Path) -> None:
    b = Bundle.load(imported)
    with b.edit(action="tune") as edit:
        edit.set_recommended(
            {"artifact": "onnx-fp32", "options": {"threads": 2, "extra": {"x": 1}}}
        )
    code, out, _ = _invoke(["info", str(imported)])
    assert code == 0
    assert "recommended configuration" in out and "'artifact'" not in out  # not a raw dict
    assert "threads" in out and "onnx-fp32" in out


def test_bench_says_each_skip_once_and_never_suggests_an_impossible_flag(
    imported: Path,
) -> None:
    code, _, err = _invoke(
        ["bench", str(imported), "--batch", "1,8", "--threads", "1,2", "--iters", "1",
         "--warmup", "0", "--rounds", "1", "--no-record"]
    )  # fmt: skip
    assert code == 0, err
    skips = [ln for ln in err.splitlines() if ln.startswith("skipped")]
    assert len(skips) == 1 and "(2 combinations)" in skips[0], err
    # an imported fixed-batch ONNX cannot be re-exported with --dynamic: not suggested
    assert "--dynamic" not in skips[0] and "fixed batch" in skips[0]


def test_drawn_labels_stay_inside_the_image() -> None:
    from cvdeploy.pipeline.draw import draw
    from cvdeploy.pipeline.results import Detections

    img = np.zeros((60, 100, 3), np.uint8)
    box = np.array([[92.0, 20.0, 99.0, 40.0]], np.float32)  # at the right edge
    res = Detections(boxes=box, scores=np.array([0.9], np.float32), class_ids=np.array([0]))
    out = draw(img, res, ["a-long-class-name"])
    filled = np.nonzero(out.sum(axis=2))[1]
    assert filled.min() < 60  # the label was moved left to fit, not cut at the edge
