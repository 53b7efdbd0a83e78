"""A model registry: a directory of bundle versions with stages (production, staging).

Layout::

    REGISTRY/
      registry.json              the state (written atomically: temp file + os.replace)
      models/NAME/VERSION/       one bundle per version (copied in by ``add``)

``registry.json`` holds, per model, its versions, the version at each stage and the past
production versions (a stack that ``rollback`` pops). The server polls this file and
switches to a newly promoted production version without dropping requests.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cvdeploy.bundle import Bundle, now
from cvdeploy.errors import BundleError, InputError, UsageError
from cvdeploy.failpoints import failpoint
from cvdeploy.fsutil import write_atomic
from cvdeploy.jsonsafe import loads as json_loads

__all__ = [
    "STAGES",
    "STATE_FILE",
    "ModelRegistry",
    "is_registry",
]

STATE_FILE = "registry.json"
STAGES = ("production", "staging")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def is_registry(path: Path | str) -> bool:
    """Whether ``path`` is a registry directory (holds ``registry.json``)."""
    return (Path(path) / STATE_FILE).is_file()


class ModelRegistry:
    """Read and change a registry directory. Every change rewrites the state atomically.

    Args:
        root: The registry directory.
        create: Create an empty registry when ``root`` has none.

    Raises:
        InputError: ``root`` is not a registry and ``create`` is false.
    """

    def __init__(self, root: Path | str, *, create: bool = False) -> None:
        self.root = Path(root)
        if not is_registry(self.root):
            if not create:
                raise InputError(
                    f"{self.root} is not a model registry (no {STATE_FILE})",
                    hint="create one with `cvdeploy registry add REGISTRY BUNDLE`",
                )
            self.root.mkdir(parents=True, exist_ok=True)
            with self._locked():
                if not is_registry(self.root):
                    self._write({"schema_version": 1, "models": {}})

    # state ----------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        """The state file."""
        return self.root / STATE_FILE

    def state(self) -> dict[str, Any]:
        """The current state (a fresh copy)."""
        try:
            data = json_loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:  # JSON, UTF-8, nested too deep
            raise InputError(
                f"registry state {self.state_path} cannot be read: {exc}",
                hint="restore it from a backup; it is only written atomically by cvdeploy",
            ) from exc
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            raise InputError(f"registry state {self.state_path} is malformed (no 'models')")
        return data

    def _write(self, state: dict[str, Any]) -> None:
        # under the lock no other writer is between its temp file and its rename, so any
        # temp file of the state is a leftover of a killed process
        for stray in self.root.glob(f".{STATE_FILE}.*.tmp"):
            stray.unlink(missing_ok=True)
        text = json.dumps(state, indent=2, sort_keys=True)
        write_atomic(self.state_path, text.encode("utf-8"), mode=0o600)
        failpoint("registry.state.written")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise writers (several CLI calls at once) with an advisory file lock."""
        with (self.root / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # queries --------------------------------------------------------------------------------
    def models(self) -> list[str]:
        """Names of the registered models."""
        return sorted(self.state()["models"])

    def model(self, name: str) -> dict[str, Any]:
        """The state of one model (versions, stages, previous production versions)."""
        models = self.state()["models"]
        if name not in models:
            known = ", ".join(sorted(models)) or "none"
            raise UsageError(
                f"model {name!r} is not in registry {self.root} (models: {known})",
                hint="list them with `cvdeploy registry list REGISTRY`",
            )
        return dict(models[name])

    def stage_version(self, name: str, stage: str = "production") -> str | None:
        """The version of a model at a stage, or ``None``."""
        return self.model(name)["stages"].get(stage)

    def bundle_path(self, name: str, version: str) -> Path:
        """The bundle directory of a version."""
        versions = self.model(name)["versions"]
        if version not in versions:
            raise UsageError(
                f"model {name!r} has no version {version!r} (versions: {', '.join(versions)})"
            )
        return self.root / versions[version]["path"]

    # changes --------------------------------------------------------------------------------
    def add(self, bundle_path: Path | str, *, version: str | None = None) -> tuple[str, str]:
        """Copy a bundle into the registry as a new version of its model.

        The first version of a model is promoted to production.

        Args:
            bundle_path: The bundle directory (verified before it is copied).
            version: The version label (default: the next integer).

        Returns:
            The model name and the version.

        Raises:
            BundleError: The bundle is invalid.
            UsageError: The version exists or is not a valid label.
        """
        bundle = Bundle.load(bundle_path)
        name = bundle.name
        if not _VERSION_RE.match(name):
            raise BundleError(f"bundle name {name!r} cannot be a registry model name")
        with self._locked():
            state = self.state()
            entry = state["models"].setdefault(
                name, {"versions": {}, "stages": {}, "previous": [], "history": []}
            )
            if version is None:
                nums = [int(v) for v in entry["versions"] if v.isdigit()]
                version = str(max(nums, default=0) + 1)
            if not _VERSION_RE.match(version):
                raise UsageError(
                    f"version {version!r} is not valid",
                    hint="use letters, digits, '.', '_' or '-' (at most 64 characters)",
                )
            if version in entry["versions"]:
                raise UsageError(
                    f"model {name!r} already has version {version!r}",
                    hint="pass another --version",
                )
            rel = Path("models") / name / version
            dest = self.root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{version}-"))
            try:
                shutil.copytree(bundle.path, staging, dirs_exist_ok=True)
                Bundle.load(staging)
                os.replace(staging, dest)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            entry["versions"][version] = {
                "path": rel.as_posix(),
                "added": now().isoformat(),
                "source": str(Path(bundle_path).resolve()),
            }
            entry["history"].append(
                {"time": now().isoformat(), "action": "add", "version": version}
            )
            if "production" not in entry["stages"]:
                entry["stages"]["production"] = version
            self._write(state)
        return name, version

    def promote(
        self, name: str, version: str, *, stage: str = "production", op: str | None = None
    ) -> str | None:
        """Put a version at a stage; returns the version that was there before.

        ``op`` (the audit entry's operation id) is kept in the history entry.

        Raises:
            UsageError: Unknown model, version or stage.
        """
        if stage not in STAGES:
            raise UsageError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
        with self._locked():
            state = self.state()
            entry = self._entry(state, name)
            if version not in entry["versions"]:
                raise UsageError(
                    f"model {name!r} has no version {version!r} "
                    f"(versions: {', '.join(entry['versions'])})"
                )
            before = entry["stages"].get(stage)
            entry["stages"][stage] = version
            if stage == "production" and before is not None and before != version:
                entry["previous"].append(before)
            entry["history"].append(
                {
                    "time": now().isoformat(),
                    "action": "promote",
                    "version": version,
                    "stage": stage,
                    "replaced": before,
                    **({"op": op} if op else {}),
                }
            )
            self._write(state)
        return before

    def rollback(
        self,
        name: str,
        *,
        check: Callable[[Path], None] | None = None,
        op: str | None = None,
    ) -> tuple[str, str]:
        """Put the previous production version back; returns ``(from, to)``.

        Args:
            name: The model.
            check: Called with the target version's bundle directory before the switch
                (under the lock); raising stops the rollback and nothing changes
                (``cvdeploy registry rollback`` re-checks parity there).
            op: The audit entry's operation id, kept in the history entry.

        Raises:
            UsageError: The model has no earlier production version.
        """
        with self._locked():
            state = self.state()
            entry = self._entry(state, name)
            if not entry["previous"]:
                raise UsageError(
                    f"model {name!r} has no earlier production version to roll back to",
                    hint="promote a version explicitly with `cvdeploy registry promote`",
                )
            target = entry["previous"].pop()
            if check is not None:
                check(self.root / entry["versions"][target]["path"])
            current = entry["stages"].get("production")
            entry["stages"]["production"] = target
            entry["history"].append(
                {
                    "time": now().isoformat(),
                    "action": "rollback",
                    "version": target,
                    "replaced": current,
                    **({"op": op} if op else {}),
                }
            )
            self._write(state)
        return str(current), target

    def _entry(self, state: dict[str, Any], name: str) -> dict[str, Any]:
        if name not in state["models"]:
            known = ", ".join(sorted(state["models"])) or "none"
            raise UsageError(f"model {name!r} is not in registry {self.root} (models: {known})")
        entry: dict[str, Any] = state["models"][name]
        return entry
