"""`cvdeploy package`, `cvdeploy batch`, `cvdeploy card`: deploy a bundle anywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cvdeploy.cli.common import err_console, handle_errors, out_console, print_json


@handle_errors
def card_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory")],
    out: Annotated[
        Path | None, typer.Option(help="write MODEL_CARD.md and CHANGELOG.md here [the bundle]")
    ] = None,
    intended_use: Annotated[
        str | None, typer.Option(help="intended use (kept in the bundle's card.yaml)")
    ] = None,
    limitations: Annotated[
        str | None, typer.Option(help="known limitations (kept in card.yaml)")
    ] = None,
    license_: Annotated[
        str | None, typer.Option("--license", help="licence id, e.g. apache-2.0 (card.yaml)")
    ] = None,
    authors: Annotated[str | None, typer.Option(help="authors (card.yaml)")] = None,
    public_key: Annotated[
        Path | None,
        typer.Option(help="Ed25519 public key: verify the signature and say so in the card"),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the paths as JSON")] = False,
) -> None:
    """Write MODEL_CARD.md (Hugging Face-style metadata, intended use and limitations, the
    preprocessing contract, every artifact with its hash, signature status, precision, mAP
    with a bootstrap interval and latency on named hardware, optimization settings, history)
    and CHANGELOG.md, both generated from bundle.json.

    Every command that changes the bundle refreshes them; run this to add the hand-written
    fields, to verify the signature with --public-key, or to write them elsewhere (--out).
    """
    from cvdeploy.bundle import Bundle
    from cvdeploy.deploy import write_card, write_notes

    b = Bundle.load(bundle)
    fields = {
        "intended_use": intended_use,
        "limitations": limitations,
        "license": license_,
        "authors": authors,
    }
    if any(v is not None for v in fields.values()):
        write_notes(b.path, **fields)
    files = write_card(b, out=out, public_key=public_key)
    if json_out:
        print_json({"card": files.card, "changelog": files.changelog})
        return
    out_console().print(f"wrote {files.card}")
    err_console().print(f"and {files.changelog}")
