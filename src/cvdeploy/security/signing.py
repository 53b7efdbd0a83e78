"""Signed bundles: a detached Ed25519 signature over the canonical manifest.

The manifest lists every file with its sha256, so one signature over a canonical JSON of
``bundle.json`` (sorted keys, no spaces, UTF-8) covers the spec, the artifacts, their checks
and every byte of their files. The signature lives beside the manifest in ``bundle.sig``
(JSON: algorithm, key id, the manifest's digest, the signature), outside the manifest, so
signing does not change what is signed. Any later change to the bundle (an eval, an export)
changes the manifest, and the bundle must be signed again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvdeploy.bundle import MANIFEST, Bundle, now, run_bundle_hooks, sha256_file
from cvdeploy.errors import BundleError, CheckFailed, InputError, UsageError
from cvdeploy.fsutil import write_atomic
from cvdeploy.jsonsafe import loads as json_loads
from cvdeploy.security.crypto import require_cryptography

__all__ = [
    "SIGNATURE_FILE",
    "VerifyReport",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "require_signed",
    "sign_bundle",
    "verify_bundle",
]

SIGNATURE_FILE = "bundle.sig"
FORMAT = "cvdeploy-signature-v1"
_DOMAIN = b"cvdeploy bundle manifest v1\x00"


def _ed25519() -> Any:
    require_cryptography()
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519


def _raw_public(public_key: Any) -> bytes:
    require_cryptography()
    from cryptography.hazmat.primitives import serialization

    raw: bytes = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw


def key_id(public_key: Any) -> str:
    """A fingerprint of an Ed25519 public key."""
    return "ed25519:" + hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


def generate_keypair(private_path: Path, public_path: Path, *, overwrite: bool = False) -> str:
    """Write a new Ed25519 key pair as PEM files (the private one with mode 0600).

    Returns:
        The key id.
    """
    require_cryptography()
    from cryptography.hazmat.primitives import serialization

    for p in (private_path, public_path):
        if Path(p).exists() and not overwrite:
            raise UsageError(f"{p} already exists", hint="choose other paths")
    priv = _ed25519().Ed25519PrivateKey.generate()
    pem_priv = priv.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pem_pub = priv.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_atomic(Path(private_path), pem_priv, mode=0o600)
    write_atomic(Path(public_path), pem_pub, mode=0o644)
    return key_id(priv.public_key())


def load_private_key(path: Path) -> Any:
    """Read an Ed25519 private key (PEM, unencrypted PKCS8).

    Raises:
        InputError: Missing file, or not an Ed25519 private key.
    """
    require_cryptography()
    from cryptography.hazmat.primitives import serialization

    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"{path} is not an unencrypted PEM private key ({exc.__class__.__name__})",
            hint="make a key pair with `cvdeploy keygen --signing-key PRIV --public-key PUB`",
        ) from None
    if not isinstance(key, _ed25519().Ed25519PrivateKey):
        raise InputError(f"{path} is not an Ed25519 key", hint="cvdeploy signs with Ed25519 only")
    return key


def load_public_key(path: Path) -> Any:
    """Read an Ed25519 public key (PEM).

    Raises:
        InputError: Missing file, or not an Ed25519 public key.
    """
    require_cryptography()
    from cryptography.hazmat.primitives import serialization

    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"{path} is not a PEM public key ({exc.__class__.__name__})",
            hint="pass the .pem written by `cvdeploy keygen --public-key`",
        ) from None
    if not isinstance(key, _ed25519().Ed25519PublicKey):
        raise InputError(f"{path} is not an Ed25519 key", hint="cvdeploy signs with Ed25519 only")
    return key


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.__class__.__name__}") from None


def canonical_manifest(bundle_dir: Path) -> bytes:
    """The signed bytes: ``bundle.json`` parsed and re-serialised canonically.

    Raises:
        BundleError: No readable JSON manifest.
    """
    mf = Path(bundle_dir) / MANIFEST
    try:
        data = json_loads(mf.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # JSON, UTF-8, nested too deep
        raise BundleError(f"cannot read {mf}: {exc.__class__.__name__}") from None
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_bundle(bundle_dir: Path, private_key_path: Path) -> Path:
    """Check the bundle's files against its manifest, then write ``bundle.sig``.

    Returns:
        The signature file.

    Raises:
        IntegrityError: A file differs from the manifest (an altered bundle is not signed).
    """
    bundle = Bundle.load(bundle_dir)  # verifies every file's sha256
    priv = load_private_key(private_key_path)
    payload = canonical_manifest(bundle.path)
    sig = {
        "format": FORMAT,
        "algorithm": "Ed25519",
        "key_id": key_id(priv.public_key()),
        "bundle": bundle.name,
        "manifest_sha256": hashlib.sha256(payload).hexdigest(),
        "signed": now().isoformat(),
        "signature": base64.b64encode(priv.sign(_DOMAIN + payload)).decode("ascii"),
    }
    out = bundle.path / SIGNATURE_FILE
    write_atomic(out, (json.dumps(sig, indent=2) + "\n").encode(), mode=0o644)
    run_bundle_hooks(bundle.path, bundle.manifest)  # the model card shows the signature
    return out


def signature_status(bundle_dir: Path, public_key: Any | None = None) -> dict[str, Any]:
    """What ``bundle.sig`` says about a bundle, for reports and the model card.

    Without a public key nothing is verified cryptographically (and cryptography is not
    needed): the signature's key id and time are read, and whether it was made over the
    current manifest (its recorded sha256). With one, :func:`verify_bundle` runs.

    Returns:
        ``{"signed", "key_id", "signed_at", "current", "verified", "problems"}``; ``current``
        is whether the signature covers the manifest as it is now, ``verified`` is ``None``
        when no key was given.
    """
    d = Path(bundle_dir)
    out: dict[str, Any] = {
        "signed": False,
        "key_id": None,
        "signed_at": None,
        "current": False,
        "verified": None,
        "problems": [],
    }
    sig_file = d / SIGNATURE_FILE
    if not sig_file.is_file():
        return out
    try:
        sig = json.loads(sig_file.read_text(encoding="utf-8"))
        if not isinstance(sig, dict) or sig.get("format") != FORMAT:
            raise ValueError("unknown format")
    except (OSError, ValueError, UnicodeDecodeError):
        out["problems"] = [f"{SIGNATURE_FILE} is malformed"]
        return out
    out.update(signed=True, key_id=sig.get("key_id"), signed_at=sig.get("signed"))
    try:
        current = hashlib.sha256(canonical_manifest(d)).hexdigest() == sig.get("manifest_sha256")
    except BundleError:
        current = False
    out["current"] = current
    if public_key is not None:
        rep = verify_bundle(d, public_key)
        out["verified"] = rep.ok
        out["problems"] = rep.problems
    return out


@dataclass(slots=True)
class VerifyReport:
    """The outcome of :func:`verify_bundle`.

    Attributes:
        bundle: The bundle directory.
        ok: Signature valid and every file matches the signed manifest.
        problems: What is wrong (empty when ``ok``).
        key_id: The trusted public key's id.
        signed_by: The key id recorded in the signature (``None`` without one).
        files: Files checked.
    """

    bundle: Path
    ok: bool
    problems: list[str] = field(default_factory=list)
    key_id: str = ""
    signed_by: str | None = None
    files: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {
            "bundle": str(self.bundle),
            "ok": self.ok,
            "problems": self.problems,
            "key_id": self.key_id,
            "signed_by": self.signed_by,
            "files": self.files,
        }


def verify_bundle(bundle_dir: Path, public_key: Any) -> VerifyReport:
    """Check the signature with a trusted public key and every file against the manifest.

    Args:
        bundle_dir: The bundle directory.
        public_key: An Ed25519 public key object, or a path to its PEM.

    Returns:
        The report (every problem found, not just the first).
    """
    require_cryptography()
    from cryptography.exceptions import InvalidSignature

    pub = load_public_key(Path(public_key)) if isinstance(public_key, str | Path) else public_key
    d = Path(bundle_dir)
    if d.name == MANIFEST:
        d = d.parent
    rep = VerifyReport(bundle=d, ok=False, key_id=key_id(pub))
    if not (d / MANIFEST).is_file():
        rep.problems.append(f"{d} is not a bundle: it has no {MANIFEST}")
        return rep
    payload = canonical_manifest(d)
    sig_file = d / SIGNATURE_FILE
    sig: dict[str, Any] | None = None
    if not sig_file.is_file():
        rep.problems.append(f"the bundle is not signed: {SIGNATURE_FILE} is missing")
    else:
        try:
            sig = json_loads(sig_file.read_text(encoding="utf-8"))
            if not isinstance(sig, dict) or sig.get("format") != FORMAT:
                raise ValueError("unknown format")
            raw_sig = base64.b64decode(str(sig["signature"]), validate=True)
        except (OSError, ValueError, KeyError, binascii.Error, UnicodeDecodeError):
            rep.problems.append(f"{SIGNATURE_FILE} is malformed")
            sig = None
    if sig is not None:
        rep.signed_by = str(sig.get("key_id"))
        try:
            pub.verify(raw_sig, _DOMAIN + payload)
        except InvalidSignature:
            if hashlib.sha256(payload).hexdigest() != sig.get("manifest_sha256"):
                rep.problems.append(f"{MANIFEST} was changed after it was signed")
            elif rep.signed_by != rep.key_id:
                rep.problems.append(
                    f"the signature was made with key {rep.signed_by}, not with the trusted "
                    f"key {rep.key_id}"
                )
            else:
                rep.problems.append("the signature does not verify (it was altered)")
    rep.problems.extend(_file_problems(d, rep))
    rep.ok = not rep.problems
    return rep


def _file_problems(d: Path, rep: VerifyReport) -> list[str]:
    """Every listed file that is missing or differs from the manifest."""
    try:
        data = json_loads((d / MANIFEST).read_text(encoding="utf-8"))
        refs = [f for a in data.get("artifacts", []) for f in a.get("files", [])]
        refs += list(data.get("samples", []))
    except (OSError, ValueError, AttributeError, TypeError):
        return [f"{MANIFEST} is not a valid manifest"]
    problems = []
    root = d.resolve()
    for ref in refs:
        try:
            rel, want = str(ref["path"]), str(ref["sha256"])
        except (KeyError, TypeError):
            problems.append(f"{MANIFEST} has a malformed file entry")
            continue
        f = (d / rel).resolve()
        if not f.is_relative_to(root):
            problems.append(f"{rel} points outside the bundle")
            continue
        rep.files += 1
        if not f.is_file():
            problems.append(f"{rel} is missing")
        elif sha256_file(f) != want:
            problems.append(f"{rel} was altered: its sha256 differs from the manifest")
    return problems


def require_signed(bundle_dir: Path, public_key: Any) -> None:
    """Refuse a bundle that is unsigned, altered or signed by another key.

    Raises:
        CheckFailed: Listing the problems.
    """
    rep = verify_bundle(bundle_dir, public_key)
    if not rep.ok:
        raise CheckFailed(
            f"bundle {rep.bundle} failed signature verification: " + "; ".join(rep.problems),
            hint="sign it with `cvdeploy sign BUNDLE --key PRIVATE.pem` using the trusted key's "
            "private half, or restore the original files",
        )
