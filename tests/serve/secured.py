"""A secured server for the tests: an auth database with users and keys, a secured app.

Used by the authorizer tests here and by ``tests/security`` (the CLI server with auth);
the conftests there and here import :func:`auth_db_template` as their fixture.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

PASSWORD = "correct horse battery staple"
RAW = {"content-type": "image/jpeg"}


class FakeClock:
    """A clock tests move by hand (starts at the real time)."""

    def __init__(self, start: float | None = None) -> None:
        self.t = time.time() if start is None else start

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


@dataclass
class Secured:
    """A running secured app (TestClient) with its users, keys and audit log."""

    client: Any
    layer: Any
    audit_log: Path
    audit_key: Path
    keys: dict[str, str] = field(default_factory=dict)
    seeds: dict[str, str] = field(default_factory=dict)
    wall: FakeClock = field(default_factory=FakeClock)
    mono: FakeClock = field(default_factory=lambda: FakeClock(1000.0))

    def auth(self, who: str) -> dict[str, str]:
        """Headers carrying the API key named ``who``."""
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def totp(self, user: str) -> str:
        """The current TOTP code of ``user`` at the fake wall clock."""
        import pyotp

        return str(pyotp.TOTP(self.seeds[user]).at(self.wall()))

    def login(
        self,
        user: str,
        *,
        password: str = PASSWORD,
        code: str | None = None,
        endpoint: str = "/v1/auth/token",
    ) -> Any:
        """POST ``endpoint`` (``/v1/auth/token``, or ``/v1/auth/session`` for the browser
        cookie); the fake clock moves to the next TOTP step first."""
        if code is None:
            self.wall.advance(30)
            code = self.totp(user)
        return self.client.post(
            endpoint, json={"username": user, "password": password, "totp": code}
        )

    def entries(self) -> list[dict[str, Any]]:
        """The audit log's entries."""
        return [json.loads(line) for line in self.audit_log.read_text().splitlines()]


def make_db(
    db: Path, *, models: tuple[str, ...] = ("tiny",)
) -> tuple[dict[str, str], dict[str, str]]:
    """Users alice (admin), olga (operator), vic (viewer), peter (predictor, no TOTP);
    keys per role, one scoped to another model, one expired-soon and one revoked."""
    from cvdeploy.security.store import SecurityStore

    store = SecurityStore(db, create=True)
    seeds: dict[str, str] = {}
    for name, role in (("alice", "admin"), ("olga", "operator"), ("vic", "viewer")):
        store.add_user(name, PASSWORD, role=role)
        uri = store.enrol_totp(name)
        seeds[name] = uri.split("secret=")[1].split("&")[0]
    store.add_user("peter", PASSWORD, role="predictor")
    keys: dict[str, str] = {}
    for role in ("viewer", "predictor", "operator", "admin"):
        keys[role], _ = store.create_key(f"{role}-key", role=role)
    keys["legit"], _ = store.create_key("legit", role="predictor", models=list(models))
    keys["other_model"], _ = store.create_key("scoped", role="predictor", models=["other"])
    keys["attacker"], _ = store.create_key("attacker", role="predictor")
    keys["expiring"], _ = store.create_key("expiring", role="predictor", expires_in_s=60)
    keys["revoked"], info = store.create_key("revoked", role="predictor")
    store.revoke_key(info.id)
    return keys, seeds


@pytest.fixture(scope="session")
def auth_db_template(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, str], dict[str, str]]:
    """An auth database made once per session (:func:`make_db`): ``(path, keys, seeds)``."""
    db = tmp_path_factory.mktemp("authdb") / "auth.db"
    keys, seeds = make_db(db)
    return db, keys, seeds


@contextmanager
def secured_app(
    source: Path,
    tmp: Path,
    template: tuple[Path, dict[str, str], dict[str, str]],
    **security: Any,
) -> Iterator[Secured]:
    """A secured server on ``source`` (TestClient, lifespan running, ready)."""
    import shutil

    from fastapi.testclient import TestClient

    from cvdeploy.security.audit import write_key
    from cvdeploy.serve.app import create_app
    from cvdeploy.serve.config import ServeConfig

    db, keys, seeds = template
    shutil.copy(db, tmp / "auth.db")
    key_file = write_key(tmp / "audit.key")
    sec = {"auth_db": tmp / "auth.db", "audit_log": tmp / "audit.log", "audit_key_file": key_file}
    sec.update(security)
    app = create_app(ServeConfig(source=source, warmup_runs=1, security=sec))
    layer = app.state.cvdeploy_security
    s = Secured(None, layer, tmp / "audit.log", key_file, dict(keys), dict(seeds))
    layer.clock = s.wall
    layer.monotonic = s.mono
    with TestClient(app, raise_server_exceptions=False) as client:
        s.client = client
        _wait(client)
        yield s


def _wait(client: Any) -> None:
    from tests.serve.conftest import wait_ready

    wait_ready(client)
