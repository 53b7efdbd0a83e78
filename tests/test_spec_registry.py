"""Spec validation and the lazy registry."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cvdeploy.errors import BackendUnavailable, UsageError
from cvdeploy.registry import Registry
from cvdeploy.spec import Decoder, ModelSpec, Preprocess
from tests.tiny_models import tiny_spec_dict


def test_spec_is_frozen_and_strict() -> None:
    spec = ModelSpec.model_validate(tiny_spec_dict())
    with pytest.raises(ValidationError):
        spec.task = "classify"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        ModelSpec.model_validate({**tiny_spec_dict(), "surprise": 1})


def test_spec_consistency() -> None:
    with pytest.raises(ValidationError, match="logits"):
        ModelSpec(
            task="classify",
            names=("a",),
            imgsz=(32, 32),
            preprocess=Preprocess(),
            decoder=Decoder(kind="yolov8"),
        )
    with pytest.raises(ValidationError, match="non-zero"):
        Preprocess(std=(1.0, 0.0, 1.0))
    with pytest.raises(ValidationError, match="mean and std"):
        Preprocess(color="gray")


def test_spec_differences() -> None:
    a = ModelSpec.model_validate(tiny_spec_dict())
    d = tiny_spec_dict()
    d["preprocess"]["color"] = "bgr"
    b = ModelSpec.model_validate(d)
    assert a.differences(b) == ["preprocess.color: 'rgb' != 'bgr'"]
    assert a.differences(a) == []


def test_registry_lazy_and_unavailable() -> None:
    reg = Registry("thing")
    reg.register("ok", "json:dumps", requires=("json",))
    reg.register("missing", "nope_pkg_xyz:thing", requires=("nope_pkg_xyz",), extra="nope")
    reg.register("nogpu", "json:dumps", check=lambda: "no CUDA GPU here")
    assert reg.get("ok")({"a": 1}) == '{"a": 1}'
    av = reg.availability("missing")
    assert not av.available and "pip install 'cvdeploy[nope]'" in str(av.reason)
    with pytest.raises(BackendUnavailable, match="cvdeploy\\[nope\\]"):
        reg.get("missing")
    with pytest.raises(BackendUnavailable, match="no CUDA GPU"):
        reg.get("nogpu")
    with pytest.raises(UsageError, match="known: ok, missing, nogpu"):
        reg.get("other")
