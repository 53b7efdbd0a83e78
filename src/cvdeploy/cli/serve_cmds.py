"""`cvdeploy serve`, `cvdeploy registry ...`, `cvdeploy logs export`: serving and versions."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from cvdeploy.cli.common import err_console, handle_errors, out_console, print_json
from cvdeploy.errors import BackendUnavailable, CvdeployError, UsageError
from cvdeploy.failpoints import failpoint

if TYPE_CHECKING:
    from cvdeploy.security.audit import AuditLog

registry_app = typer.Typer(
    help="Model registry: versions of bundles, with production and staging stages.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
logs_app = typer.Typer(
    help="Sampled inference logs written by `cvdeploy serve --sample-rate`.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _need_serve_extra() -> None:
    missing = [
        m
        for m in ("fastapi", "uvicorn", "prometheus_client", "multipart")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise BackendUnavailable(
            f"serving needs {', '.join(missing)}, which are not installed",
            hint="pip install 'cvdeploy[serve]'",
        )


_AuditLogOpt = Annotated[
    Path | None,
    typer.Option(envvar="CVDEPLOY_AUDIT_LOG", help="record the change in this audit log"),
]
_AuditKeyOpt = Annotated[
    Path | None,
    typer.Option(envvar="CVDEPLOY_AUDIT_KEY_FILE", help="audit HMAC key file"),
]


def _open_audit(log: Path | None, key_file: Path | None) -> AuditLog | None:
    if log is None and key_file is None:
        return None
    if log is None or key_file is None:
        raise UsageError("--audit-log and --audit-key-file go together")
    from cvdeploy.security.audit import AuditLog, load_key

    return AuditLog(log, load_key(key_file))


@contextlib.contextmanager
def _audited(
    audit: AuditLog | None, action: str, target: str, detail: dict[str, Any]
) -> Iterator[str | None]:
    """Record the intent of ``action`` first, then its outcome once the block has run.

    The intent (``outcome: started``, with an operation id the registry's history repeats)
    is written and fsync'd before anything changes, so a process killed at any moment
    leaves no change unaudited: a ``started`` entry without an outcome names it.

    Yields:
        The operation id (``None`` without an audit log).
    """
    if audit is None:
        yield None
        return
    import secrets

    from cvdeploy.security.audit import cli_actor

    op = secrets.token_hex(6)
    audit.record(
        actor=cli_actor(), action=action, outcome="started", target=target, op=op, **detail
    )
    try:
        yield op
    except CvdeployError as exc:
        audit.record(
            actor=cli_actor(),
            action=action,
            outcome="failed",
            target=target,
            op=op,
            error=exc.message,
            **detail,
        )
        raise
    audit.record(actor=cli_actor(), action=action, outcome="ok", target=target, op=op, **detail)


@handle_errors
def serve_cmd(
    source: Annotated[Path, typer.Argument(help="bundle directory or model registry directory")],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[
        int | None, typer.Option(help="port to listen on [8000, or the platform's]")
    ] = None,
    platform: Annotated[
        str,
        typer.Option(
            help="also answer a cloud platform's container contract: sagemaker (/ping, "
            "/invocations, port 8080), vertex (AIP_HTTP_PORT, AIP_PREDICT_ROUTE, "
            "AIP_HEALTH_ROUTE), azureml (/score, GET /, port 8080), auto (from the environment: "
            "CVDEPLOY_PLATFORM, AIP_*, AZUREML_MODEL_DIR, SAGEMAKER_*), or none"
        ),
    ] = "none",
    config: Annotated[
        Path | None, typer.Option(help="YAML file with server options (flags override it)")
    ] = None,
    artifact: Annotated[
        str | None, typer.Option(help="artifact id, or auto (the bundle's recommended)")
    ] = None,
    max_batch: Annotated[int | None, typer.Option(help="most images per batch [8]")] = None,
    max_wait_ms: Annotated[
        float | None, typer.Option(help="longest wait for a batch to fill, ms [5]")
    ] = None,
    queue: Annotated[
        int | None, typer.Option(help="most queued images per model; beyond: 503 [256]")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="inference worker threads per model, each with its runner [auto]"),
    ] = None,
    threads: Annotated[int | None, typer.Option(help="runtime threads per worker")] = None,
    timeout: Annotated[
        float | None, typer.Option(help="request deadline in seconds; beyond: 504 [30]")
    ] = None,
    sample_rate: Annotated[
        float | None, typer.Option(help="fraction of requests logged to --log-dir [0]")
    ] = None,
    log_dir: Annotated[Path | None, typer.Option(help="folder for sampled requests")] = None,
    key_file: Annotated[
        Path | None, typer.Option("--key-file", help="model key file for encrypted artifacts")
    ] = None,
    key_env: Annotated[
        str | None, typer.Option("--key-env", help="env variable holding the model key")
    ] = None,
    trusted_key: Annotated[
        Path | None,
        typer.Option("--trusted-key", help="Ed25519 public key: serve only bundles it signed"),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="TLS certificate (PEM): serve HTTPS")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
    tls_client_ca: Annotated[
        Path | None, typer.Option(help="CA bundle: require client certificates (mTLS)")
    ] = None,
    auth_db: Annotated[
        Path | None, typer.Option(help="users/keys database: require authentication + RBAC")
    ] = None,
    audit_log: Annotated[Path | None, typer.Option(help="HMAC-chained audit log file")] = None,
    audit_key_file: Annotated[
        Path | None, typer.Option(help="audit HMAC key file (cvdeploy audit keygen)")
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="print the effective configuration as JSON first")
    ] = False,
) -> None:
    """Serve a bundle (or every production model of a registry) over HTTP.

    Routes: POST /v1/models/NAME/predict, GET /v1/models, GET /healthz, GET /readyz,
    GET /metrics (Prometheus), GET /dashboard, GET /docs. Requests are batched dynamically;
    a registry is polled and promotions / rollbacks switch versions without dropping
    requests. With --tls-cert/--tls-key it serves HTTPS only; with --auth-db every route but
    /healthz and /readyz needs an API key or access token (see README, Security).
    """
    _need_serve_extra()
    import os

    import uvicorn

    from cvdeploy.bundle import Bundle
    from cvdeploy.pipeline.predictor import select_artifact
    from cvdeploy.serve.app import create_app
    from cvdeploy.serve.config import load_config
    from cvdeploy.serve.platforms import resolve_platform
    from cvdeploy.serve.registry import ModelRegistry, is_registry

    plat = resolve_platform(platform, os.environ)
    if port is None:
        port = plat.port if plat is not None else 8000
    cfg = load_config(
        config,
        source=source,
        artifact=artifact,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        queue_size=queue,
        workers=workers,
        threads=threads,
        request_timeout_s=timeout,
        sample_rate=sample_rate,
        log_dir=log_dir,
        model_key_file=key_file,
        model_key_env=key_env,
        trusted_public_key=trusted_key,
        tls={"cert": tls_cert, "key": tls_key, "client_ca": tls_client_ca}
        if tls_cert or tls_key or tls_client_ca
        else None,
        security={"auth_db": auth_db, "audit_log": audit_log, "audit_key_file": audit_key_file}
        if auth_db or audit_log or audit_key_file
        else None,
        platform=plat.model_dump() if plat is not None else None,
    )
    # Fail fast, with exit code 2, on inputs that cannot be served.
    served: list[tuple[str, str]] = []  # (model name in the URL, what serves it)
    if is_registry(cfg.source):
        reg = ModelRegistry(cfg.source)
        served = [
            (n, f"version {reg.stage_version(n)}") for n in reg.models() if reg.stage_version(n)
        ]
        if not served:
            raise BackendUnavailable(
                f"registry {cfg.source} has no production version to serve",
                hint="cvdeploy registry promote REGISTRY NAME VERSION --stage production",
            )
    else:
        if cfg.trusted_public_key is not None:
            from cvdeploy.security.signing import require_signed

            require_signed(cfg.source, cfg.trusted_public_key)
        b = Bundle.load(cfg.source)
        art = select_artifact(b, None if cfg.artifact == "auto" else cfg.artifact)
        served = [(b.name, f"artifact {art.id}")]
        if art.encryption is not None:  # a missing or wrong model key fails here, not later
            from cvdeploy.security.crypto import key_from_options, model_loader

            key = key_from_options(cfg.model_key_file, cfg.model_key_env)
            Bundle.load(cfg.source, loader=model_loader(key)).model_files(art)
    ssl_options = {}
    if cfg.tls is not None:
        from cvdeploy.security.tls import uvicorn_ssl_options

        ssl_options = uvicorn_ssl_options(cfg.tls)
    app = create_app(cfg)
    scheme = "https" if cfg.tls is not None else "http"
    base = f"{scheme}://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    urls = {name: f"{base}/v1/models/{name}/predict" for name, _ in served}
    if json_out:
        print_json(
            {
                "host": host,
                "port": port,
                "models": [{"name": n, "served": what, "url": urls[n]} for n, what in served],
                "config": cfg.model_dump(mode="json"),
            }
        )
    else:
        pages = "dashboard: /dashboard, docs: /docs"
        if cfg.security is not None:
            pages += "; browsers log in at /login"
        if cfg.platform is not None:
            p = cfg.platform
            pages += f"; {p.name}: POST {p.predict_route}, GET {p.health_route}"
        con = err_console()
        con.print(f"serving {cfg.source} on {scheme}://{host}:{port} ({pages})")
        for name, what in served:
            con.print(f"  model {name!r} ({what}): POST {urls[name]}", soft_wrap=True)
        first = next(iter(urls.values()))
        auth = ' -H "Authorization: Bearer $CVDEPLOY_KEY"' if cfg.security is not None else ""
        k = " -k" if scheme == "https" else ""
        con.print(
            f"  try: curl -s{k}{auth} -F image=@IMAGE.jpg {first}", markup=False, soft_wrap=True
        )
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False, **ssl_options)


@registry_app.command("add")
@handle_errors
def registry_add(
    registry: Annotated[Path, typer.Argument(help="registry directory (created if missing)")],
    bundle: Annotated[Path, typer.Argument(help="bundle to add as a new version")],
    version: Annotated[str | None, typer.Option(help="version label [next integer]")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Copy a bundle into the registry as a new version (the first becomes production)."""
    from cvdeploy.serve.registry import ModelRegistry

    reg = ModelRegistry(registry, create=True)
    name, ver = reg.add(bundle, version=version)
    stage = reg.stage_version(name)
    if json_out:
        print_json({"model": name, "version": ver, "production": stage})
        return
    out_console().print(f"added {name} version {ver} (production: {stage})")


@registry_app.command("list")
@handle_errors
def registry_list(
    registry: Annotated[Path, typer.Argument(help="registry directory")],
    json_out: Annotated[bool, typer.Option("--json", help="print the registry as JSON")] = False,
) -> None:
    """List models, their versions and which version is at each stage."""
    from cvdeploy.serve.registry import ModelRegistry

    reg = ModelRegistry(registry)
    models = {n: reg.model(n) for n in reg.models()}
    if json_out:
        print_json({"registry": str(registry), "models": models})
        return
    table = Table("model", "version", "stages", "added")
    for name, m in models.items():
        for ver, info in m["versions"].items():
            stages = ", ".join(s for s, v in m["stages"].items() if v == ver)
            table.add_row(name, ver, stages or "-", info.get("added", ""))
    out_console().print(table)


@registry_app.command("promote")
@handle_errors
def registry_promote(
    registry: Annotated[Path, typer.Argument(help="registry directory")],
    name: Annotated[str, typer.Argument(help="model name")],
    version: Annotated[str, typer.Argument(help="version to promote")],
    stage: Annotated[str, typer.Option(help="production or staging")] = "production",
    audit_log: _AuditLogOpt = None,
    audit_key_file: _AuditKeyOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Put a version at a stage; a running server follows a production promotion."""
    from cvdeploy.serve.registry import ModelRegistry

    audit = _open_audit(audit_log, audit_key_file)
    detail: dict[str, Any] = {"registry": str(registry), "stage": stage, "version": version}
    with _audited(audit, "registry.promote", name, detail) as op:
        before = ModelRegistry(registry).promote(name, version, stage=stage, op=op)
        failpoint("registry.promote.applied")
        detail["previous"] = before
    if json_out:
        print_json({"model": name, "stage": stage, "version": version, "previous": before})
        return
    out_console().print(f"{name} {stage}: {before or '-'} -> {version}")


@registry_app.command("rollback")
@handle_errors
def registry_rollback(
    registry: Annotated[Path, typer.Argument(help="registry directory")],
    name: Annotated[str, typer.Argument(help="model name")],
    check: Annotated[
        bool,
        typer.Option(
            help="re-check parity of the version put back, here, before switching "
            "(--no-check: switch without it)"
        ),
    ] = True,
    key_file: Annotated[
        Path | None, typer.Option("--key-file", help="model key file (encrypted versions)")
    ] = None,
    key_env: Annotated[
        str | None, typer.Option("--key-env", help="env variable holding the model key")
    ] = None,
    audit_log: _AuditLogOpt = None,
    audit_key_file: _AuditKeyOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Put the previous production version back, once its served artifact still matches
    its source here (the parity gate run again on the bundle's sample images)."""
    from cvdeploy.serve.registry import ModelRegistry

    audit = _open_audit(audit_log, audit_key_file)
    detail: dict[str, Any] = {"registry": str(registry)}
    rechecked: dict[str, Any] = {}
    with _audited(audit, "registry.rollback", name, detail) as op:
        gate = _parity_recheck(key_file, key_env, rechecked) if check else None
        current, target = ModelRegistry(registry).rollback(name, check=gate, op=op)
        failpoint("registry.promote.applied")
        detail.update(previous=current, version=target)
    if json_out:
        print_json({"model": name, "from": current, "to": target, "recheck": rechecked or None})
        return
    if rechecked:
        how = (
            f"parity against {rechecked['source']} held on {rechecked['images']} image(s)"
            if rechecked["how"] == "parity"
            else "it has no source in its bundle: loaded and ran"
        )
        err_console().print(f"re-checked {rechecked['artifact']}: {how}")
    out_console().print(f"{name} production: {current} -> {target}")


def _parity_recheck(
    key_file: Path | None, key_env: str | None, into: dict[str, Any]
) -> Callable[[Path], None]:
    """The rollback's check: the target version's served artifact beside its source."""

    def gate(path: Path) -> None:
        from cvdeploy.bundle import Bundle
        from cvdeploy.errors import CheckFailed
        from cvdeploy.security import key_from_options, model_loader
        from cvdeploy.verify import recheck_parity

        bundle = Bundle.load(path, loader=model_loader(key_from_options(key_file, key_env)))
        res = recheck_parity(bundle)
        into.update(res.to_dict())
        if not res.passed:
            raise CheckFailed(
                f"version at {path} failed its parity re-check here: artifact {res.artifact} "
                f"no longer matches {res.source} ({'; '.join(res.failures)}); nothing was "
                "switched",
                hint="find what changed with `cvdeploy env --compare BUNDLE`; "
                "--no-check rolls back anyway",
            )

    return gate


@logs_app.command("export")
@handle_errors
def logs_export(
    logdir: Annotated[Path, typer.Argument(help="the server's --log-dir")],
    out: Annotated[Path, typer.Option(help="folder to write (images/ + predictions.json)")],
    limit: Annotated[int | None, typer.Option(help="most entries, newest first")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Write sampled requests out as an image folder plus predictions.json."""
    from cvdeploy.serve.logging_store import export_logs

    summary = export_logs(logdir, out, limit=limit, progress=not json_out)
    if json_out:
        print_json(summary)
        return
    out_console().print(f"wrote {summary['images']} images and {summary['predictions']}")
