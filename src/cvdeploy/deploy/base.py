"""Packaging a bundle for a target: the registry of targets, the options, the staging.

``package_bundle(bundle, "docker", out)`` writes a directory a user can use as is. Each
target registers a function ``(bundle, directory, options) -> PackageResult`` by name; the
package is written into a temporary sibling of ``out`` and renamed into place only when it
is complete, so a failure leaves nothing half-written (and an existing ``out`` untouched).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cvdeploy.bundle import Artifact, Bundle
from cvdeploy.errors import UsageError
from cvdeploy.pipeline import select_artifact
from cvdeploy.registry import Registry
from cvdeploy.version import __version__

__all__ = [
    "CONTAINER_FORMATS",
    "TARGETS",
    "PackageOptions",
    "PackageResult",
    "copy_bundle",
    "package_bundle",
    "runtime_requirement",
    "target_artifact",
]

TARGETS = Registry("deploy target")
for _name, _target, _desc in (
    ("docker", "cvdeploy.deploy.docker:package_docker", "container image (Dockerfile)"),
    ("kubernetes", "cvdeploy.deploy.kubernetes:package_kubernetes", "Kubernetes manifests"),
    ("triton", "cvdeploy.deploy.triton:package_triton", "Triton model repository + client"),
    ("sagemaker", "cvdeploy.deploy.cloud:package_sagemaker", "Amazon SageMaker endpoint"),
    ("vertex", "cvdeploy.deploy.cloud:package_vertex", "Google Vertex AI endpoint"),
    ("azureml", "cvdeploy.deploy.cloud:package_azureml", "Azure ML online endpoint"),
    ("ray", "cvdeploy.deploy.ray:package_ray", "Ray Serve application"),
):
    TARGETS.register(_name, _target, description=_desc)

CONTAINER_FORMATS = ("onnx", "openvino", "tflite")
"""Artifact formats the server image carries a runtime for (no torch, no GPU runtime)."""

_RUNTIME_PACKAGES = {"onnx": "onnxruntime", "openvino": "openvino", "tflite": "ai-edge-litert"}


@dataclass(frozen=True, slots=True)
class PackageOptions:
    """What every target may use (each reads the fields that concern it).

    Attributes:
        artifact: Artifact id (default: the bundle's recommended one, else the first
            deployable by format preference).
        image: Image reference the manifests and commands use (default
            ``cvdeploy-NAME:VERSION``).
        base: Default of the Dockerfile's ``BASE`` build argument.
        port: Port the server listens on inside the container.
        wheels: Download every wheel into the build context now (``pip download``) and
            install them offline in the image: no index needed at build time.
        python_version: Python version of the base image (for ``wheels``).
        platform_tag: Wheel platform of the image (for ``wheels``; default: this machine's).
        cvdeploy_wheel: A cvdeploy wheel to install (default: built from this source
            checkout, or ``cvdeploy==VERSION`` from the index).
        extras: cvdeploy extras added to the image (beyond serve + the runtime).
        key_env: Environment variable the container reads the model key from (required
            for an encrypted bundle; filled from a secret).
        key_file: Check now that this key decrypts the artifact.
        trusted_key: Ed25519 public key: the server loads only bundles it signed.
        replicas: Replicas (Kubernetes, Ray Serve).
        max_replicas: Upper bound of autoscaling.
        max_batch: Largest batch per inference call.
        namespace: Kubernetes namespace (``None``: the current one).
        tls_secret: Kubernetes Secret (type tls) whose certificate the server uses (HTTPS).
        kserve: Also write KServe InferenceServices.
        canary: Percent of traffic to this version (KServe canary).
        stable_image: Image of the current version (the canary's counterpart).
        progress: Show progress of long steps (downloads).
    """

    artifact: str | None = None
    image: str | None = None
    base: str = "python:3.11-slim"
    port: int = 8080
    wheels: bool = False
    python_version: str = "3.11"
    platform_tag: str | None = None
    cvdeploy_wheel: Path | None = None
    extras: tuple[str, ...] = ()
    key_env: str | None = None
    key_file: Path | None = None
    trusted_key: Path | None = None
    replicas: int = 2
    max_replicas: int = 8
    max_batch: int = 8
    namespace: str | None = None
    tls_secret: str | None = None
    kserve: bool = False
    canary: int | None = None
    stable_image: str | None = None
    progress: bool = True


@dataclass(slots=True)
class PackageResult:
    """What a target wrote and how to use it."""

    target: str
    out: Path
    artifact: str
    image: str | None
    files: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        d = asdict(self)
        d["out"] = str(self.out)
        return d


def default_image(bundle: Bundle) -> str:
    """``cvdeploy-NAME:VERSION`` (lower case, as registries want)."""
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in bundle.name.lower())
    return f"cvdeploy-{name}:{__version__}"


def target_artifact(
    bundle: Bundle, artifact: str | None, *, formats: tuple[str, ...], target: str
) -> Artifact:
    """The artifact a target deploys, refused with what to do when it cannot carry it."""
    if artifact is None:
        rec = bundle.manifest.recommended
        if rec is not None and bundle.artifact(rec.artifact).format in formats:
            art = bundle.artifact(rec.artifact)
        else:
            candidates = [a for a in bundle.manifest.artifacts if a.format in formats]
            order = {f: i for i, f in enumerate(("openvino", "onnx", "tflite", "tensorrt"))}
            candidates.sort(key=lambda a: (a.encryption is not None, order.get(a.format, 9)))
            if not candidates:
                have = ", ".join(f"{a.id} ({a.format})" for a in bundle.manifest.artifacts)
                raise UsageError(
                    f"bundle {bundle.name!r} has no artifact the {target} target can deploy "
                    f"(it takes {', '.join(formats)}; the bundle has {have or 'none'})",
                    hint="export one first, e.g. `cvdeploy export BUNDLE --format onnx`",
                )
            art = candidates[0]
    else:
        art = bundle.artifact(artifact)
    if art.format not in formats:
        why = {
            "torch": "the image carries no training framework",
            "tensorrt": "a TensorRT engine needs an NVIDIA base image and the GPU it was built for",
        }.get(art.format, "")
        raise UsageError(
            f"artifact {art.id} ({art.format}) cannot be deployed to {target}"
            + (f": {why}" if why else "")
            + f" (it takes {', '.join(formats)})",
            hint="choose another with --artifact, or export one: `cvdeploy export BUNDLE "
            "--format onnx`",
        )
    return art


def check_key(bundle: Bundle, art: Artifact, options: PackageOptions) -> None:
    """An encrypted artifact needs ``key_env`` (where the container reads its key); with
    ``key_file`` the key is checked against the artifact now."""
    if art.encryption is None:
        return
    if not options.key_env:
        raise UsageError(
            f"artifact {art.id} is encrypted: say where the container reads its key",
            hint="pass --key-env CVDEPLOY_MODEL_KEY (filled from a secret at run time; "
            "add --key-file F to check the key now)",
        )
    if options.key_file is not None:
        from cvdeploy.security import key_from_options, model_loader

        key = key_from_options(options.key_file, None)
        Bundle.load(bundle.path, loader=model_loader(key)).model_files(art)


def runtime_requirement(art: Artifact) -> str:
    """``package==version`` of the runtime the artifact was verified with (its recorded
    environment), else the version installed here, else unpinned."""
    pkg = _RUNTIME_PACKAGES[art.format]
    recorded = (art.environment.get("packages") or {}).get(pkg)
    if recorded:
        return f"{pkg}=={recorded}"
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return f"{pkg}=={importlib.metadata.version(pkg)}"
    return pkg


def copy_bundle(bundle: Bundle, dest: Path) -> Path:
    """Copy the bundle (as it is: signed, encrypted) and check the copy's files."""
    shutil.copytree(bundle.path, dest, ignore=shutil.ignore_patterns(".*"))
    Bundle.load(dest)
    return dest


def select_runnable(bundle: Bundle, artifact: str | None) -> Artifact:
    """The artifact ``cvdeploy predict`` would run (for targets that run in-process)."""
    return select_artifact(bundle, artifact)


def package_bundle(
    bundle: Bundle | Path | str,
    target: str,
    out: Path | str,
    *,
    options: PackageOptions | None = None,
    overwrite: bool = False,
) -> PackageResult:
    """Write a deployable directory for ``target`` (see :data:`TARGETS`).

    Args:
        bundle: The bundle (verified when given as a path).
        target: ``docker``, ``kubernetes``, ``triton``, ``sagemaker``, ``vertex``,
            ``azureml`` or ``ray``.
        out: The directory to write (must not exist, or be empty, unless ``overwrite``).
        options: Target options.
        overwrite: Replace an existing ``out``.

    Returns:
        What was written and the commands that use it.

    Raises:
        UsageError: Unknown target, an artifact the target cannot carry, an encrypted
            artifact without ``key_env``, or ``out`` not empty.
    """
    opts = options or PackageOptions()
    b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    fn = TARGETS.get(target)
    dest = Path(out)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())) and not overwrite:
        raise UsageError(
            f"{dest} exists and is not empty", hint="choose another --out or pass --overwrite"
        )
    if dest.resolve().is_relative_to(b.path.resolve()):
        raise UsageError(f"--out {dest} is inside the bundle", hint="write the package elsewhere")
    parent = dest.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.package-", dir=parent))
    try:
        result: PackageResult = fn(b, staging, opts)
        result.files = sorted(
            p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()
        )
        (staging / "cvdeploy-package.json").write_text(
            json.dumps({**result.to_dict(), "out": None, "cvdeploy": __version__}, indent=2) + "\n",
            encoding="utf-8",
        )
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result.out = dest
    return result
