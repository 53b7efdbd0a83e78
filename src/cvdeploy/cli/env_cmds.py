"""`cvdeploy env`, `cvdeploy runtimes`: what this machine has."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
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
        # escape: "cvdeploy[openvino]" in a hint is not rich markup
        t.add_row(r.name, "available" if r.available else escape(str(r.reason)), r.description)
    out_console().print(t)


@handle_errors
def env_cmd(
    compare_bundle: Annotated[
        Path | None,
        typer.Option(
            "--compare",
            help="bundle whose artifacts' recorded environments (made with, measured with) "
            "to compare with this machine",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Print this machine's environment fingerprint, and what differs from a bundle's records.

    Differences are those known to change numerics or speed: runtime and preprocessing
    library versions, CPU model and instruction sets (VNNI, AMX...), GPU and driver, Python.
    """
    from cvdeploy.environment import fingerprint

    current = fingerprint()
    comparisons = _comparisons(compare_bundle, current) if compare_bundle is not None else None
    if json_out:
        obj: dict[str, Any] = {"current": current}
        if comparisons is not None:
            obj["bundle"] = str(compare_bundle)
            obj["comparisons"] = comparisons
        print_json(obj)
        return
    con = out_console()
    t = Table(title="this environment")
    t.add_column("field")
    t.add_column("value")
    cpu = current["cpu"]
    t.add_row("python", f"{current['python']} ({current['implementation']})")
    t.add_row("os", current["os"])
    t.add_row("cvdeploy", current["cvdeploy"])
    t.add_row("cpu", f"{cpu['model']} ({cpu['arch']}, {cpu['logical_cores']} logical cores)")
    t.add_row("cpu flags", ", ".join(cpu["flags"]) or "-")
    t.add_row(
        "gpus",
        "; ".join(f"{g['name']} (driver {g['driver']}, {g['memory']})" for g in current["gpus"])
        or "none",
    )
    for name, ver in current["packages"].items():
        t.add_row(name, ver)
    con.print(t)
    if comparisons is None:
        return
    d = Table(title=f"differences from what {compare_bundle} recorded")
    for c in ("artifact", "record", "field", "recorded", "now", "affects"):
        d.add_column(c)
    n = 0
    notes: dict[tuple[str, str], str] = {}
    for comp in comparisons:
        for diff in comp["differences"]:
            d.add_row(
                comp["artifact"],
                comp["record"],
                diff["field"],
                diff["recorded"],
                diff["current"],
                diff["affects"],
            )
            n += 1
            if diff["field"].startswith("native "):
                notes[(comp["artifact"], diff["field"])] = diff["note"]
    if n:
        con.print(d)
        for (aid, field), note in notes.items():  # what the runtime does here, and the pin
            con.print(f"{aid}, {field}: {escape(note)}")
    else:
        con.print(
            f"no differences: every record of {compare_bundle} was made in an environment "
            "like this one"
        )


def _comparisons(path: Path, current: dict[str, Any]) -> list[dict[str, Any]]:
    from cvdeploy.bundle import Bundle
    from cvdeploy.environment import compare, recorded_environment
    from cvdeploy.precision import precision_differences

    bundle = Bundle.load(path, verify=False)
    out: list[dict[str, Any]] = []
    for art in bundle.manifest.artifacts:
        records: list[tuple[str, dict[str, Any]]] = []
        if art.environment:
            records.append(("made", dict(art.environment)))
        for chk in art.checks:
            env = recorded_environment(chk.data)
            if env:
                records.append((f"{chk.kind} {chk.name}", env))
        if not records:
            out.append({"artifact": art.id, "record": "-", "differences": [], "note": "no record"})
        for label, env in records:
            diffs = precision_differences(
                current, env, fmt=art.format, inference_precision=art.runtime_precision
            ) + compare(current, env)
            out.append(
                {
                    "artifact": art.id,
                    "inference_precision": art.runtime_precision,
                    "record": label,
                    "differences": [asdict(x) for x in diffs],
                }
            )
    return out
