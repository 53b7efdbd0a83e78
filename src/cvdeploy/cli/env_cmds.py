"""`cvdeploy env`, `cvdeploy runtimes`: what this machine has."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cvdeploy.cli.common import handle_errors, out_console, print_json


@handle_errors
def runtimes_cmd(
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List runtime backends and whether each can run here (with the install hint if not)."""
    from cvdeploy.runtime import RUNTIMES

    rows = RUNTIMES.list()
    if json_out:
        print_json(
            [
                {
                    "name": r.name,
                    "available": r.available,
                    "reason": r.reason,
                    "description": r.description,
                }
                for r in rows
            ]
        )
        return
    t = Table(title="runtimes")
    for c in ("format", "status", "description"):
        t.add_column(c)
    for r in rows:
        t.add_row(r.name, "available" if r.available else str(r.reason), r.description)
    out_console().print(t)
