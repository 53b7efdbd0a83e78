"""The docker target: a build context for the cvdeploy server image.

::

    OUT/
      Dockerfile          multi-stage, BASE build argument, non-root, HEALTHCHECK on /readyz
      .dockerignore       an allow-list: only what the Dockerfile copies
      README.md           the two commands to build and run
      requirements.txt    the runtime path, pinned (the runtime at the version the artifact
                          was verified with)
      wheels/cvdeploy/    the cvdeploy wheel (built from this checkout when it is one)
      wheels/deps/        every dependency's wheel (--wheels: offline build), else empty
      bundle/             the bundle as it is (signed, encrypted)
      serve.yaml          the server configuration
      entrypoint.sh       cvdeploy serve, answering the cloud platforms' contracts too
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from cvdeploy.bundle import Artifact, Bundle
from cvdeploy.deploy.base import (
    CONTAINER_FORMATS,
    PackageOptions,
    PackageResult,
    check_key,
    copy_bundle,
    default_image,
    runtime_requirement,
    target_artifact,
)
from cvdeploy.errors import BackendUnavailable, UsageError
from cvdeploy.version import __version__

__all__ = ["image_requirements", "package_docker", "render_template", "write_context"]

_EXTRA_RE = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def render_template(name: str, values: dict[str, Any]) -> str:
    """A file of ``templates/`` with its ``@@KEY@@`` placeholders filled."""
    text = (importlib.resources.files("cvdeploy.deploy") / "templates" / name).read_text(
        encoding="utf-8"
    )
    for k, v in values.items():
        text = text.replace(f"@@{k}@@", str(v))
    left = re.findall(r"@@[A-Z_]+@@", text)
    if left:
        raise RuntimeError(f"template {name}: unfilled {sorted(set(left))}")
    return text


def _requirement_name(req: str) -> str:
    return re.split(r"[ ;<>=!~\[]", req.strip(), maxsplit=1)[0]


def image_requirements(art: Artifact, *, extras: tuple[str, ...] = ()) -> list[str]:
    """The image's packages, pinned to the versions installed here (``name==version``).

    cvdeploy's core dependencies, the ``serve`` extra, the runtime of the artifact (at the
    version it was verified with, see :func:`runtime_requirement`), and the ``extras``
    given (``security`` for encrypted or signed bundles). Nothing else: no torch, no
    converters.
    """
    try:
        reqs = importlib.metadata.requires("cvdeploy") or []
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - always installed
        reqs = []
    wanted = {"serve", *extras}
    names: list[str] = []
    for r in reqs:
        m = _EXTRA_RE.search(r)
        if m is None or m.group(1) in wanted:
            name = _requirement_name(r)
            if name not in names and name != "cvdeploy":
                names.append(name)
    out = []
    for name in names:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    out.append(runtime_requirement(art))
    return out


def _source_checkout() -> Path | None:
    """The source tree cvdeploy is installed from in development (editable), if any."""
    try:
        dist = importlib.metadata.distribution("cvdeploy")
        raw = dist.read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return None
    if not raw:
        return None
    info = json.loads(raw)
    url = str(info.get("url", ""))
    if url.startswith("file://") and (info.get("dir_info") or {}).get("editable"):
        root = Path(url[len("file://") :])
        if (root / "pyproject.toml").is_file():
            return root
    return None


def _pip(args: list[str], what: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=1800)
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-8:])
        raise BackendUnavailable(
            f"{what} failed (pip exit {res.returncode}):\n{tail}",
            hint="check the package index is reachable, or pass --cvdeploy-wheel / drop --wheels",
        )


def _cvdeploy_wheel(options: PackageOptions, dest: Path) -> str:
    """Put a cvdeploy wheel into ``dest``; returns the pip spec the Dockerfile installs."""
    if options.cvdeploy_wheel is not None:
        whl = Path(options.cvdeploy_wheel)
        if not whl.is_file() or whl.suffix != ".whl":
            raise UsageError(f"--cvdeploy-wheel {whl} is not a wheel file")
        shutil.copy2(whl, dest / whl.name)
        return f"/tmp/wheels/cvdeploy/{whl.name}"
    src = _source_checkout()
    if src is None:
        (dest / ".keep").write_text("")
        return f"cvdeploy=={__version__}"
    _pip(
        ["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dest), str(src)],
        f"building the cvdeploy wheel from {src}",
    )
    (whl,) = sorted(dest.glob("cvdeploy-*.whl"))
    return f"/tmp/wheels/cvdeploy/{whl.name}"


def _platform_tags(tag: str | None) -> list[str]:
    """manylinux tags a Debian-based image with glibc >= 2.31 accepts, newest first."""
    if tag is not None:
        return [tag]
    arch = platform.machine() or "x86_64"
    tags = [f"manylinux_2_{m}_{arch}" for m in range(31, 16, -1)]
    return [*tags, f"manylinux2014_{arch}", f"linux_{arch}"]


def _download_wheels(requirements: Path, dest: Path, options: PackageOptions) -> None:
    args = ["download", "-q", "--only-binary=:all:", "-d", str(dest), "-r", str(requirements)]
    args += ["--python-version", options.python_version, "--implementation", "cp"]
    for t in _platform_tags(options.platform_tag):
        args += ["--platform", t]
    _pip(args, "downloading the image's wheels (--wheels)")


def serve_config(art: Artifact, options: PackageOptions, *, trusted: str | None) -> dict[str, Any]:
    """The server configuration baked into the image (see :class:`ServeConfig`)."""
    cfg: dict[str, Any] = {"artifact": art.id, "max_batch": options.max_batch}
    if art.encryption is not None:
        cfg["model_key_env"] = options.key_env
    if trusted is not None:
        cfg["trusted_public_key"] = trusted
    return cfg


def write_context(bundle: Bundle, out: Path, options: PackageOptions) -> PackageResult:
    """Write the build context (see the module docstring) for the chosen artifact."""
    art = target_artifact(bundle, options.artifact, formats=CONTAINER_FORMATS, target="docker")
    check_key(bundle, art, options)
    image = options.image or default_image(bundle)
    extras = set(options.extras)
    if art.encryption is not None or options.trusted_key is not None:
        extras.add("security")
    copy_bundle(bundle, out / "bundle")
    extra_files = ""
    trusted = None
    if options.trusted_key is not None:
        if not Path(options.trusted_key).is_file():
            raise UsageError(f"--trusted-key {options.trusted_key} does not exist")
        shutil.copy2(options.trusted_key, out / "trusted.pub.pem")
        extra_files = "trusted.pub.pem "
        trusted = "/opt/cvdeploy/trusted.pub.pem"
    reqs = image_requirements(art, extras=tuple(sorted(extras)))
    (out / "requirements.txt").write_text(
        "# The image's runtime path, pinned to what cvdeploy was tested with here; the\n"
        f"# runtime at the version artifact {art.id} was verified with.\n" + "\n".join(reqs) + "\n",
        encoding="utf-8",
    )
    (out / "wheels" / "deps").mkdir(parents=True)
    (out / "wheels" / "cvdeploy").mkdir(parents=True)
    spec = _cvdeploy_wheel(options, out / "wheels" / "cvdeploy")
    if options.wheels:
        _download_wheels(out / "requirements.txt", out / "wheels" / "deps", options)
    else:
        (out / "wheels" / "deps" / ".keep").write_text("")
    cfg = serve_config(art, options, trusted=trusted)
    (out / "serve.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    values = {
        "NAME": bundle.name,
        "ARTIFACT": art.id,
        "FORMAT": art.format,
        "PRECISION": art.precision,
        "COMPUTE": art.runtime_precision,
        "BASE": options.base,
        "PORT": options.port,
        "PIP_INDEX": "--no-index " if options.wheels else "",
        "CVDEPLOY_SPEC": spec,
        "EXTRA_FILES": extra_files,
        "IMAGE": image,
        "RUNTIME": reqs[-1],
    }
    (out / "Dockerfile").write_text(render_template("Dockerfile", values), encoding="utf-8")
    ep = out / "entrypoint.sh"
    ep.write_text(render_template("entrypoint.sh", values), encoding="utf-8")
    ep.chmod(0o755)
    allowed = ["Dockerfile", "requirements.txt", "wheels", "bundle", "serve.yaml", "entrypoint.sh"]
    if trusted:
        allowed.append("trusted.pub.pem")
    (out / ".dockerignore").write_text(
        "# The build context is an allow-list: only what the Dockerfile copies.\n*\n"
        + "".join(f"!{a}\n" for a in allowed)
        + "**/__pycache__\n**/.keep\n",
        encoding="utf-8",
    )
    run_env = f" -e {options.key_env}" if art.encryption is not None else ""
    protection = ", ".join(
        p
        for p in (
            "encrypted: the key comes from $" + str(options.key_env) + " at run time"
            if art.encryption is not None
            else "",
            "signed: only the trusted key's signature loads" if trusted else "",
        )
        if p
    )
    install = (
        "Every wheel is in `wheels/` (downloaded by `cvdeploy package --wheels`): the build "
        "needs no package index."
        if options.wheels
        else "The build installs `requirements.txt` from the package index (PyPI); "
        "`cvdeploy package --wheels` puts every wheel in the context for an offline build."
    )
    readme_values = {
        **values,
        "RUN_ENV": run_env,
        "PROTECTION": protection or "plain",
        "INSTALL_NOTE": install,
    }
    (out / "README.md").write_text(
        render_template("docker-README.md", readme_values), encoding="utf-8"
    )
    return PackageResult(
        target="docker",
        out=out,
        artifact=art.id,
        image=image,
        commands=[
            f"docker build -t {image} .",
            f"docker run --rm -p {options.port}:{options.port}{run_env} {image}",
        ],
        details={"requirements": reqs, "base": options.base, "offline": options.wheels},
    )


def package_docker(bundle: Bundle, out: Path, options: PackageOptions) -> PackageResult:
    """The docker target (registered in :data:`cvdeploy.deploy.base.TARGETS`)."""
    return write_context(bundle, out, options)
