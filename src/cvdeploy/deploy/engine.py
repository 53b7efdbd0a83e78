"""The container engine: podman or docker, found on this machine, driven by its CLI.

On hosts without systemd (containers, CI runners) podman is given the cgroupfs manager, and
runc when crun is absent or the host's cgroups are in hybrid mode (v1 controllers with a v2
``unified`` mount, which crun refuses: "cgroups in hybrid mode not supported"): the settings
that work on a plain Debian install (``apt-get install --no-install-recommends podman runc``).
Builds use the host network (the build's ``pip`` reaches the index the host reaches) and
equal soft/hard ``nofile`` limits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cvdeploy.errors import BackendUnavailable, CheckFailed, UsageError

__all__ = ["Engine", "find_engine"]

ENGINES = ("podman", "docker")
ULIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")
"""Equal soft and hard limits, below the hosts' hard limits: runc cannot raise a limit past
the hard one it inherits (`error setting rlimit`), which the engines' defaults may ask for."""
CONTAINERS_CONF = '[containers]\ndefault_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\n'
"""The same limits for what takes no ``--ulimit`` (``podman kube play``): a containers.conf
given by ``CONTAINERS_CONF``."""


@dataclass(frozen=True, slots=True)
class Engine:
    """A container engine command line.

    Attributes:
        name: ``podman`` or ``docker``.
        argv: The command and its global options.
    """

    name: str
    argv: tuple[str, ...]

    def run(
        self,
        args: Sequence[str],
        *,
        timeout: float = 600,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ENGINE args`` (``env``: added to this process's environment); a failure
        raises :class:`CheckFailed` with its output."""
        full_env = {**os.environ, **env} if env else None
        try:
            res = subprocess.run(
                [*self.argv, *args],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                env=full_env,
            )
        except subprocess.TimeoutExpired:
            raise CheckFailed(
                f"`{self.name} {' '.join(args[:2])}` took over {timeout:.0f} s"
            ) from None
        if check and res.returncode != 0:
            tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-15:])
            raise CheckFailed(f"`{self.name} {' '.join(args[:2])}` failed:\n{tail}")
        return res

    def build(
        self,
        context: Path,
        tag: str,
        *,
        build_args: dict[str, str] | None = None,
        timeout: float = 1800,
    ) -> None:
        """Build ``context/Dockerfile`` as ``tag`` (host network, equal nofile limits)."""
        args = ["build", "--network", "host", *ULIMITS, "-t", tag]
        if self.name == "podman":
            args += ["--format", "docker"]  # keeps HEALTHCHECK (OCI images drop it)
        for k, v in (build_args or {}).items():
            args += ["--build-arg", f"{k}={v}"]
        self.run([*args, str(context)], timeout=timeout)

    def run_detached(
        self,
        tag: str,
        name: str,
        *,
        env: dict[str, str] | None = None,
        args: Sequence[str] = (),
        timeout: float = 120,
    ) -> str:
        """Start a container on the host network (it binds what ``env`` says: tests give
        ``HOST=127.0.0.1``); returns its id. Remove it with :meth:`remove_container`."""
        cmd = ["run", "-d", "--name", name, "--network", "host", *ULIMITS]
        for k, v in (env or {}).items():
            cmd += ["-e", f"{k}={v}"]
        res = self.run([*cmd, tag, *args], timeout=timeout)
        return res.stdout.strip().splitlines()[-1]

    def logs(self, name: str) -> str:
        """A container's output (stdout and stderr)."""
        res = self.run(["logs", name], timeout=60, check=False)
        return res.stdout + res.stderr

    def image_size(self, tag: str) -> int:
        """The image's size in bytes (uncompressed, as the engine reports it)."""
        res = self.run(["image", "inspect", tag, "--format", "{{json .Size}}"], timeout=60)
        return int(json.loads(res.stdout.strip().splitlines()[-1]))

    def image_exists(self, tag: str) -> bool:
        """Whether the engine has an image ``tag``."""
        return self.run(["image", "inspect", tag], timeout=60, check=False).returncode == 0

    def remove_image(self, tag: str) -> None:
        """Remove an image (no error when it is absent)."""
        self.run(["rmi", "-f", tag], timeout=120, check=False)

    def remove_container(self, name: str) -> None:
        """Stop and remove a container by name (no error when it is absent)."""
        self.run(["rm", "-f", "-t", "2", name], timeout=120, check=False)


def _works(argv: Sequence[str]) -> bool:
    try:
        res = subprocess.run(
            [*argv, "info"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def cgroups_hybrid(root: Path = Path("/sys/fs/cgroup")) -> bool:
    """Whether ``root`` is a hybrid cgroup layout: v1 controller mounts beside a v2
    ``unified`` one (a pure v2 host has ``cgroup.controllers`` at the root)."""
    return (root / "unified").is_dir() and not (root / "cgroup.controllers").exists()


def engine_argv(name: str, cgroup_root: Path = Path("/sys/fs/cgroup")) -> tuple[str, ...]:
    """The command line of an engine, with the host-dependent global options."""
    argv: list[str] = [name]
    if name == "podman":
        if not Path("/run/systemd/system").is_dir():
            argv.append("--cgroup-manager=cgroupfs")
        crun_fails = shutil.which("crun") is None or cgroups_hybrid(cgroup_root)
        if crun_fails and shutil.which("runc") is not None:
            argv.append("--runtime=runc")
    return tuple(argv)


def find_engine(name: str | None = None) -> Engine:
    """The container engine to use: ``name``, or the first of podman, docker that works.

    Raises:
        UsageError: An unknown engine name.
        BackendUnavailable: No engine is installed and working (with how to install one).
    """
    names = ENGINES if name in (None, "auto") else (str(name),)
    if names[0] not in ENGINES:
        raise UsageError(f"unknown container engine {name!r}", hint="use podman or docker")
    tried = []
    for n in names:
        if shutil.which(n) is None:
            tried.append(f"{n}: not installed")
            continue
        argv = engine_argv(n)
        if _works(argv):
            return Engine(n, argv)
        tried.append(f"{n}: `{n} info` fails (no daemon or no permission)")
    raise BackendUnavailable(
        "no container engine works here (" + "; ".join(tried) + ")",
        hint="install one: apt-get install -y --no-install-recommends podman runc "
        "(or start the Docker daemon); the package directory can still be built elsewhere",
    )
