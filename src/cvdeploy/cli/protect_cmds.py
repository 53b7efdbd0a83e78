"""`cvdeploy keygen|encrypt|decrypt|sign|verify|obfuscate`: protected models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cvdeploy.bundle import Bundle
from cvdeploy.cli.common import err_console, handle_errors, out_console, print_json
from cvdeploy.errors import CheckFailed, UsageError

KeyFile = Annotated[
    Path | None, typer.Option("--key-file", help="file holding the AES-256 model key (base64)")
]
KeyEnv = Annotated[
    str | None,
    typer.Option("--key-env", help="environment variable holding the model key (base64)"),
]
JsonOut = Annotated[bool, typer.Option("--json", help="print one JSON object")]


@handle_errors
def keygen_cmd(
    key_file: Annotated[
        Path | None, typer.Option("--key-file", help="write a new AES-256 model key here (0600)")
    ] = None,
    signing_key: Annotated[
        Path | None,
        typer.Option("--signing-key", help="write a new Ed25519 private key here (PEM, 0600)"),
    ] = None,
    public_key: Annotated[
        Path | None,
        typer.Option("--public-key", help="where the Ed25519 public key goes (with --signing-key)"),
    ] = None,
    json_out: JsonOut = False,
) -> None:
    """Make a model encryption key and/or an Ed25519 signing key pair (never printed)."""
    from cvdeploy.security.crypto import generate_key, write_key_file
    from cvdeploy.security.signing import generate_keypair

    if key_file is None and signing_key is None:
        raise UsageError("nothing to make", hint="pass --key-file F and/or --signing-key PRIV")
    if (signing_key is None) != (public_key is None):
        raise UsageError("--signing-key and --public-key go together")
    result: dict[str, str] = {}
    if key_file is not None:
        key = generate_key()
        write_key_file(key_file, key)
        result.update(key_file=str(key_file), key_id=key.key_id)
    if signing_key is not None and public_key is not None:
        kid = generate_keypair(signing_key, public_key)
        result.update(signing_key=str(signing_key), public_key=str(public_key), signing_key_id=kid)
    if json_out:
        print_json(result)
        return
    con = out_console()
    if "key_file" in result:
        con.print(f"model key {result['key_id']} written to {key_file} (keep it secret)")
    if "signing_key" in result:
        con.print(
            f"signing key {result['signing_key_id']}: private {signing_key} (keep it secret), "
            f"public {public_key} (give it to servers)"
        )


@handle_errors
def encrypt_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory")],
    key_file: KeyFile = None,
    key_env: KeyEnv = None,
    out: Annotated[
        Path | None, typer.Option(help="write an encrypted copy here (default: in place)")
    ] = None,
    artifact: Annotated[
        list[str] | None, typer.Option(help="artifact id to encrypt (repeat; default: all)")
    ] = None,
    json_out: JsonOut = False,
) -> None:
    """Encrypt artifact files with AES-256-GCM, bound to the bundle and artifact."""
    from cvdeploy.security.crypto import encrypt_bundle, load_key

    key = load_key(key_file=key_file, key_env=key_env)
    rep = encrypt_bundle(Bundle.load(bundle), key, out=out, artifacts=artifact)
    if json_out:
        print_json(rep.to_dict())
        return
    con = out_console()
    done = ", ".join(rep.changed) or "nothing"
    con.print(f"encrypted {done} in {rep.bundle} with key {rep.key_id}")
    if rep.skipped:
        con.print(f"already encrypted: {', '.join(rep.skipped)}")
    for n in rep.notes:
        err_console().print(f"note: {n}")


@handle_errors
def decrypt_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory")],
    out: Annotated[Path, typer.Option(help="write the decrypted copy here")],
    key_file: KeyFile = None,
    key_env: KeyEnv = None,
    artifact: Annotated[
        list[str] | None, typer.Option(help="artifact id to decrypt (repeat; default: all)")
    ] = None,
    json_out: JsonOut = False,
) -> None:
    """Write a decrypted copy of a bundle (on a trusted host only: the weights are plain)."""
    from cvdeploy.security.crypto import decrypt_bundle, load_key

    key = load_key(key_file=key_file, key_env=key_env)
    rep = decrypt_bundle(Bundle.load(bundle), key, out=out, artifacts=artifact)
    if json_out:
        print_json(rep.to_dict())
        return
    out_console().print(f"decrypted {', '.join(rep.changed) or 'nothing'} into {rep.bundle}")


@handle_errors
def sign_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory")],
    key: Annotated[Path, typer.Option("--key", help="Ed25519 private key (PEM)")],
    json_out: JsonOut = False,
) -> None:
    """Sign the manifest (which lists every file's sha256) with Ed25519 into bundle.sig."""
    from cvdeploy.security.signing import load_private_key, sign_bundle, verify_bundle

    sig = sign_bundle(bundle, key)
    rep = verify_bundle(bundle, load_private_key(key).public_key())
    if json_out:
        print_json({"signature": str(sig), "key_id": rep.key_id, "files": rep.files})
        return
    out_console().print(f"signed {bundle} with key {rep.key_id}: {sig} ({rep.files} files)")


@handle_errors
def verify_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory")],
    public_key: Annotated[
        Path, typer.Option("--public-key", help="trusted Ed25519 public key (PEM)")
    ],
    json_out: JsonOut = False,
) -> None:
    """Check the bundle's signature and every file's sha256; exit 1 naming what changed."""
    from cvdeploy.security.signing import verify_bundle

    rep = verify_bundle(bundle, public_key)
    if json_out:
        print_json(rep.to_dict())
        if not rep.ok:
            raise typer.Exit(CheckFailed.exit_code)
        return
    if not rep.ok:
        raise CheckFailed(
            f"bundle {bundle} is not trustworthy:\n  - " + "\n  - ".join(rep.problems),
            hint="re-sign after an intended change, or restore the bundle from its source",
        )
    out_console().print(
        f"ok: {bundle} is signed by {rep.key_id} and its {rep.files} files match the manifest"
    )


@handle_errors
def obfuscate_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory")],
    artifact: Annotated[
        str | None, typer.Option(help="ONNX artifact to obfuscate (default: plain fp32 onnx)")
    ] = None,
    out_id: Annotated[str | None, typer.Option(help="new artifact id (default: ID-obf)")] = None,
    data: Annotated[
        Path | None, typer.Option(help="images for the parity gate (default: bundle samples)")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing artifact")] = False,
    json_out: JsonOut = False,
) -> None:
    """Add an ONNX artifact with opaque names and no metadata, proven equal by the gate."""
    from cvdeploy.export.obfuscate import obfuscate_bundle

    rep = obfuscate_bundle(bundle, artifact=artifact, out_id=out_id, data=data, overwrite=overwrite)
    if json_out:
        print_json(rep.to_dict())
        return
    r = rep.renamed
    out_console().print(
        f"added {rep.artifact} (from {rep.source}): renamed {r['nodes']} nodes and "
        f"{r['tensors']} tensors; parity passed on {rep.parity.get('images')} images"
    )
