"""The bundle: a directory holding ``bundle.json`` (the manifest) and the model files.

A bundle is never modified in place. Every change goes through a :class:`BundleEdit`
transaction that builds the new bundle in a temporary sibling directory (hard-linking the
unchanged files), writes the manifest, and swaps the directories with two renames. A step
that fails leaves the old bundle exactly as it was.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from cvdeploy.errors import BundleError, IntegrityError, StorageError, UsageError
from cvdeploy.failpoints import failpoint
from cvdeploy.fsutil import pid_alive, pid_prefix, sweep_stale
from cvdeploy.jsonsafe import loads as json_loads
from cvdeploy.precision import (
    InferencePrecision,
    inference_precision_for,
    legacy_inference_precision,
)
from cvdeploy.registry import Registry
from cvdeploy.spec import IOSpec, ModelSpec
from cvdeploy.version import __version__

SCHEMA_VERSION = 1
MANIFEST = "bundle.json"
_CHUNK = 1 << 20


BUNDLE_HOOKS = Registry("bundle hook")
"""Functions ``(directory: Path, manifest: Manifest) -> None`` that refresh the files derived
from the manifest (the model card, the changelog) after every successful change.

They run on the staged bundle, after its manifest is written and before it is swapped in, so
the derived files change atomically with the manifest. Registered by ``"module:function"``
(imported only when called), so this core module never imports the stage that implements
them. A hook that fails never undoes the change: it is reported as a warning."""
BUNDLE_HOOKS.register(
    "model-card",
    "cvdeploy.deploy.card:refresh_card",
    description="MODEL_CARD.md and CHANGELOG.md, generated from the manifest",
)


def run_bundle_hooks(directory: Path, manifest: Manifest | None = None) -> list[str]:
    """Run every :data:`BUNDLE_HOOKS` entry on a bundle directory.

    Args:
        directory: The bundle directory (a staged one during a change).
        manifest: Its manifest (default: read from ``directory``, unverified).

    Returns:
        One message per hook that failed (each also issued as a warning); empty when all ran.
    """
    if manifest is None:
        manifest = Bundle.load(directory, verify=False).manifest
    failed = []
    for name in BUNDLE_HOOKS.names():
        try:
            BUNDLE_HOOKS.get(name)(Path(directory), manifest)
        except Exception as exc:  # a derived file never costs the change it derives from
            msg = f"bundle hook {name!r} failed: {exc}"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            failed.append(msg)
    return failed


def now() -> _dt.datetime:
    """The current UTC time, second precision."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0)


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


