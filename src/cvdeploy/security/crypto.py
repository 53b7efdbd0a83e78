"""Encrypted model artifacts: AES-256-GCM per file, bound to the bundle and the artifact.

Each model file ``F`` of an artifact is replaced by ``F.enc``: ``MAGIC | nonce | ciphertext``,
where the ciphertext (with its 16-byte tag) is AES-256-GCM under a fresh random 96-bit nonce.
The associated data is a canonical JSON of what the file belongs to: the bundle's name and
creation time, the spec, the artifact's id, format, precision, io, provenance and creation
time, the file's plain name and the key id. Moving a ciphertext to another artifact or
bundle, or editing any of those manifest fields, makes decryption fail; the manifest's
sha256 of the ``.enc`` file still lets :meth:`Bundle.load` check the file before any key
is needed. The manifest records the key's fingerprint (``key_id``), never the key.

Runtimes get the plaintext in memory through :func:`model_loader` (a bundle loaded with it
hands runners the decrypted bytes, :meth:`cvdeploy.bundle.Bundle.model_files`);
nothing decrypted is written to disk, except by the explicit :func:`decrypt_bundle`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib.util
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretBytes

from cvdeploy.bundle import ArtifactLoader, ModelFiles
from cvdeploy.errors import BackendUnavailable, InputError, IntegrityError, UsageError
from cvdeploy.fsutil import write_atomic

if TYPE_CHECKING:
    from cvdeploy.bundle import Artifact, Bundle, BundleEdit, Manifest

__all__ = [
    "ENCRYPTED_SUFFIX",
    "LOADABLE_FORMATS",
    "SCHEME",
    "ModelKey",
    "decrypt_artifact_files",
    "decrypt_bundle",
    "encrypt_bundle",
    "generate_key",
    "key_from_options",
    "load_key",
    "model_loader",
    "write_key_file",
]

SCHEME = "aes-256-gcm-v1"
ENCRYPTED_SUFFIX = ".enc"
MAGIC = b"CVDENC1\x00"
KEY_BYTES = 32
NONCE_BYTES = 12
LOADABLE_FORMATS = ("onnx", "openvino", "tflite")
"""Formats whose runtimes load a decrypted model from memory."""
SIGNATURE_FILE = "bundle.sig"


@dataclass(frozen=True, slots=True)
class ModelKey:
    """A 256-bit AES key. Its repr and str show only the key id (a fingerprint).

    Attributes:
        secret: The key bytes (``SecretBytes``: never printed or logged).
        source: Where it came from (``file PATH`` / ``env VAR``), for messages.
    """

    secret: SecretBytes = field(repr=False)
    source: str = "memory"

    def __post_init__(self) -> None:
        if len(self.secret.get_secret_value()) != KEY_BYTES:
            raise InputError(
                f"a model key must be {KEY_BYTES} bytes (AES-256), "
                f"got {len(self.secret.get_secret_value())} from {self.source}",
                hint="make one with `cvdeploy keygen --key-file F`",
            )

    @property
    def key_id(self) -> str:
        """A public fingerprint of the key (safe to store in the manifest)."""
        digest = hashlib.sha256(b"cvdeploy model key id\x00" + self.secret.get_secret_value())
        return "aes256:" + digest.hexdigest()[:16]

    def __repr__(self) -> str:
        return f"ModelKey(key_id={self.key_id!r}, source={self.source!r})"

    def __str__(self) -> str:
        return self.__repr__()


def generate_key() -> ModelKey:
    """A fresh random key from the OS CSPRNG."""
    return ModelKey(SecretBytes(secrets.token_bytes(KEY_BYTES)), source="generated")


def encode_key(key: ModelKey) -> str:
    """The text form of a key (base64, one line), as written to key files and env vars."""
    return base64.b64encode(key.secret.get_secret_value()).decode("ascii")


def parse_key(text: str, *, source: str) -> ModelKey:
    """Parse a key written as base64 (44 characters) or hex (64 characters).

    Raises:
        InputError: The text is not a 256-bit key in either form (the text is never echoed).
    """
    s = text.strip()
    raw: bytes | None = None
    if len(s) == 2 * KEY_BYTES and all(c in "0123456789abcdefABCDEF" for c in s):
        raw = bytes.fromhex(s)
    else:
        try:
            raw = base64.b64decode(s, validate=True)
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != KEY_BYTES:
        raise InputError(
            f"{source} does not hold a 256-bit key (base64 or hex)",
            hint="make one with `cvdeploy keygen --key-file F`",
        )
    return ModelKey(SecretBytes(raw), source=source)


def write_key_file(path: Path, key: ModelKey, *, overwrite: bool = False) -> Path:
    """Write a key file readable by its owner only (mode 0600).

    Raises:
        UsageError: The file exists and ``overwrite`` is False.
    """
    p = Path(path)
    if p.exists() and not overwrite:
        raise UsageError(
            f"{p} already exists", hint="choose another path; replacing a key loses the models"
        )
    return write_atomic(p, (encode_key(key) + "\n").encode("ascii"), mode=0o600)


def load_key(*, key_file: Path | None = None, key_env: str | None = None) -> ModelKey:
    """Read a key from a file or an environment variable (exactly one of them).

    Raises:
        UsageError: Neither or both are given.
        InputError: The file or variable is missing or does not hold a key.
    """
    if (key_file is None) == (key_env is None):
        raise UsageError("give the model key with exactly one of --key-file or --key-env")
    if key_file is not None:
        p = Path(key_file)
        try:
            text = p.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read key file {p}: {exc.__class__.__name__}") from None
        return parse_key(text, source=f"key file {p}")
    assert key_env is not None
    value = os.environ.get(key_env)
    if not value:
        raise InputError(
            f"environment variable {key_env} is not set or empty",
            hint="export the base64 key (e.g. from your KMS) into it",
        )
    return parse_key(value, source=f"environment variable {key_env}")


def key_from_options(key_file: Path | None, key_env: str | None) -> ModelKey | None:
    """:func:`load_key` when either option is given, else ``None`` (for optional CLI flags)."""
    if key_file is None and key_env is None:
        return None
    return load_key(key_file=key_file, key_env=key_env)


# --- the format ---------------------------------------------------------------------------


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def associated_data(
    manifest: Manifest, artifact: Artifact, plain_name: str, key_id: str, salt: str
) -> bytes:
    """The AES-GCM associated data binding one file to its bundle, artifact and key."""
    bound = {
        "salt": salt,
        "scheme": SCHEME,
        "bundle": manifest.name,
        "bundle_created": manifest.created.isoformat(),
        "spec": manifest.spec.model_dump(mode="json"),
        "artifact": {
            "id": artifact.id,
            "format": artifact.format,
            "precision": artifact.precision,
            "io": artifact.io.model_dump(mode="json"),
            "produced_by": artifact.produced_by.model_dump(mode="json"),
            "created": artifact.created.isoformat(),
        },
        "file": plain_name,
        "key_id": key_id,
    }
    return _canonical(bound)


def require_cryptography() -> None:
    """Raise a clear error when the ``cryptography`` package (the security extra) is missing."""
    if importlib.util.find_spec("cryptography") is None:
        raise BackendUnavailable(
            "encrypted and signed bundles need the cryptography package, which is not installed",
            hint="pip install 'cvdeploy[security]'",
        )


def _aesgcm(key: ModelKey) -> Any:
    require_cryptography()
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key.secret.get_secret_value())


def seal(key: ModelKey, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt: ``MAGIC | nonce | ciphertext+tag`` with a fresh random nonce."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return MAGIC + nonce + _aesgcm(key).encrypt(nonce, plaintext, aad)


def unseal(key: ModelKey, blob: bytes, aad: bytes, *, what: str) -> bytes:
    """Decrypt and authenticate a :func:`seal` output.

    Raises:
        IntegrityError: Wrong key, altered file, or a file moved from elsewhere.
    """
    require_cryptography()
    from cryptography.exceptions import InvalidTag

    head = len(MAGIC) + NONCE_BYTES
    if len(blob) < head + 16 or not blob.startswith(MAGIC):
        raise IntegrityError(
            f"cannot decrypt {what}: it is not a cvdeploy encrypted file",
            hint="the file was replaced or truncated; restore it from the original bundle",
        )
    nonce = blob[len(MAGIC) : head]
    try:
        plain: bytes = _aesgcm(key).decrypt(nonce, blob[head:], aad)
    except InvalidTag:
        raise IntegrityError(
            f"cannot decrypt {what}: wrong key or the file was modified",
            hint="use the key the bundle was encrypted with; if it is the right key, the "
            "file or the manifest was altered (or the file was moved from another artifact)",
        ) from None
    return plain


def decrypt_artifact_files(bundle: Bundle, artifact: Artifact, key: ModelKey) -> list[bytes]:
    """Decrypt an artifact's files into memory, in the manifest's order (main file first).

    Raises:
        UsageError: The artifact is not encrypted.
        IntegrityError: Wrong key or altered file/manifest.
    """
    enc = artifact.encryption
    if enc is None:
        raise UsageError(f"artifact {artifact.id} is not encrypted")
    if enc.scheme != SCHEME:
        raise UsageError(f"artifact {artifact.id} uses unknown encryption {enc.scheme!r}")
    if key.key_id != enc.key_id:
        raise IntegrityError(
            f"cannot decrypt artifact {artifact.id}: wrong key (it was encrypted with key "
            f"{enc.key_id}; the {key.source} holds key {key.key_id})",
            hint="give the key the bundle was encrypted with (--key-file or --key-env)",
        )
    out = []
    for ref in artifact.files:
        path = bundle.file(ref)
        try:
            blob = path.read_bytes()
        except OSError as exc:
            raise IntegrityError(
                f"cannot read {ref.path} of artifact {artifact.id}: {exc.__class__.__name__}",
                hint="restore the file from the original bundle",
            ) from None
        name = _plain_name(artifact, ref.path)
        aad = associated_data(bundle.manifest, artifact, name, enc.key_id, enc.salt)
        out.append(unseal(key, blob, aad, what=f"artifact {artifact.id} ({name})"))
    return out


def model_loader(key: ModelKey | None) -> ArtifactLoader | None:
    """The artifact loader for bundles read with ``key``: encrypted artifacts are decrypted in
    memory (never written to disk), plain ones load from their files. ``None`` without a key.

    Raises (from the loader):
        UsageError: The artifact's format cannot be loaded from memory.
        IntegrityError: Wrong key, or an altered file or manifest.
    """
    if key is None:
        return None

    def load(bundle: Bundle, artifact: Artifact) -> ModelFiles:
        path = bundle.model_file(artifact, encrypted_ok=True)
        if artifact.encryption is None:
            return ModelFiles(path)
        if artifact.format not in LOADABLE_FORMATS:
            raise UsageError(
                f"artifact {artifact.id} is encrypted, and encrypted artifacts are supported "
                f"for {', '.join(LOADABLE_FORMATS)} only (not {artifact.format})",
                hint="serve one of those formats, or `cvdeploy decrypt` a copy on a trusted host",
            )
        files = decrypt_artifact_files(bundle, artifact, key)
        return ModelFiles(path, files[0], files[1] if len(files) > 1 else None)

    return load


def _plain_name(artifact: Artifact, path: str) -> str:
    """The file's name inside the artifact directory, without ``.enc``."""
    prefix = f"{artifact.id}/"
    rel = path[len(prefix) :] if path.startswith(prefix) else path
    return rel[: -len(ENCRYPTED_SUFFIX)] if rel.endswith(ENCRYPTED_SUFFIX) else rel


