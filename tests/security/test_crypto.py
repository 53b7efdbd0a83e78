"""Encrypted artifacts: AES-256-GCM bound to bundle and artifact, loaded from memory only."""

from __future__ import annotations

import builtins
import importlib.util
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from cvdeploy.bundle import Bundle
from cvdeploy.errors import InputError, IntegrityError, UsageError
from cvdeploy.pipeline.predictor import Predictor
from cvdeploy.security.crypto import (
    ModelKey,
    decrypt_bundle,
    encode_key,
    encrypt_bundle,
    generate_key,
    load_key,
    model_loader,
    parse_key,
    write_key_file,
)
from tests.security.protect_helpers import (
    add_copy,
    cli,
    detections,
    flip_byte,
    images,
    make_bundle,
    read_manifest,
    rehash,
    write_manifest,
)

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


@pytest.fixture()
def plain(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "plain")


@pytest.fixture()
def key() -> ModelKey:
    return generate_key()


def _encrypted(plain: Path, key: ModelKey, out: Path) -> Bundle:
    encrypt_bundle(Bundle.load(plain), key, out=out)
    return Bundle.load(out, loader=model_loader(key))


# --- keys --------------------------------------------------------------------------------


def test_key_never_shown_and_key_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = generate_key()
    secret = key.secret.get_secret_value()
    text = encode_key(key)
    assert text not in repr(key) and secret.hex() not in repr(key) and key.key_id in repr(key)
    f = write_key_file(tmp_path / "k", key)
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert load_key(key_file=f).key_id == key.key_id
    monkeypatch.setenv("CVD_TEST_KEY", secret.hex())  # hex works too
    assert load_key(key_env="CVD_TEST_KEY").key_id == key.key_id
    with pytest.raises(UsageError, match="exactly one"):
        load_key(key_file=f, key_env="CVD_TEST_KEY")
    with pytest.raises(UsageError, match="exactly one"):
        load_key()
    with pytest.raises(InputError, match="not set"):
        load_key(key_env="CVD_TEST_KEY_MISSING")
    with pytest.raises(UsageError, match="already exists"):
        write_key_file(f, key)
    with pytest.raises(InputError, match="does not hold a 256-bit key") as exc:
        parse_key("c2hvcnQ=", source="test")
    assert "c2hvcnQ" not in str(exc.value)  # the bad value is never echoed


# --- round trip --------------------------------------------------------------------------


def test_encrypt_records_key_id_and_predicts_like_plain(plain: Path, key: ModelKey) -> None:
    enc = _encrypted(plain, key, plain.parent / "enc")
    art = enc.artifact("onnx-fp32")
    assert art.encryption is not None and art.encryption.key_id == key.key_id
    assert all(f.path.endswith(".enc") for f in art.files)
    assert not list(enc.path.rglob("*.onnx")), "plaintext model left in the encrypted bundle"
    text = (enc.path / "bundle.json").read_text()
    assert encode_key(key) not in text and key.secret.get_secret_value().hex() not in text
    assert enc.manifest.history[-1].action == "encrypt"
    # the ciphertext does not contain the weights' bytes
    src = Bundle.load(plain)
    weights = src.model_file("onnx-fp32").read_bytes()
    blob = enc.file(art.files[0]).read_bytes()
    assert weights[-4096:] not in blob
    imgs = src.sample_images()
    np.testing.assert_equal(detections(enc, "onnx-fp32", imgs), detections(src, "onnx-fp32", imgs))
    # the same bundle read again from disk with a loader made from the key
    np.testing.assert_equal(
        detections(Bundle.load(enc.path, loader=model_loader(key)), "onnx-fp32", imgs),
        detections(src, "onnx-fp32", imgs),
    )
    # plain bundles are not touched and keep no `encryption` key in their manifest
    assert "encryption" not in (plain / "bundle.json").read_text()


