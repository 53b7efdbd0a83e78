"""The model registry: add, promote, rollback, atomic state, and its CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cvdeploy.cli.main import app
from cvdeploy.errors import BundleError, InputError, UsageError
from cvdeploy.serve.registry import STATE_FILE, ModelRegistry, is_registry
from tests.serve.conftest import make_bundle


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("reg-bundles")
    return make_bundle(root / "a", seed=0), make_bundle(root / "b", seed=1)


def test_add_promote_rollback(tmp_path: Path, bundles: tuple[Path, Path]) -> None:
    reg = ModelRegistry(tmp_path / "reg", create=True)
    assert is_registry(tmp_path / "reg") and reg.models() == []
    assert reg.add(bundles[0]) == ("tiny", "1")
    assert reg.add(bundles[1]) == ("tiny", "2")
    assert reg.add(bundles[0], version="v3-rc.1") == ("tiny", "v3-rc.1")
    assert reg.stage_version("tiny") == "1"  # the first version goes to production
    assert reg.bundle_path("tiny", "2").joinpath("bundle.json").is_file()
    assert reg.promote("tiny", "2") == "1"
    assert reg.promote("tiny", "v3-rc.1", stage="staging") is None
    assert reg.promote("tiny", "v3-rc.1") == "2"
    assert reg.rollback("tiny") == ("v3-rc.1", "2")
    assert reg.rollback("tiny") == ("2", "1")
    with pytest.raises(UsageError, match="no earlier production version"):
        reg.rollback("tiny")
    m = reg.model("tiny")
    assert m["stages"] == {"production": "1", "staging": "v3-rc.1"}
    assert [h["action"] for h in m["history"]][-2:] == ["rollback", "rollback"]
    # no temporary files left behind by the atomic writes
    assert [p.name for p in (tmp_path / "reg").iterdir() if p.name.startswith(".registry-")] == []


def test_registry_errors(tmp_path: Path, bundles: tuple[Path, Path]) -> None:
    with pytest.raises(InputError, match="not a model registry"):
        ModelRegistry(tmp_path / "none")
    reg = ModelRegistry(tmp_path / "reg", create=True)
    reg.add(bundles[0])
    with pytest.raises(UsageError, match="already has version"):
        reg.add(bundles[0], version="1")
    with pytest.raises(UsageError, match="not valid"):
        reg.add(bundles[0], version="../evil")
    with pytest.raises(UsageError, match="no version '9'"):
        reg.promote("tiny", "9")
    with pytest.raises(UsageError, match="stage must be"):
        reg.promote("tiny", "1", stage="canary")
    with pytest.raises(UsageError, match="not in registry"):
        reg.promote("other", "1")
    with pytest.raises(BundleError):
        reg.add(tmp_path / "no-bundle")
    (tmp_path / "reg" / STATE_FILE).write_text("{broken")
    with pytest.raises(InputError, match="cannot be read"):
        reg.models()


def test_registry_cli(tmp_path: Path, bundles: tuple[Path, Path]) -> None:
    run = CliRunner().invoke
    reg = str(tmp_path / "reg")
    r = run(app, ["registry", "add", reg, str(bundles[0]), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"model": "tiny", "version": "1", "production": "1"}
    assert run(app, ["registry", "add", reg, str(bundles[1]), "--version", "2"]).exit_code == 0
    r = run(app, ["registry", "promote", reg, "tiny", "2", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["previous"] == "1"
    r = run(app, ["registry", "list", reg, "--json"])
    assert json.loads(r.stdout)["models"]["tiny"]["stages"]["production"] == "2"
    r = run(app, ["registry", "list", reg])
    assert r.exit_code == 0 and "production" in r.stdout
    r = run(app, ["registry", "rollback", reg, "tiny", "--json"])
    out = json.loads(r.stdout)
    assert {k: out[k] for k in ("model", "from", "to")} == {"model": "tiny", "from": "2", "to": "1"}
    assert out["recheck"]["passed"]  # re-checked before the switch (test_rollback_recheck.py)
    r = run(app, ["registry", "rollback", reg, "tiny"])
    assert r.exit_code == 2 and "no earlier production version" in r.output
    r = run(app, ["registry", "promote", reg, "tiny", "7"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    r = run(app, ["registry", "list", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "not a model registry" in r.output
