"""Obfuscated ONNX artifacts: opaque names, no metadata, outputs proven unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from cvdeploy.bundle import Bundle
from cvdeploy.errors import CheckFailed, UsageError
from cvdeploy.export.obfuscate import obfuscate_bundle, obfuscate_model
from cvdeploy.security.crypto import encrypt_bundle, generate_key
from tests.security.protect_helpers import cli, detections, make_bundle


def _decorate(bundle_dir: Path) -> None:
    """Give the source model the names and metadata a real export carries."""
    b = Bundle.load(bundle_dir)
    path = b.model_file("onnx-fp32")
    m = onnx.load(str(path))
    m.producer_name, m.producer_version, m.doc_string = "pytorch", "2.13.0", "secret recipe"
    m.graph.doc_string = "backbone: SecretNet-v7"
    m.graph.node[0].doc_string = "stem conv"
    for k, v in (("author", "ACME"), ("names", "{0: 'a'}"), ("cvdeploy_note", "kept")):
        m.metadata_props.add(key=k, value=v)
    for i, n in enumerate(m.graph.node):
        n.name = f"/model.{i}/SecretBlock/{n.op_type}"
    with b.edit(action="test-decorate") as edit:
        dst = edit.path_of(b.artifact("onnx-fp32").files[0].path)
        dst.unlink()
        onnx.save(m, str(dst))
        art = b.artifact("onnx-fp32")
        from cvdeploy.bundle import FileRef, sha256_file

        ref = FileRef(path=art.files[0].path, sha256=sha256_file(dst), size=dst.stat().st_size)
        edit.replace_artifact(art.model_copy(update={"files": (ref,)}))


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    b = make_bundle(tmp_path / "o")
    _decorate(b)
    return b


def _names(m: onnx.ModelProto) -> set[str]:
    g = m.graph
    out = {n.name for n in g.node} | {i.name for i in g.initializer}
    out |= {x for n in g.node for x in (*n.input, *n.output)}
    return out - {""}


def test_obfuscated_graph_has_no_original_names_and_passes_parity(bundle: Path) -> None:
    src = Bundle.load(bundle)
    original = onnx.load(str(src.model_file("onnx-fp32")))
    io_names = {v.name for v in original.graph.input} | {v.name for v in original.graph.output}
    rep = obfuscate_bundle(bundle)
    assert rep.artifact == "onnx-fp32-obf" and rep.source == "onnx-fp32"
    assert rep.renamed["nodes"] == len(original.graph.node)
    b = Bundle.load(bundle)
    art = b.artifact("onnx-fp32-obf")
    assert art.produced_by.tool == "obfuscate" and art.produced_by.source == "onnx-fp32"
    parity = art.latest("parity")
    assert parity is not None and parity.passed is True
    assert b.manifest.history[-1].action == "obfuscate"
    obf = onnx.load(str(b.model_file(art)))
    onnx.checker.check_model(obf)
    leaked = (_names(original) - io_names) & _names(obf)
    assert not leaked, leaked
    assert {v.name for v in obf.graph.input} == {"images"}
    assert {v.name for v in obf.graph.output} == {"output0"}
    assert all(n.name.startswith("n") and n.name[1:].isdigit() for n in obf.graph.node)
    text = b.model_file(art).read_bytes()
    for secret in (b"SecretBlock", b"SecretNet", b"secret recipe", b"stem conv", b"pytorch"):
        assert secret not in text
    assert obf.producer_name == "" and obf.doc_string == "" and obf.graph.doc_string == ""
    assert {p.key: p.value for p in obf.metadata_props} == {"cvdeploy_note": "kept"}
    assert [o.name for o in art.io.outputs] == ["output0"]
    # the weights are untouched, so the detections are identical
    imgs = b.sample_images()
    np.testing.assert_equal(detections(b, "onnx-fp32-obf", imgs), detections(b, "onnx-fp32", imgs))


def test_subgraphs_are_renamed_consistently() -> None:
    from onnx import TensorProto, helper

    then_g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["then_out"], name="secret_then")],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [2])],
    )
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["else_out"], name="secret_else")],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [2])],
    )
    g = helper.make_graph(
        [
            helper.make_node("Identity", ["inp"], ["x"], name="secret_id"),
            helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g),
        ],
        "g",
        [
            helper.make_tensor_value_info("inp", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m, counts = obfuscate_model(m)
    onnx.checker.check_model(m)
    assert counts["nodes"] == 4
    dumped = str(m)
    assert "secret" not in dumped and "then_out" not in dumped
    import onnxruntime as ort

    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([1.0, -2.0], np.float32)
    np.testing.assert_equal(s.run(None, {"inp": x, "cond": np.array(True)})[0], [1.0, 0.0])
    np.testing.assert_equal(s.run(None, {"inp": x, "cond": np.array(False)})[0], [-1.0, 2.0])


def test_a_changed_computation_is_refused(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cvdeploy.export.obfuscate as mod

    real = mod.obfuscate_model

    def breaking(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
        model, counts = real(model)
        init = model.graph.initializer[0]  # the conv weights
        w = onnx.numpy_helper.to_array(init) * 3.0
        init.CopyFrom(onnx.numpy_helper.from_array(w.astype(np.float32), init.name))
        return model, counts

    monkeypatch.setattr(mod, "obfuscate_model", breaking)
    before = (bundle / "bundle.json").read_text()
    with pytest.raises(CheckFailed, match="outputs differ from onnx-fp32"):
        obfuscate_bundle(bundle)
    assert (bundle / "bundle.json").read_text() == before
    assert not (bundle / "onnx-fp32-obf").exists()


def test_refusals(bundle: Path) -> None:
    obfuscate_bundle(bundle)
    with pytest.raises(UsageError, match="already exists"):
        obfuscate_bundle(bundle)
    obfuscate_bundle(bundle, overwrite=True)
    enc_dir = bundle.parent / "enc"
    encrypt_bundle(Bundle.load(bundle), generate_key(), out=enc_dir)
    with pytest.raises(UsageError, match="is encrypted"):
        obfuscate_bundle(enc_dir, artifact="onnx-fp32")
    with pytest.raises(UsageError, match=r"no plain ONNX artifact to obfuscate .*encrypted"):
        obfuscate_bundle(enc_dir)


def test_cli_obfuscate(bundle: Path) -> None:
    code, out = cli(["obfuscate", str(bundle), "--out-id", "hidden", "--json"])
    assert code == 0, out
    data = json.loads(out)
    assert data["artifact"] == "hidden" and data["parity"]["passed"] is True
    code, out = cli(["obfuscate", str(bundle), "--artifact", "nope"])
    assert code == 2 and "not in bundle" in out
