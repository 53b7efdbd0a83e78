"""`cvdeploy runtimes`: a missing package shows the install command, extras included."""

from __future__ import annotations

import importlib.util

import pytest
from typer.testing import CliRunner

from cvdeploy.cli.main import app


def test_missing_runtime_hint_keeps_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "openvino" else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    res = CliRunner().invoke(app, ["runtimes"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    # rich would read "[openvino]" as a style tag and print "pip install 'cvdeploy'"
    assert "pip install 'cvdeploy[openvino]'" in res.output
