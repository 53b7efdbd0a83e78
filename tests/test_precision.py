"""Precision is part of the artifact: vocabulary, native CPU support, records, env --compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cvdeploy.bundle import Bundle
from cvdeploy.environment import fingerprint
from cvdeploy.errors import BackendUnavailable, UsageError
from cvdeploy.precision import (
    inference_precision_for,
    legacy_inference_precision,
    native_precisions,
    precision_differences,
    require_native,
)
from tests.cpu import native

AVX2_EPYC = ["avx", "avx2", "f16c", "fma", "sse4_2"]
ZEN4 = [*AVX2_EPYC, "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"]
SAPPHIRE = [*ZEN4, "amx_tile", "amx_int8", "amx_bf16", "avx512_fp16"]


def test_native_precisions_by_cpu() -> None:
    assert native_precisions(AVX2_EPYC) == {"f32"}  # f16c converts, it does not compute
    assert native_precisions(ZEN4) == {"f32", "bf16"}
    assert native_precisions(SAPPHIRE) == {"f32", "bf16", "f16"}
    assert native_precisions(["asimd", "asimdhp"]) == {"f32", "f16"}  # ARM FP16
    assert native_precisions(["asimd", "bf16"]) == {"f32", "bf16"}


def test_require_native_refuses_with_exit_2() -> None:
    require_native("f32", what="x", flags=AVX2_EPYC)
    require_native("bf16", what="x", flags=ZEN4)
    require_native("f16", what="x", flags=AVX2_EPYC, device="GPU")  # the GPU's runtime decides
    with pytest.raises(BackendUnavailable) as exc:
        require_native("bf16", what="openvino:bf16", flags=AVX2_EPYC)
    assert exc.value.exit_code == 2
    text = str(exc.value)
    assert "openvino:bf16 computes in bf16" in text and "no native bf16" in text
    assert "AVX512_BF16" in text and "slow emulation" in text
    with pytest.raises(BackendUnavailable, match="no native FP16"):
        require_native("f16", what="openvino:fp16", flags=ZEN4)
    with pytest.raises(UsageError, match="unknown inference precision"):
        require_native("fp8", what="x", flags=SAPPHIRE)


def test_inference_precision_of_each_artifact_kind() -> None:
    assert inference_precision_for("openvino", "fp32") == "f32"
    assert inference_precision_for("openvino", "int8") == "f32"  # float parts pinned to f32
    assert inference_precision_for("openvino", "bf16") == "bf16"
    assert inference_precision_for("openvino", "int8-bf16") == "bf16"
    assert inference_precision_for("openvino", "fp16") == "f16"
    assert inference_precision_for("tflite", "fp16") == "f32"  # FP16 weights, FP32 compute
    assert inference_precision_for("onnx", "int8-dynamic") == "f32"
    assert inference_precision_for("tensorrt", "int8") == "f16"
    # bundles written before the field: what they were gated at
    assert legacy_inference_precision("openvino", "fp16") == "f32"
    assert legacy_inference_precision("tensorrt", "fp16") == "f16"


def _bundle(tmp_path: Path) -> Bundle:
    from cvdeploy.export.importer import import_model
    from tests.tiny_models import tiny_detector_onnx

    src = tiny_detector_onnx(tmp_path / "m.onnx", batch=1)
    import_model(src, out=tmp_path / "b", overrides=_overrides())
    return Bundle.load(tmp_path / "b")


def _overrides():  # type: ignore[no-untyped-def]
    from cvdeploy.export.importer import ImportOverrides

    return ImportOverrides(preset="ultralytics", names=("a", "b", "c"), imgsz=(64, 64))


def test_manifest_records_it_and_old_bundles_still_load(tmp_path: Path) -> None:
    b = _bundle(tmp_path)
    art = b.artifact("onnx-fp32")
    assert art.inference_precision == "f32" and art.runtime_precision == "f32"
    raw = json.loads((b.path / "bundle.json").read_text())
    assert raw["artifacts"][0]["inference_precision"] == "f32"
    # a bundle written before the field existed
    del raw["artifacts"][0]["inference_precision"]
    raw["artifacts"][0]["precision"] = "fp16"
    (b.path / "bundle.json").write_text(json.dumps(raw))
    old = Bundle.load(b.path).artifact("onnx-fp32")
    assert old.inference_precision is None and old.runtime_precision == "f32"
    # an unknown precision in the manifest is refused at load
    raw["artifacts"][0]["inference_precision"] = "fp8"
    (b.path / "bundle.json").write_text(json.dumps(raw))
    with pytest.raises(Exception, match="not a valid manifest"):
        Bundle.load(b.path)


def _env(flags: list[str]) -> dict[str, object]:
    env = fingerprint()
    env["cpu"] = {**env["cpu"], "flags": flags}  # type: ignore[dict-item]
    return env


def test_env_compare_flags_the_bf16_difference() -> None:
    # an FP32 artifact measured on an AVX2 EPYC, now on a bf16 CPU: the pin is named
    (d,) = precision_differences(
        _env(ZEN4), _env(AVX2_EPYC), fmt="openvino", inference_precision="f32"
    )
    assert (d.field, d.recorded, d.current) == ("native bf16", "no", "yes (avx512_bf16)")
    assert d.affects == "numerics and speed"
    assert "INFERENCE_PRECISION_HINT=f32" in d.note and "openvino:bf16" in d.note
    # the reverse: a bf16 artifact made on a bf16 CPU, now on an AVX2 EPYC
    (d,) = precision_differences(
        _env(AVX2_EPYC), _env(ZEN4), fmt="openvino", inference_precision="bf16"
    )
    assert (d.recorded, d.current) == ("yes (avx512_bf16)", "no") and "refused here" in d.note
    # FP16 gained on a Sapphire Rapids, for an ONNX Runtime artifact
    diffs = precision_differences(_env(SAPPHIRE), _env(ZEN4), fmt="onnx", inference_precision="f32")
    assert [x.field for x in diffs] == ["native FP16"]
    assert "ONNX Runtime computes FP32 models in FP32" in diffs[0].note
    # same CPU kind, or a record without flags: nothing
    assert (
        precision_differences(_env(ZEN4), _env(ZEN4), fmt="onnx", inference_precision="f32") == []
    )
    assert precision_differences(_env(ZEN4), {}, fmt="onnx", inference_precision="f32") == []


def test_env_compare_cli_names_the_pin(tmp_path: Path, plain_cpu: None) -> None:
    from typer.testing import CliRunner

    from cvdeploy.cli.main import app

    b = _bundle(tmp_path)
    raw = json.loads((b.path / "bundle.json").read_text())
    raw["artifacts"][0]["environment"]["cpu"]["flags"] = ZEN4  # made on a bf16 CPU
    (b.path / "bundle.json").write_text(json.dumps(raw))
    res = CliRunner().invoke(app, ["env", "--compare", str(b.path), "--json"])
    assert res.exit_code == 0, res.output
    comps = json.loads(res.output)["comparisons"]
    made = next(c for c in comps if c["record"] == "made")
    assert made["inference_precision"] == "f32"
    assert made["differences"][0]["field"] == "native bf16"
    assert "no native bf16" in made["differences"][0]["note"]
    res = CliRunner().invoke(app, ["env", "--compare", str(b.path)])
    assert res.exit_code == 0 and "native bf16" in res.output


def test_info_shows_what_each_artifact_computes_in(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cvdeploy.cli.main import app

    b = _bundle(tmp_path)
    res = CliRunner().invoke(app, ["info", str(b.path), "--json"])
    assert json.loads(res.output)["artifacts"][0]["inference_precision"] == "f32"
    res = CliRunner().invoke(app, ["info", str(b.path)])
    out = " ".join(res.output.split())
    assert "computes in" in out and "this CPU:" in out
    assert ("no native bf16" in out) == ("bf16" not in native())
