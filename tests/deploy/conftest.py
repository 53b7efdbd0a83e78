"""Fixtures of the deploy tests: a tiny bundle with an eval and a bench recorded, images."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cvdeploy.bundle import Bundle, Check
from cvdeploy.environment import fingerprint
from cvdeploy.export.importer import ImportOverrides, import_model
from tests.tiny_models import NC, tiny_detector_onnx, write_image

NAMES = tuple(f"n{i}" for i in range(NC))


def make_bundle(root: Path, *, name: str = "tiny", batch: int | str = "batch") -> Path:
    """A bundle of the tiny detector with a metrics check (with an interval) and a latency
    check recorded, as `cvdeploy eval` and `cvdeploy bench` would."""
    root.mkdir(parents=True, exist_ok=True)
    src = tiny_detector_onnx(root / f"{name}.onnx", batch=batch)
    out = root / name
    import_model(src, out=out, overrides=ImportOverrides(decoder="yolov8", names=NAMES))
    b = Bundle.load(out)
    env = fingerprint()
    with b.edit(action="eval", details={"artifact": "onnx-fp32", "dataset": "shapes:val"}) as e:
        e.add_check(
            "onnx-fp32",
            Check(
                kind="metrics",
                name="shapes:val",
                data={
                    "metrics": {
                        "map50_95": 0.61,
                        "map50": 0.83,
                        "ci": {"map50_95": [0.55, 0.66], "map50": [0.78, 0.88], "level": 0.95},
                    },
                    "images": 40,
                    "inference_precision": "f32",
                    "environment": env,
                },
            ),
        )
    with b.edit(action="bench", details={"artifact": "onnx-fp32"}) as e:
        e.add_check(
            "onnx-fp32",
            Check(
                kind="latency",
                name="b1",
                data={
                    "batch": 1,
                    "threads": 1,
                    "e2e_ms": {"p50": 1.5, "p90": 2.0},
                    "throughput_ips": 600.0,
                    "peak_rss_mb": 180.0,
                    "environment": env,
                },
            ),
        )
    return out


@pytest.fixture(scope="session")
def deploy_bundle_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("deploy-bundle"))


@pytest.fixture()
def deploy_bundle(deploy_bundle_template: Path, tmp_path: Path) -> Path:
    """A fresh copy per test (tests may change it)."""
    dst = tmp_path / "tiny"
    shutil.copytree(deploy_bundle_template, dst)
    return dst


@pytest.fixture(scope="session")
def deploy_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("deploy-images")
    for i in range(5):
        write_image(d / f"img{i}.jpg", h=48 + 8 * i, w=80, seed=i)
    return d
