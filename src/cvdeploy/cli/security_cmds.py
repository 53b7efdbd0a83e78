"""`cvdeploy security|users|keys|audit ...`: certificates, accounts, API keys, the audit log."""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from cvdeploy.cli.common import err_console, handle_errors, out_console, print_json
from cvdeploy.errors import CheckFailed, UsageError

if TYPE_CHECKING:
    from cvdeploy.security.store import SecurityStore

security_app = typer.Typer(
    help="TLS certificates and token-signing keys.", no_args_is_help=True, rich_markup_mode=None
)
users_app = typer.Typer(
    help="Users of a secured server (password + TOTP).", no_args_is_help=True, rich_markup_mode=None
)
keys_app = typer.Typer(
    help="API keys of a secured server.", no_args_is_help=True, rich_markup_mode=None
)
audit_app = typer.Typer(
    help="The HMAC-chained audit log.", no_args_is_help=True, rich_markup_mode=None
)

_Db = Annotated[
    Path,
    typer.Option(envvar="CVDEPLOY_AUTH_DB", help="users/keys database (the server's --auth-db)"),
]
_AuditLog = Annotated[
    Path | None,
    typer.Option(envvar="CVDEPLOY_AUDIT_LOG", help="record the change in this audit log"),
]
_AuditKey = Annotated[
    Path | None, typer.Option(envvar="CVDEPLOY_AUDIT_KEY_FILE", help="audit HMAC key file")
]
_Json = Annotated[bool, typer.Option("--json", help="print the result as JSON")]
_Models = Annotated[
    list[str] | None,
    typer.Option("--model", help="limit to this model (repeat for several) [all models]"),
]


def _store(
    db: Path, audit_log: Path | None, audit_key: Path | None, *, create: bool = False
) -> SecurityStore:
    from cvdeploy.security.audit import AuditLog, cli_actor, load_key
    from cvdeploy.security.store import SecurityStore

    audit = None
    if audit_log is not None or audit_key is not None:
        if audit_log is None or audit_key is None:
            raise UsageError("--audit-log and --audit-key-file go together")
        audit = AuditLog(audit_log, load_key(audit_key))
    return SecurityStore(db, create=create, audit=audit, actor=cli_actor())


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# security ---------------------------------------------------------------------------------
@security_app.command("dev-cert")
@handle_errors
def dev_cert(
    out: Annotated[Path, typer.Option(help="folder for cert.pem and cert-key.pem")],
    host: Annotated[
        list[str] | None, typer.Option(help="DNS name or IP (repeat) [localhost, 127.0.0.1, ::1]")
    ] = None,
    days: Annotated[int, typer.Option(min=1, max=825, help="validity in days")] = 30,
    json_out: _Json = False,
) -> None:
    """Make a self-signed certificate + key for local development (not for production)."""
    from cvdeploy.security.tls import write_self_signed

    hosts = tuple(host) if host else ("localhost", "127.0.0.1", "::1")
    cert, key = write_self_signed(out, hosts=hosts, days=days)
    if json_out:
        print_json({"cert": cert, "key": key, "hosts": list(hosts), "days": days})
        return
    out_console().print(f"wrote {cert} and {key} (hosts: {', '.join(hosts)}; {days} days)")
    err_console().print(
        f"serve with: cvdeploy serve SOURCE --tls-cert {cert} --tls-key {key}; "
        f"clients trust {cert} (curl --cacert {cert})"
    )


@security_app.command("jwt-keys")
@handle_errors
def jwt_keys(db: _Db, json_out: _Json = False) -> None:
    """List the access-token signing keys (ids and dates, never the secrets)."""
    keys = _store(db, None, None).signing_keys()
    if json_out:
        print_json({"keys": keys})
        return
    table = Table("kid", "created", "retired")
    for k in keys:
        table.add_row(k["kid"], _when(k["created"]), _when(k["retired"]))
    out_console().print(table)