Format = Literal["onnx", "openvino", "tflite", "tensorrt", "torch"]
"""Artifact formats (each has a runtime registered under that name)."""
Precision = Literal["fp32", "fp16", "bf16", "int8", "int8-bf16", "int8-dynamic"]
"""Artifact precisions (see :mod:`cvdeploy.precision` for what each computes in)."""
CheckKind = Literal["parity", "metrics", "latency", "reference"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Readable(Mapping[str, Any]):
    """Typed, and readable as a mapping too (``check.data["metrics"]``, ``.get``, ``in``,
    ``items()``): only the fields that were given, and any extra keys, are present."""

    def _present(self) -> dict[str, Any]:
        fields = type(self).model_fields  # type: ignore[attr-defined]
        given: set[str] = self.model_fields_set  # type: ignore[attr-defined]
        out = {k: getattr(self, k) for k in fields if k in given}
        out.update(getattr(self, "__pydantic_extra__", None) or {})
        return out

    def __getitem__(self, key: str) -> Any:
        present = self._present()
        if key not in present:
            raise KeyError(key)
        return present[key]

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` when it was given, else ``default``."""
        return self._present().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._present()

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]  # the keys, as a mapping's
        return iter(self._present())

    def __len__(self) -> int:
        return len(self._present())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of what was given."""
        return dict(self.model_dump(mode="json"))  # type: ignore[attr-defined]


class CheckData(_Readable, BaseModel):  # type: ignore[misc]  # a mapping of its keys
    """A check's payload: the fields of its kind are typed and validated; keys this version
    does not know (a record from another version) are kept as they are."""

    model_config = ConfigDict(frozen=True, extra="allow")

    @model_serializer(mode="wrap")
    def _given_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        keep = self.model_fields_set | set(self.__pydantic_extra__ or {})
        return {k: v for k, v in data.items() if k in keep}


class ParityData(CheckData):
    """The parity gate's evidence (see :class:`cvdeploy.verify.parity.ParityResult`)."""

    passed: bool | None = None
    images: int | None = None
    outputs: list[dict[str, Any]] | None = None
    match_fraction: float | None = None
    score_diff_mean: float | None = None
    n_source: int | None = None
    n_candidate: int | None = None
    tolerance: dict[str, float | str | None] | None = None
    precision: Precision | None = None
    failures: list[str] | None = None
    inference_precision: InferencePrecision | None = None
    source_inference_precision: InferencePrecision | None = None
    source: str | None = None


class MetricsData(CheckData):
    """An evaluation: metrics on a named dataset, the protocol, where it ran."""

    metrics: dict[str, Any] | None = None
    speed_ms: dict[str, float] | None = None
    images: int | None = None
    protocol: dict[str, Any] | None = None
    inference_precision: InferencePrecision | None = None
    data: str | None = None
    environment: dict[str, Any] | None = None
    settings: dict[str, Any] | None = None
    by: str | None = None


class LatencyData(CheckData):
    """A benchmark result under named conditions (see :class:`cvdeploy.bench.BenchResult`)."""

    artifact: str | None = None
    format: Format | None = None
    precision: Precision | None = None
    inference_precision: InferencePrecision | None = None
    batch: int | None = None
    imgsz: list[int] | None = None
    threads: int | None = None
    concurrency: int | None = None
    cold_start_ms: float | None = None
    load_ms: float | None = None
    first_ms: float | None = None
    e2e_ms: dict[str, float | int | None] | None = None
    stages_ms: dict[str, dict[str, float | int | None]] | None = None
    throughput_ips: float | None = None
    pre_post_share: float | None = None
    pre_post_vs_inference: float | None = None
    peak_rss_mb: float | None = None
    file_size_bytes: int | None = None
    accuracy: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    conditions: dict[str, Any] | None = None
    key: str | None = None
    notes: list[str] | None = None
    environment: dict[str, Any] | None = None


class ReferenceData(CheckData):
    """A drift reference: per-image statistics of a labelled set's images and of this
    artifact's predictions and embeddings on them, stored beside the manifest in ``file``
    (see :mod:`cvdeploy.diagnose.drift`)."""

    file: str | None = None
    """The summary's path in the bundle (``reference/....npz``)."""
    sha256: str | None = None
    size: int | None = None
    images: int | None = None
    data: str | None = None
    features: list[str] | None = None
    embedding_layer: str | None = None
    embedding_dims: int | None = None
    conf: float | None = None
    inference_precision: InferencePrecision | None = None


CHECK_DATA: dict[str, type[CheckData]] = {
    "parity": ParityData,
    "metrics": MetricsData,
    "latency": LatencyData,
    "reference": ReferenceData,
}
"""The payload type of each check kind."""


class FileRef(_Frozen):
    """One file of the bundle, relative to the bundle directory (posix separators)."""

    path: str
    sha256: str
    size: int


class Provenance(_Frozen):
    """What produced an artifact."""

    tool: str
    source: str | None = None
    """Id of the artifact it was made from (``None`` for an imported or trained model)."""
    options: dict[str, Any] = Field(default_factory=dict)


class Check(_Frozen):
    """One verification result recorded for an artifact: its payload ``data`` is typed by
    ``kind`` (:data:`CHECK_DATA`), and still readable as a mapping."""

    kind: CheckKind
    name: str
    passed: bool | None = None
    created: _dt.datetime = Field(default_factory=now)
    data: SerializeAsAny[CheckData] = Field(default_factory=CheckData)

    @model_validator(mode="before")
    @classmethod
    def _typed_data(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("kind") in CHECK_DATA:
            data = values.get("data")
            want = CHECK_DATA[values["kind"]]
            if data is None or isinstance(data, dict):
                values = {**values, "data": want.model_validate(data or {})}
            elif isinstance(data, CheckData) and not isinstance(data, want):
                values = {**values, "data": want.model_validate(data.to_dict())}
        return values


class RuntimeConfig(_Readable, _Frozen):  # type: ignore[misc]
    """Runner options of a recommended configuration (read by the predictor)."""

    threads: int | None = Field(default=None, ge=1)
    device: str = "cpu"
    extra: dict[str, str | int | float | bool] = Field(default_factory=dict)


class Recommended(_Readable, _Frozen):  # type: ignore[misc]
    """The bundle's recommended configuration: the artifact and runner options that
    ``predict``, ``eval``, ``bench`` and ``serve`` use by default, and the measurement that
    chose it (``cvdeploy tune``)."""

    artifact: str
    options: RuntimeConfig = Field(default_factory=RuntimeConfig)
    source: Literal["tune"] = "tune"
    target: Literal["latency", "throughput"] = "latency"
    metric: str | None = None
    accuracy: float | None = None
    floor: float | None = None
    reference: dict[str, Any] = Field(default_factory=dict)
    dataset: str | None = None
    e2e_ms: dict[str, float | int] = Field(default_factory=dict)
    throughput_ips: float | None = None
    conditions: dict[str, Any] = Field(default_factory=dict)
    measured: str | None = None


class Encryption(_Frozen):
    """How an artifact's files are encrypted (see :mod:`cvdeploy.security.crypto`)."""

    scheme: Literal["aes-256-gcm-v1"] = "aes-256-gcm-v1"
    key_id: str
    """Fingerprint of the key (never the key itself)."""
    salt: str
    """Random per-encryption value bound into every file's associated data."""


class Artifact(_Frozen):
    """One deployable variant of the model (format x precision)."""

    id: str
    format: Format
    precision: Precision
    files: tuple[FileRef, ...]
    io: IOSpec
    produced_by: Provenance
    environment: dict[str, Any] = Field(default_factory=dict)
    checks: tuple[Check, ...] = ()
    created: _dt.datetime = Field(default_factory=now)
    encryption: Encryption | None = None
    """Set when the files are encrypted (``cvdeploy encrypt``); they end in ``.enc``."""
    inference_precision: InferencePrecision | None = None
    """What the float parts compute in at run time (see :mod:`cvdeploy.precision`); ``None``
    in bundles written before it was recorded (see :attr:`runtime_precision`)."""

    @property
    def runtime_precision(self) -> str:
        """The inference precision every runner executes this artifact at."""
        if self.inference_precision is not None:
            return self.inference_precision
        return legacy_inference_precision(self.format, self.precision)

    def latest(self, kind: str, name: str | None = None) -> Check | None:
        """The most recent check of a kind (and name), or ``None``."""
        for check in reversed(self.checks):
            if check.kind == kind and (name is None or check.name == name):
                return check
        return None

    @property
    def size_bytes(self) -> int:
        """Total size of the artifact's files."""
        return sum(f.size for f in self.files)


class HistoryEntry(_Frozen):
    """One change made to the bundle."""

    time: _dt.datetime = Field(default_factory=now)
    action: str
    details: dict[str, Any] = Field(default_factory=dict)
    version: str = __version__


class Manifest(_Frozen):
    """The content of ``bundle.json``."""

    schema_version: int = SCHEMA_VERSION
    name: str
    spec: ModelSpec
    artifacts: tuple[Artifact, ...] = ()
    samples: tuple[FileRef, ...] = ()
    """Sample images stored in the bundle, used by the parity gate when no data is given."""
    recommended: Recommended | None = None
    history: tuple[HistoryEntry, ...] = ()
    created: _dt.datetime = Field(default_factory=now)

    def artifact(self, artifact_id: str) -> Artifact:
        """Return the artifact with this id, or raise a :class:`UsageError` listing the ids."""
        for a in self.artifacts:
            if a.id == artifact_id:
                return a
        known = ", ".join(a.id for a in self.artifacts) or "none"
        raise UsageError(
            f"artifact {artifact_id!r} is not in bundle {self.name!r} (artifacts: {known})",
            hint="run `cvdeploy info BUNDLE` to list the artifacts",
        )


@dataclass(frozen=True, slots=True)
class ModelFiles:
    """What a runner loads an artifact from: its main file's path, or the model in memory.

    Attributes:
        path: The main model file (for messages, and for loading when no bytes are given).
        model_bytes: The main file's content (an encrypted artifact, decrypted in memory).
        weights_bytes: The second file's content, for formats that keep weights apart
            (OpenVINO ``.bin``).
    """

    path: Path
    model_bytes: bytes | None = None
    weights_bytes: bytes | None = None

    def __repr__(self) -> str:  # never the content
        held = " (in memory)" if self.model_bytes is not None else ""
        return f"ModelFiles({str(self.path)!r}{held})"


ArtifactLoader = Callable[["Bundle", Artifact], ModelFiles]
"""Supplies an artifact's model files; :func:`cvdeploy.security.crypto.model_loader` gives one
that decrypts encrypted artifacts in memory (Polygraphy's ``XFromY`` loaders are the model)."""


class Bundle:
    """A bundle directory and its validated manifest. Load with :meth:`Bundle.load`.

    ``loader`` supplies the model files of artifacts (see :meth:`model_files`): given by
    whoever holds a key for encrypted artifacts (the security stage), never known here.
    """

    def __init__(
        self, path: Path, manifest: Manifest, *, loader: ArtifactLoader | None = None
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.loader = loader

    def __repr__(self) -> str:
        return (
            f"Bundle({str(self.path)!r}, name={self.manifest.name!r}, "
            f"artifacts={[a.id for a in self.manifest.artifacts]})"
        )

    @property
    def spec(self) -> ModelSpec:
        """The model spec."""
        return self.manifest.spec

    @property
    def name(self) -> str:
        """The bundle's name."""
        return self.manifest.name

    def artifact(self, artifact_id: str) -> Artifact:
        """The artifact with this id (see :meth:`Manifest.artifact`)."""
        return self.manifest.artifact(artifact_id)

    def file(self, ref: FileRef) -> Path:
        """Absolute path of a bundle file."""
        return self.path / ref.path

    def model_file(self, artifact: Artifact | str, *, encrypted_ok: bool = False) -> Path:
        """The main model file of an artifact (its first file).

        Raises:
            UsageError: The artifact is encrypted (its files cannot be read as a model) and
                ``encrypted_ok`` is False.
        """
        art = self.artifact(artifact) if isinstance(artifact, str) else artifact
        if art.encryption is not None and not encrypted_ok:
            raise UsageError(
                f"artifact {art.id} is encrypted: this step needs its plain model file",
                hint="run it on the unencrypted bundle, or `cvdeploy decrypt` a copy first",
            )
        return self.path / art.files[0].path

    def model_files(self, artifact: Artifact | str) -> ModelFiles:
        """What a runner loads the artifact from: through the bundle's loader when it has
        one, else the plain main file.

        Raises:
            UsageError: The artifact is encrypted and the bundle was loaded without a key.
        """
        art = self.artifact(artifact) if isinstance(artifact, str) else artifact
        if self.loader is not None:
            return self.loader(self, art)
        if art.encryption is not None:
            raise UsageError(
                f"artifact {art.id} is encrypted: give its key",
                hint="pass --key-file F or --key-env VAR (serve: model_key_file / --key-file)",
            )
        return ModelFiles(self.model_file(art))

    def sample_images(self) -> list[Path]:
        """Absolute paths of the bundle's sample images."""
        return [self.path / s.path for s in self.manifest.samples]

    def last_evaluated_data(self) -> Path | None:
        """The dataset of the bundle's most recent evaluation, when it still exists (what a
        command that needs images falls back to, saying so)."""
        found = [
            (c.created, Path(str(c.data.get("data"))))
            for a in self.manifest.artifacts
            for c in a.checks
            if c.kind == "metrics" and c.data.get("data")
        ]
        for _, path in sorted(found, key=lambda t: t[0], reverse=True):
            if path.exists():
                return path
        return None

    @classmethod
    def load(
        cls, path: Path | str, *, verify: bool = True, loader: ArtifactLoader | None = None
    ) -> Bundle:
        """Load and validate a bundle, checking every file's sha256.

        Args:
            path: The bundle directory (or its ``bundle.json``).
            verify: Check file sizes and sha256 sums (default). Only skip for listings.
            loader: Supplies artifacts' model files (:meth:`model_files`), e.g. decrypting
                them in memory; default: the plain files.

        Raises:
            BundleError: The directory or manifest is missing or malformed.
            IntegrityError: A file is missing or its checksum differs from the manifest.
        """
        p = Path(path)
        if p.name == MANIFEST and p.is_file():
            p = p.parent
        mf = p / MANIFEST
        if not p.is_dir():
            raise BundleError(
                f"bundle {p} does not exist",
                hint="create one with `cvdeploy import` or `cvdeploy export`",
            )
        if not mf.is_file():
            raise BundleError(
                f"{p} is not a bundle: it has no {MANIFEST}",
                hint="create one with `cvdeploy import` or `cvdeploy export`",
            )
        try:
            raw = json_loads(mf.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:  # JSON, UTF-8, nested too deep
            raise BundleError(f"{mf} is not valid JSON: {str(exc)[:300]}") from None
        version = raw.get("schema_version") if isinstance(raw, dict) else None
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"{mf} has schema version {version!r}; this cvdeploy reads {SCHEMA_VERSION}",
                hint="use the cvdeploy version that wrote it, or re-create the bundle",
            )
        try:
            manifest = Manifest.model_validate(raw)
        except ValidationError as exc:
            raise BundleError(f"{mf} is not a valid manifest:\n{exc}") from exc
        bundle = cls(p, manifest, loader=loader)
        if verify:
            bundle.verify_files()
        return bundle

    def verify_files(self) -> None:
        """Check that every listed file exists with the recorded size and sha256.

        Raises:
            IntegrityError: Naming the first file that differs.
        """
        refs: list[FileRef] = [f for a in self.manifest.artifacts for f in a.files]
        refs.extend(self.manifest.samples)
        for ref in refs:
            f = self.path / ref.path
            if not f.is_file():
                raise IntegrityError(
                    f"bundle file {ref.path} is missing from {self.path}",
                    hint="restore the file or re-create the artifact",
                )
            if f.stat().st_size != ref.size or sha256_file(f) != ref.sha256:
                raise IntegrityError(
                    f"bundle file {ref.path} was altered: its sha256 does not match {MANIFEST}",
                    hint="restore the original file or re-create the artifact; "
                    "never edit bundle files by hand",
                )

    @classmethod
    @contextlib.contextmanager
    def create(
        cls,
        path: Path | str,
        *,
        name: str,
        spec: ModelSpec,
        overwrite: bool = False,
        action: str = "create",
        details: Mapping[str, Any] | None = None,
        copy_of: Bundle | None = None,
    ) -> Iterator[BundleEdit]:
        """Create a new bundle atomically.

        Args:
            path: Where the bundle directory goes.
            name: The bundle's name.
            spec: The model spec.
            overwrite: Replace an existing bundle at ``path``.
            action: History action recorded for the creation.
            details: History details.
            copy_of: Start from a copy of this bundle (its manifest, history and files).

        Yields:
            A :class:`BundleEdit`; the bundle appears at ``path`` when the block exits cleanly.
        """
        p = Path(path)
        if p.exists():
            if not p.is_dir():
                raise UsageError(
                    f"{p} exists and is not a directory", hint="choose another --out path"
                )
            if (p / MANIFEST).exists() and not overwrite:
                raise UsageError(
                    f"a bundle already exists at {p}",
                    hint="pass --overwrite to replace it, or choose another --out",
                )
            if not (p / MANIFEST).exists() and any(p.iterdir()):
                raise UsageError(
                    f"{p} is a non-empty directory that is not a bundle",
                    hint="choose an empty or new --out directory",
                )
        manifest = Manifest(name=name, spec=spec) if copy_of is None else copy_of.manifest
        edit = BundleEdit(
            target=p,
            manifest=manifest,
            source=None if copy_of is None else copy_of.path,
            action=action,
            details=dict(details or {}),
        )
        with edit.transaction():
            yield edit

    @contextlib.contextmanager
    def edit(
        self,
        *,
        action: str,
        details: Mapping[str, Any] | None = None,
    ) -> Iterator[BundleEdit]:
        """Change the bundle atomically.

        Args:
            action: History action (``export``, ``eval``, ``quantize``...).
            details: History details.

        Yields:
            A :class:`BundleEdit`. On a clean exit the new bundle replaces this one and
            ``self`` is refreshed; on an exception nothing changes.
        """
        edit = BundleEdit(
            target=self.path,
            manifest=self.manifest,
            source=self.path,
            action=action,
            details=dict(details or {}),
        )
        with edit.transaction():
            yield edit
        self.manifest = edit.manifest


class BundleEdit:
    """A staged change to a bundle. Use through :meth:`Bundle.edit` or :meth:`Bundle.create`."""

    def __init__(
        self,
        *,
        target: Path,
        manifest: Manifest,
        source: Path | None,
        action: str,
        details: dict[str, Any],
    ) -> None:
        self.target = target
        self.manifest = manifest
        self._source = source
        self._action = action
        self._details = details
        self.staging: Path = Path()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Stage in a sibling temporary directory, then swap it in."""
        parent = self.target.resolve().parent
        parent.mkdir(parents=True, exist_ok=True)
        _recover(self.target.resolve())
        self.staging = Path(
            tempfile.mkdtemp(prefix=pid_prefix(f".{self.target.name}.staging-"), dir=parent)
        )
        try:
            if self._source is not None:
                _link_tree(self._source, self.staging)
            yield
            self.manifest = self.manifest.model_copy(
                update={
                    "history": (
                        *self.manifest.history,
                        HistoryEntry(action=self._action, details=self._details),
                    ),
                }
            )
            self._write_manifest()
            run_bundle_hooks(self.staging, self.manifest)
            failpoint("bundle.staged")
            _swap_in(self.staging, self.target)
        except OSError as exc:
            shutil.rmtree(self.staging, ignore_errors=True)
            if exc.errno not in _STORAGE_ERRNOS:
                raise
            raise StorageError(
                f"cannot write bundle {self.target}: {exc.strerror}",
                hint="free space (or fix the permissions) where the bundle is written; "
                "nothing was changed",
            ) from None
        except BaseException:
            shutil.rmtree(self.staging, ignore_errors=True)
            raise

    @property
    def spec(self) -> ModelSpec:
        """The spec of the bundle being edited."""
        return self.manifest.spec

    def path_of(self, relpath: str) -> Path:
        """Absolute path in the staging directory (for reading files of the new bundle)."""
        return self.staging / relpath

    def artifact_dir(self, artifact_id: str, *, replace: bool = False) -> Path:
        """Create and return the staging directory for a new artifact's files.

        Raises:
            UsageError: The artifact exists and ``replace`` is False.
        """
        _check_id(artifact_id)
        exists = any(a.id == artifact_id for a in self.manifest.artifacts)
        if exists and not replace:
            raise UsageError(
                f"artifact {artifact_id!r} already exists in the bundle",
                hint="pass --overwrite to replace it",
            )
        d = self.staging / artifact_id
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    def add_artifact(
        self,
        *,
        artifact_id: str,
        format: str,
        precision: str,
        io: IOSpec,
        produced_by: Provenance,
        environment: Mapping[str, Any] | None = None,
        checks: Sequence[Check] = (),
        main_file: str | None = None,
        inference_precision: str | None = None,
    ) -> Artifact:
        """Register the files written under ``artifact_dir(artifact_id)`` as an artifact.

        Args:
            artifact_id: The artifact id (also its directory name).
            format: Runtime format (``onnx``, ``openvino``, ``torch``...).
            precision: ``fp32``, ``fp16``, ``int8``...
            io: The artifact's inputs and outputs.
            produced_by: Provenance.
            environment: Environment fingerprint.
            checks: Checks made before adding (e.g. parity).
            main_file: Name of the main model file (listed first); default: the first file.
            inference_precision: What the artifact computes in (``f32``, ``bf16``, ``f16``);
                default: the one its format and precision imply
                (:func:`cvdeploy.precision.inference_precision_for`).

        Returns:
            The registered artifact (replacing one with the same id).
        """
        d = self.staging / artifact_id
        files = sorted(p for p in d.rglob("*") if p.is_file())
        if not files:
            raise BundleError(f"artifact {artifact_id!r} has no files")
        if main_file is not None:
            main = d / main_file
            if main not in files:
                raise BundleError(f"artifact {artifact_id!r} has no file {main_file}")
            files.remove(main)
            files.insert(0, main)
        refs = tuple(
            FileRef(
                path=p.relative_to(self.staging).as_posix(),
                sha256=sha256_file(p),
                size=p.stat().st_size,
            )
            for p in files
        )
        art = Artifact(
            id=artifact_id,
            format=format,
            precision=precision,
            files=refs,
            io=io,
            produced_by=produced_by,
            environment=dict(environment or {}),
            checks=tuple(checks),
            inference_precision=inference_precision or inference_precision_for(format, precision),
        )
        others = tuple(a for a in self.manifest.artifacts if a.id != artifact_id)
        self.manifest = self.manifest.model_copy(update={"artifacts": (*others, art)})
        return art

    def replace_artifact(self, artifact: Artifact) -> None:
        """Replace the artifact with the same id (keeping its place); its files must be staged."""
        self.manifest.artifact(artifact.id)
        self.manifest = self.manifest.model_copy(
            update={
                "artifacts": tuple(
                    artifact if a.id == artifact.id else a for a in self.manifest.artifacts
                )
            }
        )

    def remove_artifact(self, artifact_id: str) -> None:
        """Remove an artifact and its files from the new bundle."""
        self.manifest.artifact(artifact_id)
        shutil.rmtree(self.staging / artifact_id, ignore_errors=True)
        self.manifest = self.manifest.model_copy(
            update={"artifacts": tuple(a for a in self.manifest.artifacts if a.id != artifact_id)}
        )

    def add_check(self, artifact_id: str, check: Check) -> None:
        """Append a check to an artifact."""
        arts = []
        for a in self.manifest.artifacts:
            if a.id == artifact_id:
                a = a.model_copy(update={"checks": (*a.checks, check)})
            arts.append(a)
        self.manifest.artifact(artifact_id)
        self.manifest = self.manifest.model_copy(update={"artifacts": tuple(arts)})

    def add_samples(self, images: Sequence[Path]) -> None:
        """Copy sample images into ``samples/`` (replacing the previous samples)."""
        d = self.staging / "samples"
        if d.exists():
            shutil.rmtree(d)
        d.mkdir()
        refs = []
        for i, src in enumerate(images):
            dst = d / f"{i:03d}{src.suffix.lower()}"
            shutil.copyfile(src, dst)
            refs.append(
                FileRef(
                    path=dst.relative_to(self.staging).as_posix(),
                    sha256=sha256_file(dst),
                    size=dst.stat().st_size,
                )
            )
        self.manifest = self.manifest.model_copy(update={"samples": tuple(refs)})

    def set_recommended(self, recommended: Recommended | Mapping[str, Any] | None) -> None:
        """Set the bundle's recommended runtime configuration (validated)."""
        rec = (
            None
            if recommended is None
            else recommended
            if isinstance(recommended, Recommended)
            else Recommended.model_validate(dict(recommended))
        )
        self.manifest = self.manifest.model_copy(update={"recommended": rec})

    def write_text(self, relpath: str, text: str) -> None:
        """Write an auxiliary text file (e.g. the model card) into the new bundle."""
        p = self.staging / relpath
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists():
            p.unlink()  # may be a hard link to the old bundle's file: never write through it
        p.write_text(text, encoding="utf-8")

    def _write_manifest(self) -> None:
        listed = {f.path for a in self.manifest.artifacts for f in a.files}
        listed |= {s.path for s in self.manifest.samples}
        for ref in listed:
            if not (self.staging / ref).is_file():
                raise BundleError(f"bundle file {ref} is listed but was not written")
        data = self.manifest.model_dump(mode="json")
        for art in data["artifacts"]:
            for key in ("encryption", "inference_precision"):
                if art.get(key, 0) is None:
                    del art[key]  # optional fields left out: readable by older versions
        mf = self.staging / MANIFEST
        if mf.exists():
            mf.unlink()
        with mf.open("w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())


_STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
)
"""Write failures answered as a :class:`~cvdeploy.errors.StorageError` (not a traceback)."""


def _check_id(artifact_id: str) -> None:
    ok = artifact_id and all(c.isalnum() or c in "-_." for c in artifact_id)
    if not ok or artifact_id.startswith(".") or artifact_id in {"samples"}:
        raise UsageError(
            f"invalid artifact id {artifact_id!r}",
            hint="use letters, digits, '-', '_' and '.' only",
        )


def _link_tree(src: Path, dst: Path) -> None:
    """Populate ``dst`` with hard links (or copies) of every file under ``src``."""
    for p in src.rglob("*"):
        rel = p.relative_to(src)
        if p.is_dir():
            (dst / rel).mkdir(parents=True, exist_ok=True)
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(p, target)
        except OSError:
            shutil.copy2(p, target)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns:
        ``False`` where the system or file system cannot (the caller renames twice).
    """
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(staging: Path, target: Path) -> None:
    """Replace ``target`` by ``staging``: one atomic exchange where the system has it, so a
    crash at any moment leaves the old bundle or the new one at ``target``; else two
    renames, and a crash between them is repaired by the next edit (:func:`_recover`)."""
    if target.exists() and _exchange(staging, target):
        _fsync_dir(target.parent)
        shutil.rmtree(staging, ignore_errors=True)  # now the old bundle
        return
    old: Path | None = None
    if target.exists():
        old = target.with_name(f"{pid_prefix(f'.{target.name}.old-')}{id(staging):x}")
        os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _recover(target: Path) -> None:
    """Clean up after a process killed while changing ``target``: its staging folders go;
    an old bundle moved aside and never replaced is put back."""
    parent = target.parent
    if not target.exists():
        for old in sorted(parent.glob(f".{target.name}.old-*")):
            pid = old.name.rsplit(".old-", 1)[1].split("-", 1)[0]
            if pid.isdigit() and not pid_alive(int(pid)) and (old / MANIFEST).is_file():
                os.rename(old, target)
                break
    sweep_stale(parent, f".{target.name}.staging-")
    sweep_stale(parent, f".{target.name}.old-")