# --- bundle stages -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CryptoReport:
    """What :func:`encrypt_bundle` / :func:`decrypt_bundle` did."""

    bundle: Path
    key_id: str
    changed: list[str]
    skipped: list[str]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {
            "bundle": str(self.bundle),
            "key_id": self.key_id,
            "changed": self.changed,
            "skipped": self.skipped,
            "notes": self.notes,
        }


def _select(bundle: Bundle, artifacts: list[str] | None) -> list[Artifact]:
    if not artifacts:
        return list(bundle.manifest.artifacts)
    return [bundle.artifact(a) for a in artifacts]


def _staged(bundle: Bundle, out: Path | None, *, action: str, details: dict[str, Any]) -> Any:
    """An edit of ``bundle`` in place, or of a new bundle at ``out`` holding a copy of it."""
    from cvdeploy.bundle import Bundle as _Bundle

    if out is None or Path(out).resolve() == bundle.path.resolve():
        return bundle.edit(action=action, details=details)
    return _Bundle.create(
        out, name=bundle.name, spec=bundle.spec, action=action, details=details, copy_of=bundle
    )


def encrypt_bundle(
    bundle: Bundle,
    key: ModelKey,
    *,
    out: Path | None = None,
    artifacts: list[str] | None = None,
) -> CryptoReport:
    """Encrypt artifacts' files (default: every artifact) with AES-256-GCM.

    Args:
        bundle: The bundle (checked against its manifest before anything is written).
        key: The key.
        out: Write a new bundle there (default: replace the bundle atomically).
        artifacts: Artifact ids (default: all).

    Returns:
        The report; artifacts already encrypted are skipped.
    """
    chosen = _select(bundle, artifacts)
    changed: list[str] = []
    skipped: list[str] = []
    notes: list[str] = []
    details: dict[str, Any] = {"key_id": key.key_id, "scheme": SCHEME, "artifacts": changed}
    with _staged(bundle, out, action="encrypt", details=details) as edit:
        for art in chosen:
            if art.encryption is not None:
                skipped.append(art.id)
                continue
            _encrypt_artifact(edit, art, key)
            changed.append(art.id)
            if art.format not in LOADABLE_FORMATS:
                notes.append(
                    f"{art.id}: {art.format} artifacts cannot be served encrypted (supported: "
                    f"{', '.join(LOADABLE_FORMATS)}); decrypt to use it"
                )
        if (edit.staging / SIGNATURE_FILE).exists():
            (edit.staging / SIGNATURE_FILE).unlink()
            notes.append("the old signature no longer applies and was removed: sign again")
    return CryptoReport(Path(out or bundle.path), key.key_id, changed, skipped, notes)