def test_decrypt_restores_the_exact_files(plain: Path, key: ModelKey) -> None:
    enc = _encrypted(plain, key, plain.parent / "enc")
    rep = decrypt_bundle(enc, key, out=plain.parent / "dec")
    assert rep.changed == ["onnx-fp32"]
    dec = Bundle.load(plain.parent / "dec")
    assert dec.artifact("onnx-fp32").encryption is None
    assert (
        dec.model_file("onnx-fp32").read_bytes()
        == Bundle.load(plain).model_file("onnx-fp32").read_bytes()
    )


def test_in_place_encryption_and_stages_that_need_plain_files(plain: Path, key: ModelKey) -> None:
    rep = encrypt_bundle(Bundle.load(plain), key)
    assert rep.changed == ["onnx-fp32"]
    b = Bundle.load(plain)
    with pytest.raises(UsageError, match="is encrypted"):
        b.model_file("onnx-fp32")
    with pytest.raises(UsageError, match="give its key"):
        Predictor.from_bundle(b, "onnx-fp32")
    again = encrypt_bundle(b, key)
    assert again.changed == [] and again.skipped == ["onnx-fp32"]


# --- attacks -----------------------------------------------------------------------------


def test_wrong_key(plain: Path, key: ModelKey) -> None:
    enc = _encrypted(plain, key, plain.parent / "enc")
    with pytest.raises(IntegrityError, match="cannot decrypt artifact onnx-fp32: wrong key"):
        Predictor.from_bundle(
            Bundle.load(enc.path, loader=model_loader(generate_key())), "onnx-fp32"
        )
    # a wrong key that claims the right key id (manifest edited to match it) still fails
    other = generate_key()
    data = read_manifest(enc.path)
    data["artifacts"][0]["encryption"]["key_id"] = other.key_id
    write_manifest(enc.path, data)
    with pytest.raises(IntegrityError, match="wrong key or the file was modified"):
        Predictor.from_bundle(Bundle.load(enc.path, loader=model_loader(other)), "onnx-fp32")


def test_flipped_byte(plain: Path, key: ModelKey) -> None:
    enc = _encrypted(plain, key, plain.parent / "enc")
    f = enc.file(enc.artifact("onnx-fp32").files[0])
    flip_byte(f)
    with pytest.raises(IntegrityError, match="was altered"):
        Bundle.load(enc.path, loader=model_loader(key))  # the manifest's sha256 catches it first
    rehash(enc.path)  # an attacker who also fixes the manifest's sha256
    with pytest.raises(IntegrityError, match="wrong key or the file was modified"):
        Predictor.from_bundle(Bundle.load(enc.path, loader=model_loader(key)), "onnx-fp32")
    f.write_bytes(b"short")
    rehash(enc.path)
    with pytest.raises(IntegrityError, match="not a cvdeploy encrypted file"):
        Predictor.from_bundle(Bundle.load(enc.path, loader=model_loader(key)), "onnx-fp32")


def test_ciphertexts_swapped_between_artifacts(plain: Path, key: ModelKey) -> None:
    add_copy(plain, "onnx-fp32", "onnx-copy")
    enc = _encrypted(plain, key, plain.parent / "enc")
    a = enc.file(enc.artifact("onnx-fp32").files[0])
    b = enc.file(enc.artifact("onnx-copy").files[0])
    ba, bb = a.read_bytes(), b.read_bytes()
    a.write_bytes(bb)
    b.write_bytes(ba)
    rehash(enc.path)
    swapped = Bundle.load(enc.path, loader=model_loader(key))
    for aid in ("onnx-fp32", "onnx-copy"):
        with pytest.raises(IntegrityError, match=f"cannot decrypt artifact {aid}"):
            Predictor.from_bundle(swapped, aid)


