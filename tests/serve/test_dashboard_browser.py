"""The dashboard and /docs in a real headless Chromium (Debian's package, driven by Playwright).

A uvicorn server on 127.0.0.1 serves the tiny bundle with request sampling on; predict
requests come in while the page is open. The checks are on what the browser shows: no
console errors, the charts are drawn (their screenshots are not a flat colour), the
versions table names the served version, the latest sampled predictions are drawn from
images that decoded (``naturalWidth > 0``), and Swagger UI lists the operations without
anything from a CDN. Screenshots go to the test's tmp_path (``--basetemp`` to keep them).

Skips, saying why, when Playwright or a Chromium executable is missing
(``CVDEPLOY_CHROMIUM`` overrides ``/usr/bin/chromium``); Playwright's own browser
downloads are never used.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from cvdeploy.serve.config import ServeConfig
from tests.serve.test_uvicorn import RAW, thread_server
from tests.tiny_models import write_image

pytestmark = pytest.mark.slow

CHARTS = ("c-rps", "c-lat", "c-batch", "c-cls", "c-conf")


def _chromium() -> str:
    path = os.environ.get("CVDEPLOY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("playwright is not installed (pip install 'cvdeploy[dev]')")
    if not Path(path).is_file():
        pytest.skip(f"no Chromium at {path} (apt-get install chromium, or set CVDEPLOY_CHROMIUM)")
    return path


@pytest.fixture
def browser() -> Iterator[Any]:
    path = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=path,
            headless=True,
            # root in containers needs --no-sandbox; /dev/shm is small in containers
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            yield b
        finally:
            b.close()


def _watch(page: Any) -> list[str]:
    """Collect console errors, uncaught exceptions and failed requests of a page."""
    problems: list[str] = []
    page.on(
        "console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None
    )
    page.on("pageerror", lambda e: problems.append(f"exception: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    return problems


def _not_flat(png: bytes, what: str) -> None:
    """A drawn chart: pixel values spread out, and more than a handful of colours."""
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.size, f"{what}: empty screenshot"
    colours = len(np.unique(img.reshape(-1, 3), axis=0))
    assert float(img.std()) > 3.0 and colours > 8, f"{what}: looks blank ({colours} colours)"


def _images(tmp: Path) -> list[bytes]:
    out = []
    for i, (h, w) in enumerate([(240, 320), (300, 400), (180, 260)]):
        out.append(write_image(tmp / f"img{i}.jpg", h=h, w=w).read_bytes())
    return out


def test_dashboard_draws_live_charts_versions_and_predictions(
    browser: Any, tmp_path: Path, tiny_bundle: Path
) -> None:
    images = _images(tmp_path)
    cfg = ServeConfig(
        source=tiny_bundle, warmup_runs=1, sample_rate=1.0, log_dir=tmp_path / "requests"
    )
    with thread_server(cfg) as client:
        base = str(client.base_url).rstrip("/")
        for im in images:  # before the page opens: the first poll already has data
            assert client.post("/v1/models/tiny/predict", content=im, headers=RAW).is_success
        stop = threading.Event()

        def traffic() -> None:  # keeps coming while the charts update
            with httpx.Client(base_url=base, timeout=30) as own:
                i = 0
                while not stop.is_set():
                    own.post("/v1/models/tiny/predict", content=images[i % 3], headers=RAW)
                    i += 1
                    time.sleep(0.15)

        feeder = threading.Thread(target=traffic, daemon=True)
        feeder.start()
        try:  # the traffic goes on until every check is done
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            problems = _watch(page)
            page.goto(f"{base}/dashboard")
            # three polls (2 s apart): the line charts have several points
            page.wait_for_function(
                "Number(document.body.dataset.updates || 0) >= 3", timeout=60_000
            )
            page.wait_for_function(
                "document.querySelectorAll('#recent figure[data-drawn]').length >= 2",
                timeout=60_000,
            )
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            assert not problems, problems
            assert page.locator("#status").inner_text().startswith("updated")
            assert float(page.locator("#rps").inner_text()) > 0
            assert float(page.locator("#p50").inner_text()) > 0
            for chart in CHARTS:
                png = page.locator(f"#{chart}").screenshot(path=str(tmp_path / f"{chart}.png"))
                _not_flat(png, chart)
            rows = page.locator("#models tr").all_inner_texts()
            assert len(rows) == 2, rows  # header + the served model
            assert "tiny" in rows[1] and "bundle" in rows[1] and "onnx-fp32" in rows[1], rows
        finally:
            stop.set()
            feeder.join(timeout=30)
        # traffic stopped: after one more poll the thumbnails stop changing
        page.wait_for_timeout(2500)
        page.wait_for_function(
            "[...document.querySelectorAll('#recent figure')].every(f => f.dataset.drawn)",
            timeout=30_000,
        )
        widths = page.eval_on_selector_all(
            "#recent img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])"
        )
        assert len(widths) >= 2 and all(ok and w > 0 and h > 0 for ok, w, h in widths), widths
        first = page.locator("#recent canvas").first
        _not_flat(first.screenshot(path=str(tmp_path / "recent.png")), "latest prediction")
        caption = page.locator("#recent figcaption").first.inner_text()
        assert caption.startswith("tiny vbundle") and "predictions" in caption, caption
        assert not problems, problems
        page.close()


def test_docs_render_operations_offline(browser: Any, tmp_path: Path, tiny_bundle: Path) -> None:
    with thread_server(ServeConfig(source=tiny_bundle, warmup_runs=0)) as client:
        base = str(client.base_url).rstrip("/")
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems = _watch(page)
        remote: list[str] = []
        page.on(
            "request",
            lambda r: (
                remote.append(r.url) if not r.url.startswith((base, "data:", "blob:")) else None
            ),
        )
        page.goto(f"{base}/docs")
        page.wait_for_selector(".opblock-summary-path", timeout=30_000)
        page.screenshot(path=str(tmp_path / "docs.png"), full_page=True)
        paths = page.locator(".opblock-summary-path").all_inner_texts()
        assert any("/v1/models/{name}/predict" in p for p in paths), paths
        assert any(p.strip() == "/v1/models" for p in paths), paths
        assert not remote, f"requests outside the server: {remote}"
        assert not problems, problems
        page.close()
