"""Shared CLI plumbing: error mapping, output helpers."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from cvdeploy.errors import CvdeployError

P = ParamSpec("P")
R = TypeVar("R")


def err_console() -> Console:
    """Console on stderr (progress, notes, errors)."""
    return Console(stderr=True, highlight=False)


def out_console() -> Console:
    """Console on stdout (tables)."""
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 140)


def error_object(
    message: str, *, hint: str | None, exit_code: int, type_name: str
) -> dict[str, Any]:
    """The ``{"error": {...}}`` object every command prints on stdout under ``--json``."""
    return {"error": {"message": message, "hint": hint, "exit_code": exit_code, "type": type_name}}


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn cvdeploy errors into a clear message and their exit code.

    The one place the CLI maps errors: each :class:`~cvdeploy.errors.CvdeployError` carries
    its ``exit_code`` (1 a check failed, 2 bad usage or input); Ctrl-C exits 130. The message
    goes to stderr; with ``--json`` (a command's ``json_out`` option) stdout also gets
    ``{"error": {"message", "hint", "exit_code", "type"}}``, so a script always reads
    one JSON object.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        json_mode = bool(kwargs.get("json_out"))
        try:
            return fn(*args, **kwargs)
        except CvdeployError as exc:
            con = err_console()
            con.print(f"[bold red]error:[/] {escape(exc.message)}", markup=True, soft_wrap=True)
            if exc.hint:
                con.print(f"  [yellow]hint:[/] {escape(exc.hint)}", soft_wrap=True)
            if json_mode:
                print_json(
                    error_object(
                        exc.message,
                        hint=exc.hint,
                        exit_code=exc.exit_code,
                        type_name=type(exc).__name__,
                    )
                )
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console().print("interrupted: nothing was changed")
            if json_mode:
                print_json(
                    error_object(
                        "interrupted: nothing was changed",
                        hint=None,
                        exit_code=130,
                        type_name="KeyboardInterrupt",
                    )
                )
            raise typer.Exit(130) from None

    return wrapper


@contextlib.contextmanager
def third_party_output_to_stderr(log_file: Path | None = None) -> Iterator[None]:
    """Keep stdout for our table or JSON, and the terminal for our own messages, while
    library stages run.

    The CLI is the application, so it decides what third-party code prints: NNCF's INFO log is
    lowered to WARNING. Without ``log_file`` whatever else writes to stdout during the block
    (NNCF's progress bars) goes to stderr. With ``log_file`` (the default of the long
    commands; ``--verbose`` turns it off), third-party output goes to that file instead:
    Python-level stdout and warnings, and everything native code writes to file descriptor 2
    (TensorFlow's and the LiteRT interpreter's log lines); cvdeploy's own messages and
    progress bars still reach the terminal.
    """
    with contextlib.suppress(ImportError):
        import nncf

        nncf.set_log_level(logging.WARNING)
    if log_file is None:
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a", encoding="utf-8") as log:
        try:
            own_fd2 = sys.stderr.fileno() == 2
        except (AttributeError, OSError, ValueError):
            own_fd2 = False  # stderr already captured (tests): leave it as it is
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        ours: Any = None
        old_stderr = sys.stderr
        if own_fd2:
            ours = io.TextIOWrapper(io.FileIO(os.dup(saved), "w"), write_through=True)
            sys.stderr = ours

        def to_log(
            message: Warning | str,
            category: type[Warning],
            filename: str,
            lineno: int,
            file: Any = None,
            line: str | None = None,
        ) -> None:
            log.write(warnings.formatwarning(message, category, filename, lineno, line))

        try:
            with contextlib.redirect_stdout(log), warnings.catch_warnings():
                warnings.showwarning = to_log
                yield
        finally:
            log.flush()
            if ours is not None:
                ours.flush()
                sys.stderr = old_stderr
                ours.close()
            os.dup2(saved, 2)
            os.close(saved)


def third_party_log(command: str) -> Path:
    """Where a long command's third-party output goes (unless ``--verbose``):
    ``$XDG_CACHE_HOME/cvdeploy/logs/COMMAND-TIME.log`` (``~/.cache`` by default)."""
    import datetime as _dt

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cvdeploy" / "logs"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return base / f"{command}-{stamp}-{os.getpid()}.log"


def say_log(log_file: Path | None) -> None:
    """Tell where third-party output went, when there was any."""
    if log_file is not None and log_file.is_file() and log_file.stat().st_size > 0:
        err_console().print(f"third-party output (TensorFlow, NNCF...): {log_file}", soft_wrap=True)


VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose",
        help="show third-party output (TensorFlow, NNCF) instead of logging it to a file",
    ),
]


def print_json(obj: Any) -> None:
    """Print one JSON object on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=_default) + "\n")


def _default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "model_dump"):  # manifest models (a check's typed payload, recommended)
        return o.model_dump(mode="json")
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "isoformat"):
        return o.isoformat()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def parse_imgsz(value: str | None) -> tuple[int, int] | None:
    """Parse ``640`` or ``480,640`` (height,width)."""
    if value is None:
        return None
    parts = [p for p in value.replace("x", ",").split(",") if p.strip()]
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise typer.BadParameter(f"imgsz must be N or H,W, got {value!r}") from None
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) <= 0:
        raise typer.BadParameter(f"imgsz must be N or H,W with positive values, got {value!r}")
    return nums[0], nums[1]