def test_ciphertext_moved_to_another_bundle(tmp_path: Path, key: ModelKey) -> None:
    b1 = make_bundle(tmp_path / "one", seed=0)
    b2 = make_bundle(tmp_path / "two", seed=1)
    e1 = _encrypted(b1, key, tmp_path / "e1")
    e2 = _encrypted(b2, key, tmp_path / "e2")
    src = e1.file(e1.artifact("onnx-fp32").files[0])
    dst = e2.file(e2.artifact("onnx-fp32").files[0])
    dst.write_bytes(src.read_bytes())
    rehash(e2.path)
    with pytest.raises(IntegrityError, match="wrong key or the file was modified"):
        Predictor.from_bundle(Bundle.load(e2.path, loader=model_loader(key)), "onnx-fp32")


@pytest.mark.parametrize(
    "edit",
    ["class names", "thresholds", "artifact precision", "input shape", "salt"],
)
def test_manifest_edited_after_encryption(plain: Path, key: ModelKey, edit: str) -> None:
    enc = _encrypted(plain, key, plain.parent / "enc")
    data = read_manifest(enc.path)
    art = data["artifacts"][0]
    if edit == "class names":
        data["spec"]["names"] = ["cat", "dog", "bird"]
    elif edit == "thresholds":
        data["spec"]["decoder"]["conf"] = 0.9
    elif edit == "artifact precision":
        art["precision"] = "fp16"
    elif edit == "input shape":
        art["io"]["inputs"][0]["shape"] = [1, 3, 64, 64]
    else:
        art["encryption"]["salt"] = "00" * 16
    write_manifest(enc.path, data)
    with pytest.raises(IntegrityError, match="wrong key or the file was modified"):
        Predictor.from_bundle(Bundle.load(enc.path, loader=model_loader(key)), "onnx-fp32")


def test_torch_encrypted_artifacts_are_refused_clearly(plain: Path, key: ModelKey) -> None:
    add_copy(plain, "onnx-fp32", "torch-fake", fmt="torch")
    enc = _encrypted(plain, key, plain.parent / "enc")
    with pytest.raises(UsageError, match="supported for onnx, openvino, tflite only"):
        Predictor.from_bundle(enc, "torch-fake")


# --- nothing plain on disk ---------------------------------------------------------------