@security_app.command("jwt-rotate")
@handle_errors
def jwt_rotate(
    db: _Db, audit_log: _AuditLog = None, audit_key_file: _AuditKey = None, json_out: _Json = False
) -> None:
    """Sign new access tokens with a fresh key; tokens signed before stay valid until retired."""
    key = _store(db, audit_log, audit_key_file).rotate_signing_key()
    if json_out:
        print_json({"kid": key.kid})
        return
    out_console().print(f"new signing key {key.kid}; retire the old one with jwt-retire KID")


@security_app.command("jwt-retire")
@handle_errors
def jwt_retire(
    kid: Annotated[str, typer.Argument(help="key id (cvdeploy security jwt-keys)")],
    db: _Db,
    audit_log: _AuditLog = None,
    audit_key_file: _AuditKey = None,
    json_out: _Json = False,
) -> None:
    """Retire a signing key: every token it signed is refused from now on."""
    _store(db, audit_log, audit_key_file).retire_signing_key(kid)
    if json_out:
        print_json({"kid": kid, "retired": True})
        return
    out_console().print(f"signing key {kid} retired")


# users ------------------------------------------------------------------------------------
def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    pw: str = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    return pw


@users_app.command("add")
@handle_errors
def users_add(
    name: Annotated[str, typer.Argument(help="user name")],
    role: Annotated[str, typer.Option(help="viewer, predictor, operator or admin")],
    db: _Db,
    model: _Models = None,
    password_stdin: Annotated[
        bool, typer.Option(help="read the password from stdin instead of a prompt")
    ] = False,
    audit_log: _AuditLog = None,
    audit_key_file: _AuditKey = None,
    json_out: _Json = False,
) -> None:
    """Add a user (creates the database if needed); then enrol TOTP with `users enrol-totp`."""
    store = _store(db, audit_log, audit_key_file, create=True)
    user = store.add_user(name, _read_password(password_stdin), role=role, models=model)
    if json_out:
        print_json({"name": user.name, "role": user.role, "models": user.models, "mfa": False})
        return
    out_console().print(f"added user {name} ({role}); next: cvdeploy users enrol-totp {name}")


@users_app.command("list")
@handle_errors
def users_list(db: _Db, json_out: _Json = False) -> None:
    """List users, their roles, model scopes and whether TOTP is enrolled."""
    users = _store(db, None, None).users()
    if json_out:
        print_json(
            {
                "users": [
                    {
                        "name": u.name,
                        "role": u.role,
                        "models": u.models,
                        "mfa": u.mfa,
                        "created": u.created,
                    }
                    for u in users
                ]
            }
        )
        return
    table = Table("user", "role", "models", "mfa", "created")
    for u in users:
        table.add_row(
            u.name,
            u.role,
            ", ".join(u.models or ["all"]),
            "yes" if u.mfa else "no",
            _when(u.created),
        )
    out_console().print(table)


@users_app.command("remove")
@handle_errors
def users_remove(
    name: Annotated[str, typer.Argument(help="user name")],
    db: _Db,
    audit_log: _AuditLog = None,
    audit_key_file: _AuditKey = None,
    json_out: _Json = False,
) -> None:
    """Remove a user; its access tokens stop working at once."""
    _store(db, audit_log, audit_key_file).remove_user(name)
    if json_out:
        print_json({"name": name, "removed": True})
        return
    out_console().print(f"removed user {name}")


@users_app.command("set-role")
@handle_errors
def users_set_role(
    name: Annotated[str, typer.Argument(help="user name")],
    role: Annotated[str, typer.Argument(help="viewer, predictor, operator or admin")],
    db: _Db,
    model: _Models = None,
    audit_log: _AuditLog = None,
    audit_key_file: _AuditKey = None,
    json_out: _Json = False,
) -> None:
    """Change a user's role (and model scope; without --model: all models)."""
    user = _store(db, audit_log, audit_key_file).set_role(name, role, models=model)
    if json_out:
        print_json({"name": user.name, "role": user.role, "models": user.models})
        return
    out_console().print(f"{name}: {user.role} on {', '.join(user.models or ['all models'])}")


