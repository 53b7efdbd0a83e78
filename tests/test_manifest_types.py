"""The typed manifest: formats/precisions are literals, check payloads are typed per kind,
``recommended`` is a model; bundles written by the previous version still load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from cvdeploy.bundle import (
    Check,
    LatencyData,
    Manifest,
    MetricsData,
    ParityData,
    Recommended,
    RuntimeConfig,
)

OLD = Path(__file__).parent / "fixtures" / "bundle_0.1.0_before_typed_manifest.json"
"""bundle.json as cvdeploy 0.1.0 wrote it before this change (import, eval, bench, obfuscate
and a tune recommendation, made with that code): untyped payloads, a dict ``recommended``,
no ``inference_precision``."""


def test_a_bundle_written_before_loads_and_reads_the_same() -> None:
    raw = json.loads(OLD.read_text())
    m = Manifest.model_validate(raw)
    src, obf = m.artifact("onnx-fp32"), m.artifact("onnx-fp32-obf")
    metrics, latency = src.latest("metrics"), src.latest("latency")
    parity = obf.latest("parity")
    assert isinstance(metrics.data, MetricsData) and isinstance(latency.data, LatencyData)  # type: ignore[union-attr]
    assert isinstance(parity.data, ParityData)  # type: ignore[union-attr]
    # typed access and the old mapping access agree
    assert metrics.data.metrics == metrics.data["metrics"]  # type: ignore[union-attr]
    assert parity.data.precision == "fp32" and parity.data["passed"] is True  # type: ignore[union-attr]
    assert latency.data.e2e_ms["p50"] > 0  # type: ignore[union-attr]
    # written back, every recorded value is what the old version wrote
    again = m.model_dump(mode="json")
    for a_old, a_new in zip(raw["artifacts"], again["artifacts"], strict=True):
        assert [c["data"] for c in a_old["checks"]] == [c["data"] for c in a_new["checks"]]
    assert isinstance(m.recommended, Recommended)
    assert m.recommended.artifact == "onnx-fp32" and m.recommended["options"]["threads"] == 1
    assert again["recommended"] == {**raw["recommended"], "options": raw["recommended"]["options"]}
    assert src.runtime_precision == "f32"  # recorded before the field: FP32 compute


def test_typed_fields_are_validated() -> None:
    with pytest.raises(ValidationError):
        Check(kind="parity", name="x", data={"precision": "fp8"})
    with pytest.raises(ValidationError):
        Check(kind="metrics", name="x", data={"images": "many"})
    with pytest.raises(ValidationError):
        Check(kind="drift", name="x")  # not a kind this version records
    with pytest.raises(ValidationError):
        Recommended.model_validate({"artifact": "a", "options": {"threads": 0}})
    with pytest.raises(ValidationError):
        Recommended.model_validate({"artifact": "a", "surprise": 1})
    raw = json.loads(OLD.read_text())
    raw["artifacts"][0]["format"] = "coreml"
    with pytest.raises(ValidationError):
        Manifest.model_validate(raw)


def test_payloads_keep_only_what_was_given_and_unknown_keys() -> None:
    c = Check(kind="metrics", name="ds", data={"metrics": {"map50_95": 0.5}, "newer": [1]})
    assert c.model_dump(mode="json")["data"] == {"metrics": {"map50_95": 0.5}, "newer": [1]}
    assert "speed_ms" not in c.data and c.data.get("speed_ms", 7) == 7
    assert dict(c.data) == {"metrics": {"map50_95": 0.5}, "newer": [1]}
    assert RuntimeConfig(threads=2)["threads"] == 2


def test_every_registered_format_and_precision_is_in_the_vocabulary() -> None:
    from typing import get_args

    from cvdeploy.bundle import Format, Precision
    from cvdeploy.export import EXPORTERS, PRECISIONS
    from cvdeploy.runtime import RUNTIMES

    assert set(RUNTIMES.names()) <= set(get_args(Format))
    assert set(EXPORTERS.names()) <= set(get_args(Format))
    assert {p for ps in PRECISIONS.values() for p in ps} <= set(get_args(Precision))
