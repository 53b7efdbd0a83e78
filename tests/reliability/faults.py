"""Fault injection shared by the fault tests and the reliability figures.

Every scenario runs ``cvdeploy`` (or a small writer) in a child process, kills it with
``SIGKILL`` at a named moment (:mod:`cvdeploy.failpoints`) or after a seeded random delay,
then checks what a crash there leaves: the bundle loads (the old one or the new one), the
registry parses and every applied change has its audit entry, the audit log verifies or
names exactly its torn tail, and the next run repairs what is left (temporary files, torn
lines). Each scenario returns a :class:`Outcome`; every child it starts is waited for.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvdeploy.failpoints import ENV


@dataclass
class Outcome:
    """One injected fault: where, and whether everything checked afterwards held."""

    scenario: str
    moment: str
    killed: bool
    survived: bool
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly."""
        return {
            "scenario": self.scenario,
            "moment": self.moment,
            "killed": self.killed,
            "survived": self.survived,
            "problems": self.problems,
        }


def cli(
    args: Sequence[str],
    *,
    failpoint: str | None = None,
    kill_after: float | None = None,
    timeout: float = 120.0,
) -> tuple[int, str]:
    """Run ``cvdeploy ARGS`` in a child; kill it at ``failpoint`` or after ``kill_after`` s.

    Returns:
        ``(exit status, output)``; ``-9`` when it was killed.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop(ENV, None)
    if failpoint is not None:
        env[ENV] = failpoint
    cmd = [sys.executable, "-m", "cvdeploy.cli.main", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        if kill_after is not None:
            try:
                out, _ = proc.communicate(timeout=kill_after)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                out, _ = proc.communicate(timeout=30)
        else:
            out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    return proc.returncode, out.decode(errors="replace")


def audit_state(log: Path, key_file: Path) -> tuple[bool, list[str]]:
    """Whether the audit log verifies, or its only problem is a torn last line."""
    from cvdeploy.security.audit import load_key, rotated_files, verify_log

    report = verify_log(rotated_files(log), load_key(key_file))
    kinds = [p["problem"] for p in report.problems]
    return (not kinds or kinds == ["torn_tail"]), kinds


# registry: promote / rollback ------------------------------------------------------------------
PROMOTE_MOMENTS = (
    "audit.append.partial",
    "fsutil.write_atomic.written",
    "registry.state.written",
    "registry.promote.applied",
)


def promote_fault(root: Path, moment: str, *, rollback: bool = False) -> Outcome:
    """Kill ``cvdeploy registry promote|rollback`` at ``moment``; check, then run it again."""
    from cvdeploy.serve.registry import ModelRegistry

    reg = ModelRegistry(root / "reg")
    log, key = root / "audit.log", root / "audit.key"
    audit = ["--audit-log", str(log), "--audit-key-file", str(key)]
    if rollback and not reg.model("tiny")["previous"]:  # something to roll back to
        current = reg.model("tiny")["stages"]["production"]
        reg.promote("tiny", "2" if current != "2" else "1")
    before = reg.model("tiny")
    cmd = ["registry", "rollback", str(reg.root), "tiny"] if rollback else None
    if cmd is None:
        target = "2" if before["stages"]["production"] != "2" else "1"
        cmd = ["registry", "promote", str(reg.root), "tiny", target]
    rc, out = cli([*cmd, *audit], failpoint=moment)
    problems = []
    killed = rc == -signal.SIGKILL
    if not killed:
        problems.append(f"not killed at {moment} (exit {rc}): {out[-300:]}")
    try:
        after = ModelRegistry(reg.root).model("tiny")
    except Exception as exc:
        return Outcome("registry", moment, killed, False, [f"registry unreadable: {exc}"])
    ok, kinds = audit_state(log, key)
    if not ok:
        problems.append(f"audit log: {kinds}")
    if after["history"] != before["history"]:  # the change was applied: it must be audited
        op = after["history"][-1].get("op")
        ops = _audit_ops(log)
        if op is None or op not in ops:
            problems.append(f"applied without an audit entry (op {op})")
    rc, out = cli([*cmd, *audit])  # the next run: works, repairs, leaves nothing behind
    if rc not in (0, 2):
        problems.append(f"the next run failed ({rc}): {out[-300:]}")
    strays = list(reg.root.glob(".registry.json.*.tmp"))
    if strays:
        problems.append(f"temporary files left: {[p.name for p in strays]}")
    ok, kinds = audit_state(log, key)
    if kinds:
        problems.append(f"audit log after the next run: {kinds}")
    return Outcome(
        "registry",
        f"{'rollback' if rollback else 'promote'}@{moment}",
        killed,
        not problems,
        problems,
    )


def _audit_ops(log: Path) -> set[str]:
    from cvdeploy.security.audit import rotated_files

    ops = set()
    for f in rotated_files(log):
        for line in f.read_bytes().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            op = (e.get("detail") or {}).get("op")
            if op:
                ops.add(op)
    return ops


# bundle changes: encrypt, export, quantize ---------------------------------------------------
def bundle_fault(
    bundle: Path, args: Sequence[str], *, scenario: str, moment: str, kill_after: float | None
) -> Outcome:
    """Kill a command changing ``bundle`` at ``moment`` (a failpoint) or after ``kill_after``
    seconds; the bundle must load after, and the next change must leave no staging folder."""
    from cvdeploy.bundle import Bundle

    rc, out = cli(args, failpoint=None if kill_after else moment, kill_after=kill_after)
    killed = rc == -signal.SIGKILL
    problems = []
    if kill_after is None and not killed:
        problems.append(f"not killed at {moment} (exit {rc}): {out[-300:]}")
    try:
        Bundle.load(bundle)
    except Exception as exc:
        problems.append(f"bundle does not load after the kill: {exc}")
    rc, out = cli(["info", str(bundle), "--json"])
    if rc != 0:
        problems.append(f"info failed after the kill ({rc}): {out[-300:]}")
    return Outcome(scenario, moment, killed, not problems, problems)


def leftovers(bundle: Path) -> list[str]:
    """Staging or set-aside folders of ``bundle`` in its parent folder."""
    return sorted(
        p.name
        for p in bundle.parent.iterdir()
        if p.name.startswith((f".{bundle.name}.staging-", f".{bundle.name}.old-"))
    )


# audit appends under load ----------------------------------------------------------------------
_WRITER = """
import sys, threading
from cvdeploy.security.audit import AuditLog, load_key
log = AuditLog(sys.argv[1], load_key(sys.argv[2]), max_bytes=int(sys.argv[3]))
def run(i):
    n = 0
    while True:
        log.record(actor=f"user:t{i}", action="predict", outcome="ok", target="tiny", n=n)
        n += 1
