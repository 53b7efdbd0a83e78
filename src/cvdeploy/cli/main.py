"""The ``cvdeploy`` command line (typer). Thin: parse, call the library, print, exit code."""

from __future__ import annotations

import typer

from cvdeploy.cli import (
    bench_cmds,
    bundle_cmds,
    doctor_cmds,
    env_cmds,
    export_cmds,
    protect_cmds,
    quantize_cmds,
    run_cmds,
    security_cmds,
    serve_cmds,
    tune_cmds,
    zoo_cmds,
)
from cvdeploy.version import __version__

app = typer.Typer(
    name="cvdeploy",
    help="From a trained vision model to a verified, fast, secure deployment.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cvdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """cvdeploy: export, verify, benchmark and serve vision models."""


app.command("import")(bundle_cmds.import_cmd)
app.command("info")(bundle_cmds.info_cmd)
app.command("export")(export_cmds.export_cmd)
app.command("predict")(run_cmds.predict_cmd)
app.command("eval")(run_cmds.eval_cmd)
app.command("quantize")(quantize_cmds.quantize_cmd)
app.command("bench")(bench_cmds.bench_cmd)
app.command("tune")(tune_cmds.tune_cmd)
app.command("runtimes")(env_cmds.runtimes_cmd)
app.command("env")(env_cmds.env_cmd)
app.command("doctor")(doctor_cmds.doctor_cmd)
serve_cmds.logs_app.command("drift")(doctor_cmds.logs_drift)
app.command("demo")(zoo_cmds.demo_cmd)
app.add_typer(zoo_cmds.zoo_app, name="zoo")
app.command("serve")(serve_cmds.serve_cmd)
app.add_typer(serve_cmds.registry_app, name="registry")
app.add_typer(serve_cmds.logs_app, name="logs")
app.add_typer(security_cmds.security_app, name="security")
app.add_typer(security_cmds.users_app, name="users")
app.add_typer(security_cmds.keys_app, name="keys")
app.add_typer(security_cmds.audit_app, name="audit")
app.command("keygen")(protect_cmds.keygen_cmd)
app.command("encrypt")(protect_cmds.encrypt_cmd)
app.command("decrypt")(protect_cmds.decrypt_cmd)
app.command("sign")(protect_cmds.sign_cmd)
app.command("verify")(protect_cmds.verify_cmd)
app.command("obfuscate")(protect_cmds.obfuscate_cmd)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
