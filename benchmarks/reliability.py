"""Reliability figures: fuzzing, attacks, faults, load and soak (`make reliability`, `make soak`).

Writes ``benchmarks/results/reliability.json``: one section per part, each with its date and
the machine it ran on, so a part re-run later replaces only its own section. ``--readme``
rewrites the table of the README's Reliability section from that file.

Parts (all by default, or name some):

- ``fuzz``: schemathesis in process against the plain server and the secured one (no
  credentials, a viewer key, an admin key): requests sent, answers by status, 5xx counted
  (``--fuzz-examples`` per operation and generation mode; 500 by default).
- ``attacks``: the attack catalogue of ``tests/reliability/attacks.py`` (bad credentials,
  roles, scopes, replay, guessing, hostile input, memory amplification): tried and refused.
- ``faults``: kill -9 at every failpoint of promote and rollback, at seeded moments during
  export, quantize and encrypt, and during audit appends under load: injected and survived.
- ``load``: ``cvdeploy serve`` (secured, audit log on) under mixed valid and invalid traffic
  with ``--inflight`` (32) requests open for ``--load-seconds`` (600): requests by status,
  5xx, server alive, p50/p99 of the valid predictions, RSS series and its second-half slope.
- ``soak``: the same mix for ``--soak-seconds`` (3600) at ``--soak-inflight`` (8); the
  verdict is **flat** when the line fitted to the second half's RSS rises by less than 5 %
  of its mean RSS, nothing failed and the server is up.

Timing figures (p50/p99, RSS slope) need a quiet machine; the counts do not.

Usage::

    python benchmarks/reliability.py fuzz attacks faults          # counts only, minutes
    python benchmarks/reliability.py load --load-seconds 600      # 10 minutes
    python benchmarks/reliability.py soak --soak-seconds 3600     # 1 hour (make soak)
    python benchmarks/reliability.py --readme                     # README table from the JSON
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, cpu_kind
from serve_load import _free_port, _start, _stop, multipart_body
from serve_soak import rss_mb

sys.path.insert(0, str(ROOT))

OUT = ROOT / "benchmarks" / "results" / "reliability.json"
PARTS = ("fuzz", "attacks", "faults", "load", "soak")
BEGIN, END = "<!-- reliability:begin -->", "<!-- reliability:end -->"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    from cvdeploy.environment import cpu_info

    info = cpu_info()
    return {
        "cpu": info.get("model"),
        "cpu_kind": cpu_kind(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }


def _stamp(section: dict[str, Any], t0: float) -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_s": round(time.monotonic() - t0, 1),
        "machine": machine(),
        **section,
    }


# fuzz, attacks, faults (counts) ---------------------------------------------------------------
def _tiny(tmp: Path) -> tuple[Path, bytes]:
    from tests.serve.conftest import make_bundle
    from tests.tiny_models import write_image

    return make_bundle(tmp / "m"), write_image(tmp / "a.jpg", h=48, w=80).read_bytes()


def part_fuzz(args: argparse.Namespace) -> dict[str, Any]:
    from fastapi.testclient import TestClient
    from tests.reliability.fuzzing import fuzz, fuzz_stateful
    from tests.serve.conftest import wait_ready
    from tests.serve.secured import make_db

    from cvdeploy.security.audit import load_key, rotated_files, verify_log, write_key
    from cvdeploy.serve.app import create_app
    from cvdeploy.serve.config import ServeConfig

    t0 = time.monotonic()
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rel-fuzz-") as d:
        tmp = Path(d)
        bundle, _ = _tiny(tmp)
        app = create_app(ServeConfig(source=bundle, warmup_runs=1))
        with TestClient(app, raise_server_exceptions=False) as client:
            wait_ready(client)
            runs["plain"] = fuzz(client, app.openapi(), examples=args.fuzz_examples).to_dict()
            print("fuzz plain:", _brief(runs["plain"]), flush=True)
        keys, _ = make_db(tmp / "auth.db")
        key_file = write_key(tmp / "audit.key")
        sec = {
            "auth_db": tmp / "auth.db",
            "audit_log": tmp / "audit.log",
            "audit_key_file": key_file,
        }
        app = create_app(ServeConfig(source=bundle, warmup_runs=1, security=sec))
        with TestClient(app, raise_server_exceptions=False) as client:
            wait_ready(client)
            for who in (None, "viewer", "admin"):
                hdr = {"Authorization": f"Bearer {keys[who]}"} if who else None
                report = fuzz(client, app.openapi(), examples=args.fuzz_examples, headers=hdr)
                runs[f"secured:{who or 'anonymous'}"] = report.to_dict()
                print(
                    f"fuzz secured {who}:",
                    _brief(runs[f"secured:{who or 'anonymous'}"]),
                    flush=True,
                )
            admin = {"Authorization": f"Bearer {keys['admin']}"}
            report = fuzz_stateful(
                client, app.openapi(), headers=admin, examples=max(5, args.fuzz_examples // 5)
            )
            runs["secured:admin:stateful"] = report.to_dict()
            print("fuzz secured stateful:", _brief(runs["secured:admin:stateful"]), flush=True)
        audit_ok = verify_log(rotated_files(tmp / "audit.log"), load_key(key_file)).ok
    return _stamp(
        {
            "examples_per_operation_and_mode": args.fuzz_examples,
            "requests": sum(r["requests"] for r in runs.values()),
            "server_errors": sum(r["server_errors"] for r in runs.values()),
            "check_failures": sum(r["check_failures"] for r in runs.values()),
            "audit_log_intact": audit_ok,
            "runs": runs,
        },
        t0,
    )


def _brief(r: dict[str, Any]) -> str:
    return f"{r['requests']} requests, {r['server_errors']} 5xx, {r['check_failures']} failures"


def part_attacks(args: argparse.Namespace) -> dict[str, Any]:
    from tests.reliability.attacks import run_attacks
    from tests.serve.secured import make_db, secured_app

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rel-attacks-") as d:
        tmp = Path(d)
        bundle, jpeg = _tiny(tmp)
        (tmp / "tpl").mkdir()
        keys, seeds = make_db(tmp / "tpl" / "auth.db")
        (tmp / "srv").mkdir()
        with secured_app(
            bundle,
            tmp / "srv",
            (tmp / "tpl" / "auth.db", keys, seeds),
            predict_burst_per_key=1000,
            lockout_after=3,
        ) as s:
            tallies = run_attacks(s, jpeg)
            from cvdeploy.security.audit import load_key, verify_log

            audit_ok = verify_log([s.audit_log], load_key(s.audit_key)).ok
    kinds = {
        k: {"tried": t.tried, "refused": t.refused, "got_through": t.through}
        for k, t in tallies.items()
    }
    out = {
        "tried": sum(t.tried for t in tallies.values()),
        "refused": sum(t.refused for t in tallies.values()),
        "audit_log_intact": audit_ok,
        "kinds": kinds,
    }
    print(f"attacks: {out['refused']} of {out['tried']} refused", flush=True)
    return _stamp(out, t0)


def part_faults(args: argparse.Namespace) -> dict[str, Any]:
    from tests.reliability.faults import (
        PROMOTE_MOMENTS,
        audit_load_fault,
        bundle_fault,
        cli,
        promote_fault,
    )
    from tests.serve.conftest import make_bundle
    from tests.tiny_models import write_image

    from cvdeploy.security.audit import write_key
    from cvdeploy.serve.registry import ModelRegistry

    t0 = time.monotonic()
    rng = random.Random(args.seed)
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="rel-faults-") as d:
        tmp = Path(d)
        reg = ModelRegistry(tmp / "reg", create=True)
        reg.add(make_bundle(tmp / "a", seed=0))
        reg.add(make_bundle(tmp / "b", seed=1))
        write_key(tmp / "audit.key")
        for _ in range(args.fault_rounds):
            outcomes += [promote_fault(tmp, m) for m in PROMOTE_MOMENTS]
            outcomes += [promote_fault(tmp, m, rollback=True) for m in PROMOTE_MOMENTS[2:]]
        bundle = make_bundle(tmp / "m")
        images = tmp / "images"
        for i in range(4):
            write_image(images / f"{i}.jpg", h=64, w=64, seed=i)
        key = tmp / "model.key"
        cli(["keygen", "--key-file", str(key)])
        export = ["export", str(bundle), "--format", "openvino", "--data", str(images)]
        quant = ["quantize", str(bundle), "--calib", str(images), "--backend", "onnxruntime"]
        for _ in range(args.fault_rounds):
            outcomes.append(
                bundle_fault(
                    bundle, export, scenario="export", moment="bundle.staged", kill_after=None
                )
            )
            for cmd, name in ((export, "export"), (quant, "quantize")):
                delay = round(rng.uniform(1.0, 4.0), 2)
                outcomes.append(
                    bundle_fault(
                        bundle, cmd, scenario=name, moment=f"after {delay} s", kill_after=delay
                    )
                )
        enc = ["encrypt", str(bundle), "--key-file", str(key)]
        outcomes.append(
            bundle_fault(bundle, enc, scenario="encrypt", moment="bundle.staged", kill_after=None)
        )
        outcomes += audit_load_fault(
            tmp / "audit-load", seed=args.seed, rounds=3 * args.fault_rounds
        )
    killed = [o for o in outcomes if o.killed]
    out = {
        "injected": len(killed),
        "survived": sum(o.survived for o in killed),
        "scenarios": [o.to_dict() for o in outcomes],
        "checks": "the bundle loads (old or new), the registry parses and every applied change "
        "has its audit entry, the audit log verifies or names exactly its torn tail, the next "
        "run succeeds and leaves no temporary file",
    }
    print(f"faults: {out['survived']} of {out['injected']} survived", flush=True)
    return _stamp(out, t0)


# load and soak ----------------------------------------------------------------------------------
def _mixed_requests(image: bytes, keys: dict[str, str], model: str) -> list[tuple[float, Any]]:
    """``(weight, request kwargs)``: 60 % valid predictions, the rest invalid in 8 ways."""
    body, mp = multipart_body(image)
    legit = {"Authorization": f"Bearer {keys['legit']}"}
    predict = f"/v1/models/{model}/predict"
    return [
        (
            0.60,
            {
                "method": "POST",
                "url": predict,
                "content": body,
                "headers": {**mp, **legit},
                "valid": True,
            },
        ),
        (0.08, {"method": "POST", "url": predict, "content": body, "headers": mp}),
        (
            0.05,
            {
                "method": "POST",
                "url": predict,
                "content": body,
                "headers": {**mp, "Authorization": "Bearer cvd_000000000000_" + "A" * 43},
            },
        ),
        (
            0.05,
            {
                "method": "POST",
                "url": predict,
                "content": image[: len(image) // 2],
                "headers": {"content-type": "image/jpeg", **legit},
            },
        ),
        (
            0.05,
            {
                "method": "POST",
                "url": predict,
                "content": b"not an image",
                "headers": {"content-type": "image/jpeg", **legit},
            },
        ),
        (
            0.05,
            {
                "method": "POST",
                "url": predict,
                "content": b"[" * 5000 + b"]" * 5000,
                "headers": {"content-type": "application/json", **legit},
            },
        ),
        (
            0.04,
            {
                "method": "GET",
                "url": "/v1/models",
                "headers": {"Authorization": f"Bearer {keys['viewer']}"},
            },
        ),
        (0.04, {"method": "GET", "url": "/no/such/route", "headers": {}}),
        (0.04, {"method": "BREW", "url": "/v1/models", "headers": {}}),
    ]


async def _drive(
    base: str,
    mix: list[tuple[float, Any]],
    *,
    inflight: int,
    seconds: float,
    seed: int,
    counts: dict[str, Any],
    latencies: list[float],
) -> None:
    import httpx

    rng = random.Random(seed)
    weights = [w for w, _ in mix]
    end = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=inflight, max_keepalive_connections=inflight)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def worker() -> None:
            while time.monotonic() < end:
                req = dict(rng.choices([m for _, m in mix], weights)[0])
                valid = req.pop("valid", False)
                t = time.perf_counter()
                try:
                    r = await client.request(**req)
                    key = str(r.status_code)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                if valid and key == "200":
                    latencies.append((time.perf_counter() - t) * 1e3)
                counts[key] = counts.get(key, 0) + 1

        await asyncio.gather(*(worker() for _ in range(inflight)))


def _serve_under_mixed_load(
    args: argparse.Namespace, *, seconds: float, inflight: int, label: str
) -> dict[str, Any]:
    from tests.serve.conftest import make_bundle
    from tests.serve.secured import make_db

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"rel-{label}-") as d:
        tmp = Path(d)
        bundle = Path(args.bundle) if args.bundle else make_bundle(tmp / "m")
        image = _image(tmp)
        keys, _ = make_db(tmp / "auth.db", models=(_name(bundle),))
        from cvdeploy.security.audit import write_key

        write_key(tmp / "audit.key")
        conf = tmp / "serve.yaml"
        conf.write_text(
            json.dumps(
                {
                    "security": {
                        "auth_db": str(tmp / "auth.db"),
                        "audit_log": str(tmp / "audit.log"),
                        "audit_key_file": str(tmp / "audit.key"),
                        "predict_rate_per_key": 100000,
                        "predict_burst_per_key": 100000,
                        "predict_rate_per_ip": 100000,
                        "predict_burst_per_ip": 100000,
                    }
                }
            )
        )
        port = _free_port()
        cmd = [
            sys.executable,
            "-m",
            "cvdeploy.cli.main",
            "serve",
            str(bundle),
            "--port",
            str(port),
            "--config",
            str(conf),
        ]
        proc = _start(cmd, port, tmp / "server.log")
        series: list[tuple[float, float]] = []
        counts: dict[str, Any] = {}
        latencies: list[float] = []
        stop = threading.Event()
        start = time.monotonic()

        def sample() -> None:
            while True:
                series.append((round(time.monotonic() - start, 2), round(rss_mb(proc.pid), 2)))
                n = sum(counts.values())
                print(
                    f"  {series[-1][0]:7.1f} s  RSS {series[-1][1]:8.1f} MiB  {n} requests",
                    flush=True,
                )
                if stop.wait(args.interval):
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            asyncio.run(
                _drive(
                    f"http://127.0.0.1:{port}",
                    _mixed_requests(image, keys, _name(bundle)),
                    inflight=inflight,
                    seconds=seconds,
                    seed=args.seed,
                    counts=counts,
                    latencies=latencies,
                )
            )
        finally:
            stop.set()
            sampler.join(timeout=30)
            series.append((round(time.monotonic() - start, 2), round(rss_mb(proc.pid), 2)))
            alive = proc.poll() is None
            _stop(proc)
        from cvdeploy.security.audit import load_key, rotated_files, verify_log

        audit_ok = verify_log(rotated_files(tmp / "audit.log"), load_key(tmp / "audit.key")).ok
    fit = _fit(series)
    server_errors = sum(
        n for k, n in counts.items() if k.isdigit() and int(k) >= 500 and k != "503"
    )
    transport = sum(n for k, n in counts.items() if not k.isdigit())
    lat = np.array(latencies) if latencies else np.array([np.nan])
    out = {
        "seconds": round(series[-1][0], 1),
        "inflight": inflight,
        "requests": sum(counts.values()),
        "by_status": dict(sorted(counts.items())),
        "server_errors": server_errors,
        "transport_errors": transport,
        "server_alive_at_end": alive,
        "audit_log_intact": audit_ok,
        "valid_predict_ms": {
            "p50": round(float(np.percentile(lat, 50)), 2),
            "p99": round(float(np.percentile(lat, 99)), 2),
            "n": len(latencies),
        },
        "rss_mb": series,
        "second_half": fit,
        "verdict": _verdict(fit, server_errors + transport, alive),
        "verdict_rule": "flat: the least-squares line over the second half (>= 120 s) rises "
        "by less than 5 % of its mean RSS, with no 5xx (503 is load shedding), no transport "
        "error and the server up",
    }
    print(
        f"{label}: {out['requests']} requests, {server_errors} 5xx, verdict {out['verdict']}",
        flush=True,
    )
    return _stamp(out, t0)


def _fit(series: list[tuple[float, float]]) -> dict[str, Any]:
    half = [(t, m) for t, m in series if t >= series[-1][0] / 2 and np.isfinite(m)]
    if len(half) < 3:
        return {"slope_mb_per_min": None, "growth_mb": None, "growth_pct": None, "span_s": None}
    t = np.array([x for x, _ in half])
    m = np.array([y for _, y in half])
    slope = float(np.polyfit(t, m, 1)[0])
    span = float(t[-1] - t[0])
    growth = slope * span
    return {
        "slope_mb_per_min": round(slope * 60, 4),
        "growth_mb": round(growth, 3),
        "growth_pct": round(100 * growth / float(m.mean()), 3),
        "span_s": round(span, 1),
        "mean_mb": round(float(m.mean()), 2),
    }


def _verdict(fit: dict[str, Any], failures: int, alive: bool) -> str:
    if failures or not alive:
        return "failed"
    if fit["span_s"] is None or fit["span_s"] < 120:
        return "too short"
    return "flat" if fit["growth_pct"] < 5.0 else "growing"


def _image(tmp: Path) -> bytes:
    from _common import realworld_root

    bus = realworld_root() / "images" / "bus.jpg"
    if bus.is_file():
        return bus.read_bytes()
    from tests.tiny_models import write_image

    return write_image(tmp / "img.jpg", h=480, w=640).read_bytes()


def _name(bundle: Path) -> str:
    return str(json.loads((bundle / "bundle.json").read_text())["name"])


def part_load(args: argparse.Namespace) -> dict[str, Any]:
    return _serve_under_mixed_load(
        args, seconds=args.load_seconds, inflight=args.inflight, label="load"
    )


def part_soak(args: argparse.Namespace) -> dict[str, Any]:
    return _serve_under_mixed_load(
        args, seconds=args.soak_seconds, inflight=args.soak_inflight, label="soak"
    )


# the README table ---------------------------------------------------------------------------
def readme_table(results: dict[str, Any]) -> str:
    """The Markdown table the README quotes, from the results file."""
    rows = ["| figure | value | measured |", "|---|---|---|"]

    def when(sec: dict[str, Any]) -> str:
        m = sec.get("machine") or {}
        return f"{sec.get('date', '?')[:10]}, {m.get('cpu', '?')} ({m.get('cores', '?')} cores)"

    f = results.get("fuzz")
    if f:
        rows.append(
            f"| requests fuzzed (schemathesis, plain + secured) / 5xx | "
            f"{f['requests']:,} / **{f['server_errors']}** | {when(f)} |"
        )
    a = results.get("attacks")
    if a:
        rows.append(f"| attacks tried / refused | {a['tried']} / **{a['refused']}** | {when(a)} |")
    x = results.get("faults")
    if x:
        rows.append(
            f"| faults injected (kill -9) / survived | {x['injected']} / "
            f"**{x['survived']}** | {when(x)} |"
        )
    for name, what in (("load", "10 min, 32 in flight"), ("soak", "1 hour, 8 in flight")):
        s = results.get(name)
        if not s:
            rows.append(
                f"| {name}: {what}, mixed traffic: requests / 5xx / p50 / p99 (ms) / "
                f"RSS second half | **to be measured** (`make {name}`) | - |"
            )
        else:
            rows.append(
                f"| {name}: {s['seconds'] / 60:.0f} min, {s['inflight']} in flight, mixed "
                f"traffic: requests / 5xx / p50 / p99 (ms) / RSS second half | "
                f"{s['requests']:,} / **{s['server_errors']}** / "
                f"{s['valid_predict_ms']['p50']} / {s['valid_predict_ms']['p99']} / "
                f"{s['second_half'].get('growth_pct')} % (**{s['verdict']}**) | {when(s)} |"
            )
    return "\n".join(rows)


def update_readme(results: dict[str, Any], readme: Path = ROOT / "README.md") -> bool:
    text = readme.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        return False
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{readme_table(results)}\n{END}{tail}", encoding="utf-8")
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("parts", nargs="*", choices=[*PARTS, []], help="parts to run [all]")
    ap.add_argument("--fuzz-examples", type=int, default=500)
    ap.add_argument("--fault-rounds", type=int, default=1, help="repeat the fault scenarios")
    ap.add_argument("--load-seconds", type=float, default=600.0)
    ap.add_argument("--inflight", type=int, default=32)
    ap.add_argument(
        "--soak-seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 3600))
    )
    ap.add_argument("--soak-inflight", type=int, default=8)
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between RSS samples")
    ap.add_argument("--bundle", help="bundle to serve for load/soak (default: tiny detector)")
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--readme", action="store_true", help="only rewrite the README table")
    args = ap.parse_args()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    if args.readme:
        print(readme_table(results))
        print("README updated" if update_readme(results) else "README has no table markers")
        return
    runners = {
        "fuzz": part_fuzz,
        "attacks": part_attacks,
        "faults": part_faults,
        "load": part_load,
        "soak": part_soak,
    }
    for part in args.parts or PARTS:
        results[part] = runners[part](args)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))  # after each part: nothing lost
        print(f"wrote {out} ({part})", flush=True)
    print(readme_table(results))
    bad = [
        p
        for p in args.parts or PARTS
        if results[p].get("server_errors")
        or results[p].get("verdict") == "failed"
        or results[p].get("refused", 0) != results[p].get("tried", 0)
        or results[p].get("survived", 0) != results[p].get("injected", 0)
    ]
    if bad:
        raise SystemExit(f"failed: {', '.join(bad)}")


if __name__ == "__main__":
    main()
