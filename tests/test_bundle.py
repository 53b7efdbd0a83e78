"""Bundle: atomic writes, checksums, history, transactions that fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cvdeploy.bundle import Bundle, Check, Provenance
from cvdeploy.errors import BundleError, IntegrityError, UsageError
from cvdeploy.spec import IOSpec, ModelSpec, TensorSpec
from tests.tiny_models import tiny_spec_dict

IO = IOSpec(
    inputs=(TensorSpec(name="images", shape=(1, 3, 64, 64)),),
    outputs=(TensorSpec(name="output0", shape=(1, 7, 64)),),
)


def _make(path: Path) -> Bundle:
    spec = ModelSpec.model_validate(tiny_spec_dict())
    with Bundle.create(path, name="t", spec=spec) as edit:
        d = edit.artifact_dir("onnx-fp32")
        (d / "model.onnx").write_bytes(b"model-bytes")
        edit.add_artifact(
            artifact_id="onnx-fp32",
            format="onnx",
            precision="fp32",
            io=IO,
            produced_by=Provenance(tool="test"),
        )
    return Bundle.load(path)


def test_create_and_load_round_trip(tmp_path: Path) -> None:
    b = _make(tmp_path / "b")
    assert b.manifest.artifacts[0].files[0].path == "onnx-fp32/model.onnx"
    assert [h.action for h in b.manifest.history] == ["create"]
    raw = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert raw["schema_version"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_altered_file_is_named(tmp_path: Path) -> None:
    _make(tmp_path / "b")
    (tmp_path / "b" / "onnx-fp32" / "model.onnx").write_bytes(b"model-bytez")
    with pytest.raises(IntegrityError, match=r"onnx-fp32/model.onnx was altered"):
        Bundle.load(tmp_path / "b")


def test_missing_file_is_named(tmp_path: Path) -> None:
    _make(tmp_path / "b")
    (tmp_path / "b" / "onnx-fp32" / "model.onnx").unlink()
    with pytest.raises(IntegrityError, match="is missing"):
        Bundle.load(tmp_path / "b")


def test_failed_edit_leaves_bundle_intact(tmp_path: Path) -> None:
    b = _make(tmp_path / "b")
    before = (tmp_path / "b" / "bundle.json").read_bytes()
    with pytest.raises(RuntimeError), b.edit(action="export") as edit:
        d = edit.artifact_dir("onnx-fp16")
        (d / "model.onnx").write_bytes(b"half")
        raise RuntimeError("converter crashed")
    assert (tmp_path / "b" / "bundle.json").read_bytes() == before
    assert not (tmp_path / "b" / "onnx-fp16").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    Bundle.load(tmp_path / "b")


def test_edit_adds_check_and_history_without_touching_old_files(tmp_path: Path) -> None:
    b = _make(tmp_path / "b")
    with b.edit(action="eval", details={"x": 1}) as edit:
        edit.add_check("onnx-fp32", Check(kind="metrics", name="ds", data={"map50_95": 0.5}))
        edit.write_text("MODEL_CARD.md", "card")
    again = Bundle.load(tmp_path / "b")
    assert again.artifact("onnx-fp32").latest("metrics").data["map50_95"] == 0.5  # type: ignore[union-attr]
    assert [h.action for h in again.manifest.history] == ["create", "eval"]
    assert b.manifest == again.manifest


def test_create_refuses_existing_bundle_and_foreign_dir(tmp_path: Path) -> None:
    _make(tmp_path / "b")
    spec = ModelSpec.model_validate(tiny_spec_dict())
    with (
        pytest.raises(UsageError, match="already exists"),
        Bundle.create(tmp_path / "b", name="x", spec=spec),
    ):
        pass
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with (
        pytest.raises(UsageError, match="not a bundle"),
        Bundle.create(tmp_path / "other", name="x", spec=spec),
    ):
        pass
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_unknown_artifact_and_bad_manifest(tmp_path: Path) -> None:
    b = _make(tmp_path / "b")
    with pytest.raises(UsageError, match="onnx-fp32"):
        b.artifact("nope")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(tmp_path / "c")
    (tmp_path / "c" / "bundle.json").write_text('{"schema_version": 99}')
    with pytest.raises(BundleError, match="schema version 99"):
        Bundle.load(tmp_path / "c")


def test_invalid_artifact_id(tmp_path: Path) -> None:
    b = _make(tmp_path / "b")
    with pytest.raises(UsageError, match="invalid artifact id"), b.edit(action="x") as edit:
        edit.artifact_dir("../evil")
