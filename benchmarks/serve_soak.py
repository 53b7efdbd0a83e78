"""Soak: does `cvdeploy serve` keep a flat memory footprint under steady load? (`make soak`)

Starts ``cvdeploy serve`` on 127.0.0.1 (the tiny test detector by default, like
``serve_load.py``), keeps ``--inflight`` multipart requests open for ``--seconds``
(``SOAK_SECONDS`` in ``make soak``; 10 minutes by default), and samples the server
process's resident memory (``VmRSS`` from ``/proc``) every ``--interval`` seconds.

The verdict looks only at the second half of the run: the first half absorbs the one-off
growth of a fresh server (allocator arenas, ONNX Runtime's memory arena reaching its high
water mark, lazily built caches and metric label sets). A least-squares line is fitted to
the second half's RSS samples; the run is **flat** when the line rises by less than
``--threshold-mb`` (5 MiB by default) over that half, no request failed and the server is
still up. Why 5 MiB: between samples the RSS of a steady server swings by several MiB
(request bodies and decoded images in flight, allocator arenas; about +-6 MiB measured
on the tiny detector), but over the ~60 samples of a 5-minute half the fitted rise has a
spread of about 2 MiB, so 5 MiB is well above noise, while a leak of 1 KiB per request at
~20 requests/s adds about 6 MiB over those 5 minutes. A second half shorter than 2
minutes is too short to tell (verdict ``too short``, exit status 0). The growth per request
implied by the slope is reported too.

Writes ``benchmarks/results/serve_soak.json`` (RSS series, slope, growth, requests served
and failed, verdict, conditions).

Usage::

    python benchmarks/serve_soak.py                     # 600 s
    python benchmarks/serve_soak.py --seconds 60        # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import ROOT, _bundle_name, _free_port, _prepare, _start, _stop, multipart_body

MIN_HALF_S = 120.0
"""A second half shorter than this gives no verdict (RSS noise dominates the fit)."""


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (Linux ``/proc``); NaN once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def fit_second_half(series: list[tuple[float, float]]) -> dict[str, float | None]:
    """Slope (MiB/min) and growth (MiB) of a least-squares line over the second half."""
    half = [(t, m) for t, m in series if t >= series[-1][0] / 2 and np.isfinite(m)]
    if len(half) < 3:
        return {"slope_mb_per_min": None, "growth_mb": None, "span_s": None}
    t = np.array([x for x, _ in half])
    m = np.array([y for _, y in half])
    slope = float(np.polyfit(t, m, 1)[0])  # MiB per second
    span = float(t[-1] - t[0])
    return {
        "slope_mb_per_min": round(slope * 60, 4),
        "growth_mb": round(slope * span, 3),
        "span_s": round(span, 1),
    }


async def _load(
    url: str, image: bytes, *, inflight: int, seconds: float, counts: dict[str, Any]
) -> None:
    """Keep ``inflight`` requests open until ``seconds`` have passed."""
    import httpx

    end = time.monotonic() + seconds
    body, headers = multipart_body(image)
    limits = httpx.Limits(max_connections=inflight, max_keepalive_connections=inflight)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker() -> None:
            while time.monotonic() < end:
                try:
                    r = await client.post(url, content=body, headers=headers)
                    key = str(r.status_code)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                if key == "200":
                    counts["ok"] += 1
                else:
                    counts["failed"][key] = counts["failed"].get(key, 0) + 1

        await asyncio.gather(*(worker() for _ in range(inflight)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 600)), help="load"
    )
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between RSS samples")
    ap.add_argument("--inflight", type=int, default=4, help="requests kept open")
    ap.add_argument("--threshold-mb", type=float, default=5.0, help="flat: growth below this")
    ap.add_argument("--bundle", help="bundle to serve (default: the tiny test detector)")
    ap.add_argument("--model", choices=["tiny", "yolox"], default="tiny")
    ap.add_argument("--image", help="image to send (default: realworld bus.jpg)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_soak.json"))
    args = ap.parse_args()
    if args.seconds < 4 * args.interval:
        raise SystemExit("--seconds must cover at least 4 RSS samples (--interval)")

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="serve-soak-") as d:
        tmp = Path(d)
        bundle, image, desc = _prepare(args, tmp)
        port = _free_port()
        cmd = [sys.executable, "-m", "cvdeploy.cli.main", "serve", str(bundle), "--port", str(port)]
        proc = _start(cmd, port, tmp / "server.log")
        url = f"http://127.0.0.1:{port}/v1/models/{_bundle_name(bundle)}/predict"
        print(f"soak: {desc}; {args.seconds:.0f} s, {args.inflight} in flight", flush=True)
        series: list[tuple[float, float]] = []
        counts: dict[str, Any] = {"ok": 0, "failed": {}}
        stop = threading.Event()
        t0 = time.monotonic()

        def sample() -> None:
            while True:
                mb = rss_mb(proc.pid)
                series.append((round(time.monotonic() - t0, 2), round(mb, 2)))
                print(f"  {series[-1][0]:7.1f} s  RSS {mb:8.1f} MiB  ok {counts['ok']}", flush=True)
                if stop.wait(args.interval):
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            asyncio.run(
                _load(url, image, inflight=args.inflight, seconds=args.seconds, counts=counts)
            )
        finally:
            stop.set()
            sampler.join(timeout=30)
            series.append((round(time.monotonic() - t0, 2), round(rss_mb(proc.pid), 2)))
            alive = proc.poll() is None
            _stop(proc)
    wall = series[-1][0]
    fit = fit_second_half(series)
    failed = sum(counts["failed"].values())
    per_request_kb = None
    if fit["slope_mb_per_min"] is not None and counts["ok"]:
        per_request_kb = round(fit["slope_mb_per_min"] / 60 * 1024 / (counts["ok"] / wall), 3)
    result = {
        "model": desc,
        "seconds": round(wall, 1),
        "inflight": args.inflight,
        "interval_s": args.interval,
        "rss_mb": series,
        "rss_start_mb": series[0][1],
        "rss_end_mb": series[-1][1],
        "rss_max_mb": max(m for _, m in series if np.isfinite(m)),
        "second_half": fit,
        "growth_per_request_kb": per_request_kb,
        "requests_ok": counts["ok"],
        "requests_failed": failed,
        "failures": counts["failed"],
        "throughput_rps": round(counts["ok"] / wall, 2),
        "server_alive_at_end": alive,
        "threshold_mb": args.threshold_mb,
        "verdict": _verdict(fit, args.threshold_mb, failed=failed, alive=alive),
        "verdict_rule": (
            f"flat when the least-squares line over the second half (at least "
            f"{MIN_HALF_S:.0f} s) rises by less than {args.threshold_mb} MiB, no request "
            "failed and the server is still up"
        ),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg_1min_before": round(load_before, 2),
            "load_avg_1min_after": round(os.getloadavg()[0], 2),
        },
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    summary = {k: result[k] for k in ("verdict", "second_half", "requests_ok", "requests_failed")}
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    if result["verdict"] not in ("flat", "too short"):
        raise SystemExit(1)


def _verdict(fit: dict[str, float | None], threshold: float, *, failed: int, alive: bool) -> str:
    if failed or not alive:
        return "failed"
    growth, span = fit["growth_mb"], fit["span_s"]
    if growth is None or span is None or span < MIN_HALF_S:
        return "too short"
    return "flat" if growth < threshold else "growing"


if __name__ == "__main__":
    main()