@users_app.command("enrol-totp")
@handle_errors
def users_enrol_totp(
    name: Annotated[str, typer.Argument(help="user name")],
    db: _Db,
    qr: Annotated[Path | None, typer.Option(help="also write the QR code as a PNG here")] = None,
    issuer: Annotated[str, typer.Option(help="issuer shown in the authenticator app")] = "cvdeploy",
    audit_log: _AuditLog = None,
    audit_key_file: _AuditKey = None,
    json_out: _Json = False,
) -> None:
    """Give a user a new TOTP seed: prints the provisioning URI once (and a QR PNG)."""
    uri = _store(db, audit_log, audit_key_file).enrol_totp(name, issuer=issuer)
    if qr is not None:
        _write_qr(uri, qr)
    if json_out:
        print_json({"name": name, "provisioning_uri": uri, "qr": qr})
        return
    out_console().print(uri)
    err_console().print(
        "scan it (or the QR PNG) in an authenticator app now; it is not shown again"
    )


def _write_qr(uri: str, path: Path) -> None:
    import os

    import qrcode

    img = qrcode.make(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as f:
        img.save(f, format="PNG")


# keys -------------------------------------------------------------------------------------
@keys_app.command("create")
@handle_errors
def keys_create(
    label: Annotated[str, typer.Argument(help="what the key is for (e.g. camera-gateway)")],
    role: Annotated[str, typer.Option(help="viewer, predictor, operator or admin")],
    db: _Db,
    model: _Models = None,
    expires_days: Annotated[
        float | None, typer.Option(min=0.0001, help="expire after this many days [never]")
    ] = None,
    audit_log: _AuditLog = None,
    audit_key_file: _AuditKey = None,
    json_out: _Json = False,
) -> None:
    """Create an API key; the key is printed once and only its salted hash is stored."""
    store = _store(db, audit_log, audit_key_file, create=True)
    full, info = store.create_key(
        label,
        role=role,
        models=model,
        expires_in_s=None if expires_days is None else expires_days * 86400,
    )
    if json_out:
        print_json({"key": full, **info.to_dict(time.time())})
        return
    out_console().print(full)
    err_console().print(
        f"API key {info.id} ({role}); store it now, it is not shown again. "
        "Send it as: Authorization: Bearer KEY"
    )


@keys_app.command("list")
@handle_errors
def keys_list(db: _Db, json_out: _Json = False) -> None:
    """List API keys (ids, roles, scopes, expiry, status; never the keys)."""
    keys = _store(db, None, None).keys()
    now = time.time()
    if json_out:
        print_json({"keys": [k.to_dict(now) for k in keys]})
        return
    table = Table("id", "label", "role", "models", "created", "expires", "status")
    for k in keys:
        table.add_row(
            k.id,
            k.label,
            k.role,
            ", ".join(k.models or ["all"]),
            _when(k.created),
            _when(k.expires),
            k.status(now),
        )
    out_console().print(table)


@keys_app.command("revoke")
@handle_errors
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="key id (the part after cvd_)")],
    db: _Db,
    audit_log: _AuditLog = None,
    audit_key_file: _AuditKey = None,
    json_out: _Json = False,
) -> None:
    """Revoke an API key (refused from the next request on)."""
    info = _store(db, audit_log, audit_key_file).revoke_key(key_id)
    if json_out:
        print_json(info.to_dict(time.time()))
        return
    out_console().print(f"revoked API key {key_id} ({info.label})")


# audit ------------------------------------------------------------------------------------
@audit_app.command("keygen")
@handle_errors
def audit_keygen(
    path: Annotated[Path, typer.Argument(help="key file to create (mode 0600)")],
    json_out: _Json = False,
) -> None:
    """Create a random 256-bit audit HMAC key file."""
    from cvdeploy.security.audit import write_key

    p = write_key(path)
    if json_out:
        print_json({"key_file": p})
        return
    out_console().print(f"wrote {p}; keep it away from whoever can write the log")