for i in range(3):
    threading.Thread(target=run, args=(i,), daemon=True).start()
print("started", flush=True)
threading.Event().wait()
"""


def audit_load_fault(root: Path, *, seed: int, rounds: int = 3) -> list[Outcome]:
    """Three writer threads append as fast as they can; killed at seeded random moments."""
    from cvdeploy.security.audit import AuditLog, load_key, write_key

    key = root / "audit.key"
    if not key.exists():
        write_key(key)
    log = root / "audit.log"
    rng = random.Random(seed)
    outcomes = []
    for r in range(rounds):
        delay = rng.uniform(0.3, 1.2)
        env = {k: v for k, v in os.environ.items() if k != ENV}
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(log), str(key), "8192"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            assert proc.stdout is not None
            proc.stdout.readline()  # started
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        ok, kinds = audit_state(log, key)
        problems = [] if ok else [f"audit log: {kinds}"]
        try:  # the restarted writer acknowledges a torn line and continues
            AuditLog(log, load_key(key), max_bytes=8192).record(
                actor="server", action="restart", outcome="ok"
            )
        except Exception as exc:
            problems.append(f"cannot reopen: {exc}")
        ok, kinds = audit_state(log, key)
        if kinds:
            problems.append(f"after reopening: {kinds}")
        outcomes.append(
            Outcome("audit-load", f"round {r} after {delay:.2f} s", True, not problems, problems)
        )
    return outcomes
