"""The doctor's HTML report in a real headless Chromium (Debian's, driven by Playwright, as
the dashboard): every section renders, every plot and gallery image decodes, nothing is
fetched from elsewhere and no script error occurs. Skips without Playwright or Chromium."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from cvdeploy.bundle import Bundle
from cvdeploy.diagnose import DoctorOptions, record_reference, run_doctor, write_html
from tests.diagnose.conftest import (
    add_onnx_artifact,
    colour_images,
    conv_stack_onnx,
    conv_stack_weights,
)

pytestmark = pytest.mark.slow
pytest.importorskip("scipy")
pytest.importorskip("matplotlib")


@pytest.fixture
def browser() -> Iterator[Any]:
    path = os.environ.get("CVDEPLOY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("playwright is not installed (pip install 'cvdeploy[dev]')")
    if not Path(path).is_file():
        pytest.skip(f"no Chromium at {path} (apt-get install chromium, or set CVDEPLOY_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=path,
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            yield b
        finally:
            b.close()


def test_the_report_renders_every_section_with_its_plots(
    browser: Any, stack: Path, stack_root: Path, tmp_path: Path
) -> None:
    w = conv_stack_weights()
    w["w2"] = w["w2"] * 1.6
    add_onnx_artifact(
        stack,
        "onnx-int8",
        conv_stack_onnx(tmp_path / "bad.onnx", weights=w),
        precision="int8",
        source="onnx-fp32",
    )
    data = stack_root / "data" / "data.yaml"
    record_reference(Bundle.load(stack), data, progress=False)
    dark = tmp_path / "dark"
    colour_images(dark, 40, seed=4, scale=0.5)
    rep = run_doctor(stack, DoctorOptions(data=data, production=dark, progress=False))
    out = write_html(rep, tmp_path / "doctor.html")
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    remote: list[str] = []
    page.on(
        "request",
        lambda r: remote.append(r.url) if not r.url.startswith(("file:", "data:")) else None,
    )
    page.goto(out.as_uri())
    page.wait_for_load_state("load")
    page.screenshot(path=str(tmp_path / "doctor.png"), full_page=True)
    heads = page.locator("h2").all_inner_texts()
    assert heads == [
        "Findings",
        "Environment",
        "Integrity",
        "Controlled dataset",
        "Layer-wise localisation",
        "Preprocessing audit",
        "Drift",
    ], heads
    sev = page.locator(".finding .sev").all_inner_texts()
    assert sev and sev[0].lower() in ("critical", "warning")
    imgs = page.eval_on_selector_all(
        "img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth])"
    )
    assert len([i for i in imgs if i[0] == "plot"]) >= 3, imgs  # per-class, SQNR curve, histograms
    assert any(i[0] != "plot" for i in imgs), "no gallery image"
    assert all(ok and w > 0 for _, ok, w in imgs), imgs
    shot = page.locator("img.plot").first.screenshot()
    png = cv2.imdecode(np.frombuffer(shot, np.uint8), cv2.IMREAD_COLOR)
    assert (
        png is not None and float(png.std()) > 3 and len(np.unique(png.reshape(-1, 3), axis=0)) > 8
    )
    assert (
        "first jump: conv2" in page.content()
        or "conv2" in page.locator("#layers ~ table").first.inner_text()
    )
    assert not problems and not remote, (problems, remote)
    page.close()


def test_the_dashboard_shows_the_drift_panel(browser: Any, tiny_drift_bundle: Path) -> None:
    pytest.importorskip("fastapi")
    import httpx  # noqa: F401

    from cvdeploy.serve.config import ServeConfig
    from tests.serve.test_uvicorn import thread_server

    cfg = ServeConfig(
        source=tiny_drift_bundle,
        warmup_runs=1,
        drift={
            "sample_rate": 1.0,
            "window": 30,
            "min_window": 20,
            "every": 10,
            "permutations": 100,
            "min_interval_s": 0,
        },
    )
    with thread_server(cfg) as client:
        for i in range(30):
            img = np.clip(np.random.default_rng(i).normal(60, 15, (120, 160, 3)), 0, 255).astype(
                np.uint8
            )
            jpg = cv2.imencode(".jpg", img)[1].tobytes()
            client.post(
                "/v1/models/tiny/predict", content=jpg, headers={"content-type": "image/jpeg"}
            )
        base = str(client.base_url).rstrip("/")
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.goto(f"{base}/dashboard")
        page.wait_for_function(
            "document.getElementById('drift-status').innerText.includes('drift (p=')",
            timeout=60_000,
        )
        text = page.locator("#drift-status").inner_text()
        # the window is tested at 20 samples, then at 30: the page may show either test
        assert text.startswith("tiny: drift") and re.search(r"window (20|30)\b", text), text
        shot = page.locator("#c-drift").screenshot()
        png = cv2.imdecode(np.frombuffer(shot, np.uint8), cv2.IMREAD_COLOR)
        assert float(png.std()) > 3 and len(np.unique(png.reshape(-1, 3), axis=0)) > 8
        assert not problems, problems
        page.close()


@pytest.fixture
def tiny_drift_bundle(tmp_path: Path) -> Path:
    """The serving tests' tiny detector with a drift reference of bright images."""
    pytest.importorskip("onnxruntime")
    from cvdeploy.export import ImportOverrides, import_model
    from tests.tiny_models import NC, tiny_detector_onnx

    src = tiny_detector_onnx(tmp_path / "tiny.onnx")
    import_model(
        src,
        out=tmp_path / "bundle",
        overrides=ImportOverrides(decoder="yolov8", names=tuple(f"n{i}" for i in range(NC))),
    )
    ref = tmp_path / "ref"
    ref.mkdir()
    for i in range(80):
        img = np.clip(np.random.default_rng(100 + i).normal(140, 15, (120, 160, 3)), 0, 255)
        cv2.imwrite(str(ref / f"{i:03d}.jpg"), img.astype(np.uint8))
    record_reference(Bundle.load(tmp_path / "bundle"), ref, progress=False)
    return tmp_path / "bundle"