@audit_app.command("verify")
@handle_errors
def audit_verify(
    logs: Annotated[list[Path], typer.Argument(help="log file(s), oldest first")],
    key_file: Annotated[
        Path, typer.Option(envvar="CVDEPLOY_AUDIT_KEY_FILE", help="audit HMAC key file")
    ],
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option(
            help="checkpoint file (cvdeploy audit checkpoint) kept elsewhere: also find "
            "entries cut off the end (repeatable)"
        ),
    ] = None,
    json_out: _Json = False,
) -> None:
    """Check every entry's MAC, the chain and the file headers; exit 1 and name the line.

    Given one LOG, its rotated predecessors (LOG.1, LOG.2, ...) are checked with it. Found:
    edits, forgeries, insertions, deletions and reordering anywhere, entries deleted from
    the start of a file, rotated files removed without an audit.prune entry, a line torn by
    a crash. Entries cut off the END of the newest file are found only against a checkpoint
    taken earlier and kept elsewhere (--checkpoint).
    """
    from cvdeploy.errors import InputError
    from cvdeploy.security.audit import load_key, read_checkpoints, rotated_files, verify_log

    files = rotated_files(logs[0]) if len(logs) == 1 else list(logs)
    if not files:
        raise InputError(f"audit log {logs[0]} does not exist")
    key = load_key(key_file)
    cks = [c for f in checkpoint or [] for c in read_checkpoints(f, key)]
    report = verify_log(files, key, checkpoints=cks)
    summary: dict[str, Any] = report.to_dict()
    if json_out:
        print_json(summary)
    elif report.ok:
        out_console().print(
            f"ok: {report.entries} entries in {len(files)} file(s), chain intact"
            + (f", {len(cks)} checkpoint(s) matched" if cks else "")
        )
        for note in report.notes:
            err_console().print(f"note: {note}")
    else:
        con = out_console()
        for p in report.problems:
            where = f"{p['file']}:{p['line']}" if p["line"] is not None else p["file"]
            con.print(f"{where}: {p['problem']}: {p['message']}")
    if not report.ok:
        first = report.problems[0]
        at = f" line {first['line']}" if first["line"] is not None else ""
        raise CheckFailed(
            f"audit log tampered: {len(report.problems)} problem(s), first at "
            f"{first['file']}{at} ({first['problem']})"
        )


@audit_app.command("checkpoint")
@handle_errors
def audit_checkpoint(
    log: Annotated[Path, typer.Argument(help="the audit log")],
    key_file: Annotated[
        Path, typer.Option(envvar="CVDEPLOY_AUDIT_KEY_FILE", help="audit HMAC key file")
    ],
    out: Annotated[
        Path, typer.Option(help="checkpoint file to append to: keep it on another host")
    ],
    json_out: _Json = False,
) -> None:
    """Append a checkpoint (the newest entry's number and MAC) to --out.

    The external anchor against a cut tail: run it on a schedule (cron) and keep the file
    where whoever can write the log cannot (another host, write-once storage); `audit
    verify --checkpoint FILE` then reports a log that ends before a checkpoint.
    """
    from cvdeploy.security.audit import load_key, write_checkpoint

    record = write_checkpoint(log, load_key(key_file), out)
    if json_out:
        print_json(record)
        return
    out_console().print(f"checkpoint of entry {record['seq']} appended to {out}")


@audit_app.command("prune")
@handle_errors
def audit_prune(
    log: Annotated[Path, typer.Argument(help="the audit log")],
    keep: Annotated[int, typer.Option(min=0, help="rotated files to keep (newest)")],
    key_file: Annotated[
        Path, typer.Option(envvar="CVDEPLOY_AUDIT_KEY_FILE", help="audit HMAC key file")
    ],
    json_out: _Json = False,
) -> None:
    """Remove old rotated files, recorded first in an audit.prune entry.

    A rotated file removed any other way is reported by `audit verify` (files_missing).
    Archive the files elsewhere first if you must keep them.
    """
    from cvdeploy.security.audit import load_key, prune

    removed = prune(log, load_key(key_file), keep=keep)
    if json_out:
        print_json({"removed": removed})
        return
    out_console().print(
        f"removed {len(removed)} file(s): {', '.join(removed)}" if removed else "nothing to remove"
    )