def _encrypt_artifact(edit: BundleEdit, art: Artifact, key: ModelKey) -> None:
    from cvdeploy.bundle import Encryption, FileRef, sha256_file

    refs = []
    salt = secrets.token_hex(16)  # unique per encryption: ties the files to this artifact
    for ref in art.files:
        src = edit.path_of(ref.path)
        plain = src.read_bytes()
        name = _plain_name(art, ref.path)
        blob = seal(key, plain, associated_data(edit.manifest, art, name, key.key_id, salt))
        del plain
        dst = edit.path_of(ref.path + ENCRYPTED_SUFFIX)
        _write_new(dst, blob)
        src.unlink()  # a hard link to the old bundle's file: the old bundle keeps its own
        refs.append(
            FileRef(path=ref.path + ENCRYPTED_SUFFIX, sha256=sha256_file(dst), size=len(blob))
        )
    enc = Encryption(scheme=SCHEME, key_id=key.key_id, salt=salt)
    edit.replace_artifact(art.model_copy(update={"files": tuple(refs), "encryption": enc}))


def decrypt_bundle(
    bundle: Bundle,
    key: ModelKey,
    *,
    out: Path | None = None,
    artifacts: list[str] | None = None,
) -> CryptoReport:
    """Write artifacts' files back in plain form (for export or inspection on a trusted host).

    Raises:
        IntegrityError: Wrong key or an altered file/manifest (nothing is written then).
    """
    from cvdeploy.bundle import FileRef, sha256_file

    chosen = _select(bundle, artifacts)
    changed, skipped = [], []
    with _staged(bundle, out, action="decrypt", details={"key_id": key.key_id}) as edit:
        for art in chosen:
            if art.encryption is None:
                skipped.append(art.id)
                continue
            plains = decrypt_artifact_files(bundle, art, key)
            refs = []
            for ref, data in zip(art.files, plains, strict=True):
                rel = ref.path[: -len(ENCRYPTED_SUFFIX)]
                dst = edit.path_of(rel)
                _write_new(dst, data)
                edit.path_of(ref.path).unlink()
                refs.append(FileRef(path=rel, sha256=sha256_file(dst), size=len(data)))
            edit.replace_artifact(art.model_copy(update={"files": tuple(refs), "encryption": None}))
            changed.append(art.id)
        if (edit.staging / SIGNATURE_FILE).exists():
            (edit.staging / SIGNATURE_FILE).unlink()
    return CryptoReport(Path(out or bundle.path), key.key_id, changed, skipped, [])


def _write_new(path: Path, data: bytes) -> None:
    """Write a new file (never through an existing hard link)."""
    if path.exists():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
