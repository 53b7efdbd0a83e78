"""A secured server in real headless Chromium: log in at /login, then the dashboard and /docs.

The browser sends no Authorization header on a page load; the session cookie set by
``POST /v1/auth/session`` is what lets the dashboard's polling and Swagger UI's requests
through. Skips like ``tests/serve/test_dashboard_browser.py`` without Playwright/Chromium.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from cvdeploy.serve.config import ServeConfig
from tests.serve.secured import PASSWORD
from tests.serve.test_dashboard_browser import _watch, browser  # noqa: F401 (fixture)
from tests.serve.test_uvicorn import thread_server

pytestmark = pytest.mark.slow


def test_login_then_dashboard_and_docs(
    browser: Any,  # noqa: F811 (the imported fixture)
    tmp_path: Path,
    tiny_bundle: Path,
    auth_db_template: Any,
) -> None:
    import pyotp

    from cvdeploy.security.audit import write_key

    db, _keys, seeds = auth_db_template
    shutil.copy(db, tmp_path / "auth.db")
    sec = {
        "auth_db": tmp_path / "auth.db",
        "audit_log": tmp_path / "audit.log",
        "audit_key_file": write_key(tmp_path / "audit.key"),
    }
    with thread_server(ServeConfig(source=tiny_bundle, warmup_runs=1, security=sec)) as client:
        base = str(client.base_url).rstrip("/")
        assert client.get("/v1/stats").status_code == 401  # no credentials, no data
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems = _watch(page)
        page.goto(f"{base}/dashboard")
        page.wait_for_selector("#login", timeout=30_000)
        assert page.url == f"{base}/login?next=/dashboard"
        page.fill("#username", "olga")  # operator: docs, metrics, read
        page.fill("#password", "not the password")
        page.fill("#totp", pyotp.TOTP(seeds["olga"]).now())
        page.click("button[type=submit]")
        page.wait_for_function(
            "document.getElementById('error').textContent.length > 0", timeout=30_000
        )
        assert "invalid" in page.locator("#error").inner_text()
        problems.clear()  # the refused log-in's 401 is reported by the console
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/dashboard", timeout=30_000)
        page.wait_for_function("Number(document.body.dataset.updates || 0) >= 2", timeout=60_000)
        assert page.locator("#status").inner_text().startswith("updated")
        assert "cvdeploy_session" not in page.evaluate("document.cookie")  # HttpOnly
        page.goto(f"{base}/docs")
        page.wait_for_selector(".opblock-summary-path", timeout=30_000)
        assert page.locator(".btn.authorize").count() == 1  # the bearer scheme is declared
        page.screenshot(path=str(tmp_path / "docs-after-login.png"), full_page=True)
        assert not problems, problems
        page.close()
