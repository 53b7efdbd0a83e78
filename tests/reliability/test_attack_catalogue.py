"""The whole attack catalogue against a secured server: every attack refused, the server
still serving, the audit log intact, and a restart on the same files works."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cvdeploy.security.audit import load_key, rotated_files, verify_log
from tests.reliability.attacks import PREDICT, RAW, run_attacks
from tests.serve.secured import secured_app
from tests.serve.test_attack_run import _restart_and_verify


def test_every_attack_of_the_catalogue_is_refused(
    tmp_path: Path, tiny_bundle: Path, auth_db_template: Any, jpeg: bytes
) -> None:
    with secured_app(
        tiny_bundle, tmp_path, auth_db_template, predict_burst_per_key=1000, lockout_after=3
    ) as s:
        tallies = run_attacks(s, jpeg)
        r = s.client.post(PREDICT, content=jpeg, headers={**RAW, **s.auth("legit")})
        assert r.status_code == 200
        metrics = s.client.get("/metrics", headers=s.auth("admin")).text
        assert 'status="500"' not in metrics
    through = {k: t.through for k, t in tallies.items() if t.through}
    assert not through, through
    assert sum(t.tried for t in tallies.values()) > 140
    report = verify_log(rotated_files(s.audit_log), load_key(s.audit_key))
    assert report.ok, report.problems
    _restart_and_verify(s, tiny_bundle, tmp_path, jpeg)  # the same database and audit log
