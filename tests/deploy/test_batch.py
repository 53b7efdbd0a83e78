"""`cvdeploy batch`: offline inference into JSON lines, resumable; on Ray Data (slow)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cvdeploy.cli.main import app
from cvdeploy.deploy import BatchOptions, batch_predict, list_inputs
from cvdeploy.errors import BackendUnavailable, InputError


def _lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines()]


def _predict_json(bundle: Path, images: Path) -> dict[str, list]:
    r = CliRunner().invoke(app, ["predict", str(bundle), str(images), "--json"])
    assert r.exit_code == 0, r.output
    return {p["image"]: p["results"] for p in json.loads(r.stdout)["predictions"]}


def test_batch_matches_predict_and_resumes(
    deploy_bundle: Path, deploy_images: Path, tmp_path: Path
) -> None:
    images = tmp_path / "imgs"
    shutil.copytree(deploy_images, images)
    (images / "sub").mkdir()
    shutil.copy(images / "img0.jpg", images / "sub" / "deep.jpg")
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "preds.jsonl"
    rep = batch_predict(deploy_bundle, images, out, options=BatchOptions(batch=4, progress=False))
    assert (rep.total, rep.processed, rep.errors, rep.done_before) == (7, 7, 1, 0)
    lines = _lines(out)
    by_image = {r["image"]: r for r in lines}
    assert "error" in by_image[str(images / "broken.jpg")]
    want = _predict_json(deploy_bundle, deploy_images)
    for name, results in want.items():
        got = by_image[str(images / Path(name).name)]
        assert got["results"] == results and got["artifact"] == "onnx-fp32"
    # a crash mid-line: the cut line is dropped and redone, the others are kept
    text = out.read_text().splitlines(keepends=True)
    out.write_text("".join(text[:3]) + text[3][:10])
    rep = batch_predict(deploy_bundle, images, out, options=BatchOptions(progress=False))
    assert rep.done_before == 3 and rep.processed == 4
    assert sorted(r["image"] for r in _lines(out)) == sorted(by_image)
    # nothing left: a rerun does nothing; --no-resume starts over
    assert (
        batch_predict(deploy_bundle, images, out, options=BatchOptions(progress=False)).processed
        == 0
    )
    rep = batch_predict(
        deploy_bundle, images, out, options=BatchOptions(resume=False, progress=False)
    )
    assert rep.processed == 7 and len(_lines(out)) == 7


def test_inputs_by_glob(deploy_images: Path) -> None:
    assert len(list_inputs(str(deploy_images / "img[0-2].jpg"))) == 3
    assert len(list_inputs(deploy_images)) == 5
    with pytest.raises(InputError, match="no images found"):
        list_inputs(str(deploy_images / "*.png"))


def test_batch_cli(deploy_bundle: Path, deploy_images: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.jsonl"
    r = CliRunner().invoke(
        app,
        [
            "batch",
            str(deploy_bundle),
            "--data",
            str(deploy_images / "*.jpg"),
            "--out",
            str(out),
            "--conf",
            "0.5",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["processed"] == 5 and rep["engine"] == "in-process"
    assert all(d["score"] >= 0.5 for line in _lines(out) for d in line["results"])
    r = CliRunner().invoke(
        app, ["batch", str(deploy_bundle), "--data", str(tmp_path / "none"), "--out", str(out)]
    )
    assert r.exit_code == 2 and "no images found" in r.output
    r = CliRunner().invoke(
        app,
        [
            "batch",
            str(deploy_bundle),
            "--data",
            str(deploy_images),
            "--out",
            str(out),
            "--address",
            "ray://x:1",
        ],
    )
    assert r.exit_code == 2 and "add --ray" in r.output


def test_ray_missing(
    monkeypatch: pytest.MonkeyPatch, deploy_bundle: Path, deploy_images: Path, tmp_path: Path
) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name: str, *a: object) -> object:
        return None if name == "ray" or name.startswith("ray.") else real(name, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    from cvdeploy.deploy.ray import require_ray

    with pytest.raises(BackendUnavailable, match=r"pip install 'cvdeploy\[ray\]'"):
        require_ray()
    r = CliRunner().invoke(
        app,
        [
            "batch",
            str(deploy_bundle),
            "--data",
            str(deploy_images),
            "--out",
            str(tmp_path / "o.jsonl"),
            "--ray",
        ],
    )
    assert r.exit_code == 2 and "Ray is not installed" in r.output


RAY_SCRIPT = r"""
import json, socket, sys, urllib.request
from pathlib import Path
from typer.testing import CliRunner
from cvdeploy.cli.main import app

bundle, images, out, tmp = sys.argv[1:5]
r = CliRunner().invoke(app, ["batch", bundle, "--data", images, "--out", out, "--ray",
                             "--actors", "2", "--batch", "2", "--json"])
assert r.exit_code == 0, r.output
rep = json.loads(r.stdout)
import psutil, ray
from ray import serve
from cvdeploy.deploy.ray import build_app

listening = []
for p in psutil.Process().children(recursive=True):
    try:
        conns = p.net_connections(kind="inet")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        continue
    listening += [c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN]
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
serve.start(http_options={"host": "127.0.0.1", "port": port})
serve.run(build_app(bundle, replicas=1, max_batch=4), name="tiny", route_prefix="/")
img = sorted(Path(images).iterdir())[0]
req = urllib.request.Request(f"http://127.0.0.1:{port}/", data=img.read_bytes())
with urllib.request.urlopen(req, timeout=60) as resp:
    served = json.loads(resp.read())
serve.shutdown()
ray.shutdown()
print(json.dumps({"report": rep, "listening": listening, "served": served, "image": str(img)}))
"""


@pytest.mark.slow
def test_ray_data_and_serve_on_loopback(
    deploy_bundle: Path, deploy_images: Path, tmp_path: Path
) -> None:
    """`cvdeploy batch --ray` on a local Ray instance: 2 actors give the in-process answers,
    every Ray process listens on the loopback only, and the Serve application (same Ray)
    answers like `cvdeploy predict`. In a fresh interpreter, as a user runs it."""
    pytest.importorskip("ray.data")
    pytest.importorskip("ray.serve")
    import subprocess
    import sys
    import tempfile

    ray_tmp = Path(tempfile.mkdtemp(prefix="cvd-ray-", dir="/tmp"))  # AF_UNIX paths are short
    out = tmp_path / "ray.jsonl"
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("RAY_")}
    env["TMPDIR"] = str(ray_tmp)
    try:
        res = subprocess.run(
            [
                sys.executable,
                "-c",
                RAY_SCRIPT,
                str(deploy_bundle),
                str(deploy_images),
                str(out),
                str(ray_tmp),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            check=False,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert res.returncode == 0, res.stderr[-4000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    rep = info["report"]
    assert rep["processed"] == 5 and rep["engine"] == "ray" and rep["details"]["actors"] == 2
    want = _predict_json(deploy_bundle, deploy_images)
    got = {Path(r["image"]).name: r["results"] for r in _lines(out)}
    assert got == {Path(k).name: v for k, v in want.items()}
    assert info["listening"], "found no Ray listener to check"
    loop = ("127.0.0.1", "::ffff:127.0.0.1", "::1")
    assert all(ip in loop for ip in info["listening"]), info["listening"]
    name = Path(info["image"]).name
    assert info["served"]["results"] == next(v for k, v in want.items() if k.endswith(name))
