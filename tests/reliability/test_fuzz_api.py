"""API fuzzing with schemathesis, in process, against the plain and the secured server.

About 1,300 generated requests here (``make fuzz``: 20 times as many), and sequences that
follow the schema's OpenAPI links (stateful): no 5xx, every status and content type
documented in the OpenAPI schema, the audit log intact afterwards.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.conftest import fuzz_scale

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("schemathesis") is None, reason="needs schemathesis (dev extra)"
    ),
]


def _assert_clean(report: Any) -> None:
    assert report.requests > 0
    assert report.server_errors == 0, report.failures
    assert not report.failures, report.failures


def test_fuzz_the_plain_server(tiny_bundle: Path) -> None:
    from tests.reliability.fuzzing import fuzz
    from tests.serve.conftest import serving

    with serving(tiny_bundle) as client:
        report = fuzz(client, client.app.openapi(), examples=40 * fuzz_scale(), seed=1)
        _assert_clean(report)
        assert 'status="500"' not in client.get("/metrics").text


def test_fuzz_the_secured_server(tiny_bundle: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from cvdeploy.security.audit import load_key, rotated_files, verify_log, write_key
    from cvdeploy.serve.app import create_app
    from cvdeploy.serve.config import ServeConfig
    from tests.reliability.fuzzing import fuzz, fuzz_stateful
    from tests.serve.conftest import wait_ready
    from tests.serve.secured import make_db

    keys, _ = make_db(tmp_path / "auth.db")
    key_file = write_key(tmp_path / "audit.key")
    sec = {
        "auth_db": tmp_path / "auth.db",
        "audit_log": tmp_path / "audit.log",
        "audit_key_file": key_file,
    }
    app = create_app(ServeConfig(source=tiny_bundle, warmup_runs=1, security=sec))
    total = 0
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        schema = app.openapi()
        for who, n in ((None, 5), ("viewer", 5), ("admin", 12)):
            hdr = {"Authorization": f"Bearer {keys[who]}"} if who else None
            report = fuzz(client, schema, examples=n * fuzz_scale(), headers=hdr, seed=2)
            _assert_clean(report)
            total += report.requests
        # stateful: the OpenAPI link from a created key to its revocation is followed
        admin = {"Authorization": f"Bearer {keys['admin']}"}
        report = fuzz_stateful(client, schema, headers=admin, examples=6 * fuzz_scale())
        _assert_clean(report)
        total += report.requests
    assert total > 600
    revoked = [x for x in (tmp_path / "audit.log").read_text().splitlines() if "key.revoke" in x]
    assert revoked  # a key created by one call was revoked by the next, through the link
    report = verify_log(rotated_files(tmp_path / "audit.log"), load_key(key_file))
    assert report.ok, report.problems
