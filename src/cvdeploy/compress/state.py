"""The working folder of a compression run: its saved state, for ``--resume``.

A run keeps its intermediate bundles and ``state.pt`` (weights, optimizer, progress, the
rows measured so far) in a working folder beside ``--out`` (``OUT.work``). The state is
written atomically; a run interrupted (Ctrl-C, a crash, the machine going down) continues
from it with ``--resume``, and the folder is removed when the run succeeds.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cvdeploy.errors import UsageError

__all__ = ["WorkDir", "check_budget", "check_out"]

STATE = "state.pt"


def check_budget(minutes: float | None, iters: int | None, *, what: str = "training") -> None:
    """Refuse a run without a positive budget (``--minutes`` and/or ``--iters``)."""
    if minutes is None and iters is None:
        raise UsageError(f"give a {what} budget: --minutes M (or --iters N)")
    if (minutes is not None and minutes <= 0) or (iters is not None and iters < 1):
        raise UsageError("--minutes and --iters must be positive")


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse, before any training, an ``--out`` that holds a bundle (unless ``overwrite``);
    :meth:`cvdeploy.bundle.Bundle.create` checks again when the result is written."""
    if (out / "bundle.json").exists() and not overwrite:
        raise UsageError(
            f"a bundle already exists at {out}", hint="pass --overwrite or another --out"
        )


@dataclass
class WorkDir:
    """A run's working folder.

    Attributes:
        path: The folder.
        command: What identifies the run (a resumed run must match it).
    """

    path: Path
    command: dict[str, Any]

    @classmethod
    def open(
        cls, path: Path, *, command: dict[str, Any], resume: bool, overwrite: bool
    ) -> tuple[WorkDir, dict[str, Any] | None]:
        """Open the folder; return it and the saved state when resuming.

        Raises:
            UsageError: A saved state exists and neither ``resume`` nor ``overwrite`` was
                given, or the saved state is from another command.
        """
        path = Path(path)
        state_file = path / STATE
        state: dict[str, Any] | None = None
        if state_file.is_file() and not overwrite:
            if not resume:
                raise UsageError(
                    f"{path} holds the state of an interrupted run",
                    hint="pass --resume to continue it, or --overwrite to start again",
                )
            try:
                state = torch.load(state_file, map_location="cpu", weights_only=True)
            except Exception as exc:  # a truncated or foreign file
                raise UsageError(
                    f"cannot read the saved state {state_file}: {exc}"[:300],
                    hint="pass --overwrite to start again",
                ) from exc
            saved = (state or {}).get("command", {})
            diff = sorted(k for k in set(saved) | set(command) if saved.get(k) != command.get(k))
            if diff:
                raise UsageError(
                    f"the saved state in {path} is from a different command "
                    f"({', '.join(diff)} differ)",
                    hint="run the same command with --resume, or --overwrite to start again",
                )
        elif path.exists() and overwrite:
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        return cls(path, command), state

    def save(self, state: dict[str, Any]) -> None:
        """Write the state atomically."""
        tmp = self.path / (STATE + ".tmp")
        torch.save({**state, "command": self.command}, tmp)
        tmp.replace(self.path / STATE)

    def remove(self) -> None:
        """Delete the folder (after a successful run)."""
        shutil.rmtree(self.path, ignore_errors=True)