def test_no_plaintext_model_is_written_while_loading(
    plain: Path, key: ModelKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = _encrypted(plain, key, tmp_path / "enc")
    imgs = images(tmp_path / "more")
    weights = Bundle.load(plain).model_file("onnx-fp32").read_bytes()
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr("tempfile.tempdir", str(tmpdir))
    writes: list[str] = []
    real_open = builtins.open
    real_os_open = os.open

    def spy_open(file, mode="r", *a, **kw):  # type: ignore[no-untyped-def]
        if any(c in str(mode) for c in "wax+"):
            writes.append(str(file))
        return real_open(file, mode, *a, **kw)

    def spy_os_open(path, flags, *a, **kw):  # type: ignore[no-untyped-def]
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            writes.append(str(path))
        return real_os_open(path, flags, *a, **kw)

    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    got = detections(Bundle.load(enc.path, loader=model_loader(key)), "onnx-fp32", imgs)
    monkeypatch.undo()
    assert got and writes == [], writes
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before, sorted(set(after) - set(before))
    assert not any(tmpdir.iterdir())
    # and no file anywhere under the test's directory holds the plaintext weights
    tail = weights[-1024:]
    assert not [p for p in enc.path.rglob("*") if p.is_file() and tail in p.read_bytes()]


# --- OpenVINO ----------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed")
def test_encrypted_openvino_predicts_like_plain(plain: Path, key: ModelKey) -> None:
    from cvdeploy.export import export_model

    export_model(plain, formats=["openvino"])
    src = Bundle.load(plain)
    art = src.artifact("openvino-fp32")
    assert [Path(f.path).suffix for f in art.files] == [".xml", ".bin"]
    enc = _encrypted(plain, key, plain.parent / "enc")
    assert enc.artifact("openvino-fp32").encryption is not None
    assert not list(enc.path.rglob("*.bin")) and not list(enc.path.rglob("*.xml"))
    imgs = src.sample_images()
    want = detections(src, "openvino-fp32", imgs)
    assert sum(len(s) for _, s, _ in want) > 0
    np.testing.assert_equal(detections(enc, "openvino-fp32", imgs), want)
    with pytest.raises(IntegrityError, match="cannot decrypt artifact openvino-fp32"):
        Predictor.from_bundle(
            Bundle.load(enc.path, loader=model_loader(generate_key())), "openvino-fp32"
        )


# --- CLI ---------------------------------------------------------------------------------


def test_cli_keygen_encrypt_predict(plain: Path, tmp_path: Path) -> None:
    kf = tmp_path / "model.key"
    code, out = cli(["keygen", "--key-file", str(kf)])
    assert code == 0 and "model key aes256:" in out and kf.read_text().strip() not in out
    code, out = cli(["encrypt", str(plain), "--key-file", str(kf), "--out", str(tmp_path / "e")])
    assert code == 0 and "encrypted onnx-fp32" in out, out
    img = str(Bundle.load(plain).sample_images()[0])
    code, out = cli(["predict", str(tmp_path / "e"), img, "--key-file", str(kf), "--json"])
    assert code == 0 and '"predictions"' in out, out
    code, out = cli(["predict", str(tmp_path / "e"), img])
    assert code == 2 and "is encrypted: give its key" in out
    cli(["keygen", "--key-file", str(tmp_path / "other.key")])
    code, out = cli(
        ["predict", str(tmp_path / "e"), img, "--key-file", str(tmp_path / "other.key")]
    )
    assert code == 2 and "cannot decrypt artifact onnx-fp32: wrong key" in out
    bench = ["bench", str(tmp_path / "e"), "--iters", "3", "--warmup", "1", "--no-record"]
    code, out = cli([*bench, "--key-file", str(kf), "--json"])
    assert code == 0 and '"onnx-fp32"' in out, out
    code, out = cli(bench)
    assert code == 2 and "is encrypted: give its key" in out
    env = {"CVD_MODEL_KEY": kf.read_text().strip()}
    code, out = cli(["predict", str(tmp_path / "e"), img, "--key-env", "CVD_MODEL_KEY"], env=env)
    assert code == 0, out
    code, out = cli(
        ["decrypt", str(tmp_path / "e"), "--key-file", str(kf), "--out", str(tmp_path / "d")]
    )
    assert code == 0 and Bundle.load(tmp_path / "d").artifact("onnx-fp32").encryption is None
    code, out = cli(["encrypt", str(plain)])
    assert code == 2 and "exactly one of --key-file or --key-env" in out


def test_missing_cryptography_is_a_clear_error(
    plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cvdeploy.security.crypto as mod

    kf = write_key_file(tmp_path / "k", generate_key())
    real = importlib.util.find_spec
    monkeypatch.setattr(
        mod.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "cryptography" else real(name, *a),
    )
    code, out = cli(["encrypt", str(plain), "--key-file", str(kf)])
    assert code == 2 and "pip install 'cvdeploy[security]'" in out
    assert "encryption" not in (plain / "bundle.json").read_text()


@pytest.mark.slow
def test_encrypted_tflite_predicts_like_plain(plain: Path, key: ModelKey) -> None:
    from cvdeploy.export import EXPORTERS, export_model
    from cvdeploy.runtime import RUNTIMES

    if not (
        EXPORTERS.availability("tflite").available and RUNTIMES.availability("tflite").available
    ):
        pytest.skip("the tflite exporter or runtime is not installed")
    export_model(plain, formats=["tflite"])
    src = Bundle.load(plain)
    enc = _encrypted(plain, key, plain.parent / "enc")
    assert not list(enc.path.rglob("*.tflite"))
    imgs = src.sample_images()
    want = detections(src, "tflite-fp32", imgs)
    assert sum(len(s) for _, s, _ in want) > 0
    np.testing.assert_equal(detections(enc, "tflite-fp32", imgs), want)
