"""The ``cvdeploy`` command line (typer). Thin: parse, call the library, print, exit code."""

from __future__ import annotations

import sys

import typer

from cvdeploy.cli import (
    bench_cmds,
    bundle_cmds,
    compress_cmds,
    deploy_cmds,
    doctor_cmds,
    env_cmds,
    export_cmds,
    oneshot_cmds,
    protect_cmds,
    quantize_cmds,
    run_cmds,
    security_cmds,
    serve_cmds,
    tune_cmds,
    zoo_cmds,
)
from cvdeploy.cli.common import error_object, print_json
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


app.command("deploy")(oneshot_cmds.deploy_cmd)
app.command("import")(bundle_cmds.import_cmd)
app.command("info")(bundle_cmds.info_cmd)
app.command("export")(export_cmds.export_cmd)
app.command("predict")(run_cmds.predict_cmd)
app.command("eval")(run_cmds.eval_cmd)
app.command("quantize")(quantize_cmds.quantize_cmd)
app.command("prune")(compress_cmds.prune_cmd)
app.command("distill")(compress_cmds.distill_cmd)
app.command("qat")(compress_cmds.qat_cmd)
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
app.command("card")(deploy_cmds.card_cmd)
app.command("package")(deploy_cmds.package_cmd)
app.command("batch")(deploy_cmds.batch_cmd)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point.

    Usage errors (a missing argument, an unknown option) are click's, raised before a
    command runs: they exit 2 with click's message, and with ``--json`` on the command line
    stdout gets the same ``{"error": {...}}`` object as every other failure.
    """
    usage_error = typer.BadParameter.__mro__[2]  # click's ClickException, as typer vendors it
    args = sys.argv[1:] if argv is None else argv
    try:
        code = app(args=args, standalone_mode=False)
    except usage_error as exc:  # type: ignore[misc]
        exc.show()
        if "--json" in args:
            print_json(
                error_object(
                    exc.format_message(),
                    hint="see --help",
                    exit_code=exc.exit_code,
                    type_name=type(exc).__name__,
                )
            )
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.stderr.write("aborted\n")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
