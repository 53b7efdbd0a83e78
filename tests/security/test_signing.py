"""Signed bundles: Ed25519 over the canonical manifest; verify; a server that trusts one key."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path

import pytest

from cvdeploy.bundle import Bundle
from cvdeploy.errors import CheckFailed, InputError
from cvdeploy.security.signing import (
    SIGNATURE_FILE,
    generate_keypair,
    load_public_key,
    require_signed,
    sign_bundle,
    verify_bundle,
)
from tests.security.protect_helpers import (
    cli,
    flip_byte,
    make_bundle,
    read_manifest,
    write_manifest,
)

HAS_SERVE = all(
    importlib.util.find_spec(m) is not None
    for m in ("fastapi", "uvicorn", "prometheus_client", "multipart", "httpx")
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    generate_keypair(d / "sign.pem", d / "pub.pem")
    generate_keypair(d / "other.pem", d / "other_pub.pem")
    return d / "sign.pem", d / "pub.pem", d / "other.pem", d / "other_pub.pem"


@pytest.fixture()
def signed(tmp_path: Path, keys: tuple[Path, Path, Path, Path]) -> Path:
    b = make_bundle(tmp_path / "s")
    sign_bundle(b, keys[0])
    return b


def test_sign_and_verify(signed: Path, keys: tuple[Path, Path, Path, Path]) -> None:
    rep = verify_bundle(signed, keys[1])
    assert rep.ok and rep.problems == [] and rep.files >= 2 and rep.signed_by == rep.key_id
    sig = json.loads((signed / SIGNATURE_FILE).read_text())
    assert sig["algorithm"] == "Ed25519" and sig["key_id"].startswith("ed25519:")
    require_signed(signed, keys[1])
    # any later change through the library (eval, export...) needs a new signature
    b = Bundle.load(signed)
    with b.edit(action="eval"):
        pass
    assert verify_bundle(signed, keys[1]).problems == [
        "bundle.json was changed after it was signed"
    ]
    sign_bundle(signed, keys[0])
    # re-serialising the manifest (same content, other whitespace/key order) keeps it valid
    data = read_manifest(signed)
    (signed / "bundle.json").write_text(json.dumps(data, sort_keys=True))
    assert verify_bundle(signed, keys[1]).ok


def test_altered_manifest(signed: Path, keys: tuple[Path, Path, Path, Path]) -> None:
    data = read_manifest(signed)
    data["spec"]["decoder"]["conf"] = 0.01
    write_manifest(signed, data)
    rep = verify_bundle(signed, keys[1])
    assert not rep.ok and rep.problems == ["bundle.json was changed after it was signed"]


def test_altered_file_and_manifest_hash(signed: Path, keys: tuple[Path, Path, Path, Path]) -> None:
    model = next(signed.rglob("*.onnx"))
    flip_byte(model)
    rep = verify_bundle(signed, keys[1])
    rel = model.relative_to(signed).as_posix()
    assert rep.problems == [f"{rel} was altered: its sha256 differs from the manifest"]
    from tests.security.protect_helpers import rehash

    rehash(signed)  # the attacker fixes the hash: now the signature breaks
    rep = verify_bundle(signed, keys[1])
    assert rep.problems == ["bundle.json was changed after it was signed"]


def test_deleted_file(signed: Path, keys: tuple[Path, Path, Path, Path]) -> None:
    sample = next((signed / "samples").iterdir())
    sample.unlink()
    rep = verify_bundle(signed, keys[1])
    assert rep.problems == [f"samples/{sample.name} is missing"]


def test_missing_signature(signed: Path, keys: tuple[Path, Path, Path, Path]) -> None:
    (signed / SIGNATURE_FILE).unlink()
    rep = verify_bundle(signed, keys[1])
    assert rep.problems == ["the bundle is not signed: bundle.sig is missing"]
    with pytest.raises(CheckFailed, match="not signed"):
        require_signed(signed, keys[1])


def test_wrong_public_key_and_forged_signature(
    signed: Path, keys: tuple[Path, Path, Path, Path]
) -> None:
    rep = verify_bundle(signed, keys[3])
    assert not rep.ok and "not with the trusted key" in rep.problems[0]
    # re-signed by another key but claiming the trusted key's id
    sign_bundle(signed, keys[2])
    sig = json.loads((signed / SIGNATURE_FILE).read_text())
    sig["key_id"] = verify_bundle(signed, keys[1]).key_id
    (signed / SIGNATURE_FILE).write_text(json.dumps(sig))
    assert verify_bundle(signed, keys[1]).problems == [
        "the signature does not verify (it was altered)"
    ]
    (signed / SIGNATURE_FILE).write_text("{not json")
    assert verify_bundle(signed, keys[1]).problems == ["bundle.sig is malformed"]


def test_key_files_are_checked(tmp_path: Path, keys: tuple[Path, Path, Path, Path]) -> None:
    with pytest.raises(InputError, match="not a PEM public key"):
        load_public_key(keys[0])  # a private key is not a public key
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(InputError, match="not a PEM public key"):
        load_public_key(tmp_path / "junk.pem")
    with pytest.raises(InputError, match="cannot read public key"):
        load_public_key(tmp_path / "missing.pem")


def test_an_altered_bundle_is_not_signed(
    tmp_path: Path, keys: tuple[Path, Path, Path, Path]
) -> None:
    b = make_bundle(tmp_path / "x")
    flip_byte(next(b.rglob("*.onnx")))
    code, out = cli(["sign", str(b), "--key", str(keys[0])])
    assert code == 2 and "was altered" in out and not (b / SIGNATURE_FILE).exists()


def test_cli_keygen_sign_verify(tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "c")
    priv, pub = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    code, out = cli(["keygen", "--signing-key", str(priv), "--public-key", str(pub)])
    assert code == 0 and "signing key ed25519:" in out
    code, out = cli(["verify", str(b), "--public-key", str(pub)])
    assert code == 1 and "not signed" in out
    code, out = cli(["sign", str(b), "--key", str(priv)])
    assert code == 0 and "signed" in out
    code, out = cli(["verify", str(b), "--public-key", str(pub)])
    assert code == 0 and out.startswith("ok:")
    flip_byte(next(b.rglob("*.onnx")))
    code, out = cli(["verify", str(b), "--public-key", str(pub), "--json"])
    assert code == 1 and json.loads(out)["ok"] is False and "was altered" in out
    code, out = cli(["keygen", "--signing-key", str(priv), "--public-key", str(pub)])
    assert code == 2 and "already exists" in out


# --- the server --------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_SERVE, reason="the serve extra is not installed")
def test_server_with_trusted_key_refuses_unsigned_and_altered(
    tmp_path: Path, keys: tuple[Path, Path, Path, Path]
) -> None:
    from cvdeploy.serve.registry import ModelRegistry
    from tests.serve.conftest import serving

    unsigned = make_bundle(tmp_path / "u")
    with serving(unsigned, ready=False, trusted_public_key=keys[1]) as c:
        time.sleep(0.5)
        r = c.get("/readyz")
        assert r.status_code == 503
        errors = c.get("/v1/models").json()["errors"]
        assert "not signed" in errors["tiny"], errors

    reg = ModelRegistry(tmp_path / "reg", create=True)
    good = make_bundle(tmp_path / "g", seed=0)
    sign_bundle(good, keys[0])
    reg.add(good)  # version 1, production
    reg.add(make_bundle(tmp_path / "u2", seed=1))  # version 2: unsigned
    tampered = make_bundle(tmp_path / "t", seed=2)
    sign_bundle(tampered, keys[0])
    reg.add(tampered, version="3")
    flip_byte(next(reg.bundle_path("tiny", "3").rglob("*.onnx")))
    other = make_bundle(tmp_path / "o", seed=3)
    sign_bundle(other, keys[2])  # signed, by an untrusted key
    reg.add(other, version="4")
    with serving(reg.root, poll_interval_s=0.1, trusted_public_key=keys[1]) as c:
        assert c.get("/readyz").json()["models"] == {"tiny": "1"}
        for version, why in (
            ("2", "not signed"),
            ("3", "was altered"),
            ("4", "not with the trusted key"),
        ):
            reg.promote("tiny", version)
            end = time.monotonic() + 20
            while f"version {version} failed" not in str(c.get("/v1/models").json()["errors"]):
                assert time.monotonic() < end, "the refused version was not reported"
                time.sleep(0.05)
            assert why in c.get("/v1/models").json()["errors"]["tiny"]
            assert c.get("/readyz").json()["models"] == {"tiny": "1"}  # v1 keeps serving


@pytest.mark.skipif(not HAS_SERVE, reason="the serve extra is not installed")
def test_server_serves_signed_encrypted_bundle(
    tmp_path: Path, keys: tuple[Path, Path, Path, Path]
) -> None:
    from cvdeploy.security.crypto import encrypt_bundle, generate_key, write_key_file
    from tests.serve.conftest import serving

    b = make_bundle(tmp_path / "b")
    key = generate_key()
    kf = write_key_file(tmp_path / "model.key", key)
    encrypt_bundle(Bundle.load(b), key)
    sign_bundle(b, keys[0])
    jpeg = next((b / "samples").iterdir()).read_bytes()
    with serving(b, trusted_public_key=keys[1], model_key_file=kf) as c:
        r = c.post("/v1/models/tiny/predict", content=jpeg, headers={"content-type": "image/jpeg"})
        assert r.status_code == 200, r.text
    # without the key it does not become ready, and says why
    with serving(b, ready=False, trusted_public_key=keys[1]) as c:
        time.sleep(0.5)
        assert c.get("/readyz").status_code == 503
        assert "give its key" in c.get("/v1/models").json()["errors"]["tiny"]
    shutil.rmtree(b)


@pytest.mark.skipif(not HAS_SERVE, reason="the serve extra is not installed")
def test_serve_cli_fails_fast(tmp_path: Path, keys: tuple[Path, Path, Path, Path]) -> None:
    from cvdeploy.security.crypto import encrypt_bundle, generate_key, write_key_file

    b = make_bundle(tmp_path / "b")
    code, out = cli(["serve", str(b), "--trusted-key", str(keys[1])])
    assert code == 1 and "not signed" in out
    key = generate_key()
    encrypt_bundle(Bundle.load(b), key)
    code, out = cli(["serve", str(b)])
    assert code == 2 and "is encrypted: give its key" in out
    wrong = write_key_file(tmp_path / "wrong.key", generate_key())
    code, out = cli(["serve", str(b), "--key-file", str(wrong)])
    assert code == 2 and "cannot decrypt artifact onnx-fp32: wrong key" in out
