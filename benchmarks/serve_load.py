"""Serving under load: `cvdeploy serve` against a plain FastAPI server, same model, loopback.

The *plain* server is what a FastAPI tutorial gives, written plainly: one endpoint taking
a multipart upload, a synchronous handler (FastAPI runs it in its thread pool) that decodes
the image and runs the bundle's FP32 ONNX model (the file a tutorial starts from) with
ONNX Runtime through the same :class:`Predictor`, one request at a time, one image per
inference call; ``--plain-artifact`` names another artifact. The *cvdeploy* server is
``cvdeploy serve`` at its defaults: the bundle's recommended configuration when
``cvdeploy tune`` recorded one (``--model yolox-tuned`` serves the bundle that
``benchmarks/e2e_vs_naive.py`` tuned), dynamic batching, inference off the event loop, a
bounded queue, one single-threaded runner per core, a JPEG larger than the model needs
decoded at 1/2-1/8 scale (``--full-decode`` turns that last one off).

Both run as separate uvicorn processes on 127.0.0.1, one after the other, and receive the
same multipart requests (same image) from an asyncio httpx client keeping 1, 4 and 16
requests in flight, for a bounded number of requests per level. Records throughput,
p50/p99 latency and failures; writes ``benchmarks/results/serve_load.json``.

Usage::

    python benchmarks/serve_load.py                      # the tiny test detector (dynamic batch)
    python benchmarks/serve_load.py --model yolox        # YOLOX-Nano from ../shared/realworld
    python benchmarks/serve_load.py --model yolox-tuned  # ... as tuned by e2e_vs_naive.py
    python benchmarks/serve_load.py --model zoo          # the shipped detector-n, dynamic batch
    python benchmarks/serve_load.py --bundle DIR [--image IMG] [--requests 200]
    python benchmarks/serve_load.py --full-decode --skip-plain   # cvdeploy only, full decode
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import ROOT, realworld_root
from fastapi import FastAPI, File, UploadFile

REALWORLD = realworld_root()
LEVELS = (1, 4, 16)


# the plain server ---------------------------------------------------------------------------
def plain_app(bundle_dir: str, artifact: str | None = None) -> Any:
    """The tutorial server: sync handler, one image per inference call, FP32 ONNX Runtime."""
    from cvdeploy.bundle import Bundle
    from cvdeploy.data.io import decode_image_bytes
    from cvdeploy.pipeline.predictor import Predictor

    bundle = Bundle.load(bundle_dir)
    if artifact is None and any(a.id == "onnx-fp32" for a in bundle.manifest.artifacts):
        artifact = "onnx-fp32"
    predictor = Predictor.from_bundle(bundle, artifact, batch=1)
    predictor.runner.load()
    names = bundle.spec.names
    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/predict")
    def predict(file: UploadFile = File(...)) -> dict[str, Any]:
        image = decode_image_bytes(file.file.read())
        (result,), _ = predictor.predict_batch([image])
        return {"detections": result.to_dicts(names)}

    return app


# helpers ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(cmd: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    import httpx

    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    end = time.monotonic() + 180
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}):\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server not ready within 180 s:\n{log.read_text()}")


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) used so far by a process (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def multipart_body(image: bytes) -> tuple[bytes, dict[str, str]]:
    """One ``multipart/form-data`` upload of ``image``, encoded once for every request.

    The load generator shares the cores with the server: encoding the form per request
    (httpx's ``files=``) cost the client more CPU than the server spent on some requests
    and stretched the latency tail at 16 in flight, for both servers alike.
    """
    boundary = "cvdeploy-bench-2b9f4c1d"
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="img.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    body = head + image + f"\r\n--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


async def _load(url: str, image: bytes, *, inflight: int, total: int) -> dict[str, Any]:
    """Keep ``inflight`` requests open until ``total`` are answered."""
    import httpx

    latencies: list[float] = []
    failures: dict[str, int] = {}
    remaining = total
    body, headers = multipart_body(image)
    limits = httpx.Limits(max_connections=inflight, max_keepalive_connections=inflight)
    cpu0 = time.process_time()
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                try:
                    r = await client.post(url, content=body, headers=headers)
                    ok = r.status_code == 200
                    key = str(r.status_code)
                except httpx.HTTPError as exc:
                    ok, key = False, type(exc).__name__
                dt = time.perf_counter() - t0
                if ok:
                    latencies.append(dt * 1e3)
                else:
                    failures[key] = failures.get(key, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(inflight)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "inflight": inflight,
        "requests": total,
        "ok": len(latencies),
        "failures": failures,
        "throughput_rps": round(len(latencies) / wall, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "wall_s": round(wall, 2),
        "client_cpu_ms_per_request": round(
            (time.process_time() - cpu0) * 1e3 / max(len(latencies), 1), 2
        ),
    }


def _run_server(
    name: str, cmd: list[str], port: int, path: str, image: bytes, args: Any, tmp: Path
) -> list[dict[str, Any]]:
    proc = _start(cmd, port, tmp / f"{name}.log")
    try:
        url = f"http://127.0.0.1:{port}{path}"
        asyncio.run(_load(url, image, inflight=4, total=args.warmup))
        rows = []
        for level in LEVELS:
            total = max(args.requests, 4 * level)
            cpu0 = _cpu_s(proc.pid)
            row = asyncio.run(_load(url, image, inflight=level, total=total))
            # CPU time per answered request: robust to other processes sharing the cores.
            row["server_cpu_ms_per_request"] = round(
                (_cpu_s(proc.pid) - cpu0) * 1e3 / max(row["ok"], 1), 2
            )
            print(
                f"{name:9s} inflight {level:2d}: {row['throughput_rps']:8.1f} req/s  "
                f"p50 {row['p50_ms']:8.1f} ms  p99 {row['p99_ms']:8.1f} ms  "
                f"cpu {row['server_cpu_ms_per_request']:6.1f} ms/req  "
                f"failures {sum(row['failures'].values())}",
                flush=True,
            )
            rows.append(row)
        return rows
    finally:
        _stop(proc)


def _prepare(args: Any, tmp: Path) -> tuple[Path, bytes, str]:
    from cvdeploy.export.importer import ImportOverrides, import_model

    if args.bundle:
        bundle = Path(args.bundle)
        desc = f"bundle {bundle}"
    elif args.model == "yolox":
        src = REALWORLD / "models" / "yolox_nano.onnx"
        if not src.is_file():
            raise SystemExit(f"skipped: {src} is absent")
        bundle, _ = import_model(src, out=tmp / "bundle", overrides=ImportOverrides(preset="yolox"))
        bundle = bundle.path
        desc = "YOLOX-Nano FP32 ONNX (realworld, fixed batch 1)"
    elif args.model == "yolox-tuned":
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        bundle = cache / "cvdeploy-bench" / "yolox-tuned"
        if not (bundle / "bundle.json").is_file():
            raise SystemExit(f"skipped: no tuned bundle in {bundle}: run e2e_vs_naive.py first")
        from cvdeploy.bundle import Bundle

        rec = Bundle.load(bundle).manifest.recommended or {}
        desc = f"YOLOX-Nano tuned by e2e_vs_naive.py (recommended {rec.get('artifact')})"
    elif args.model == "zoo":
        from cvdeploy.export import ExportOptions, export_model

        bundle = tmp / "bundle"
        export_model(
            "detector-n", formats=["onnx"], out=bundle, options=ExportOptions(dynamic=True)
        )
        desc = "zoo detector-n FP32 ONNX (dynamic batch, 256x256)"
    else:
        sys.path.insert(0, str(ROOT))
        from tests.tiny_models import NC, tiny_detector_onnx

        src = tiny_detector_onnx(tmp / "tiny.onnx")
        names = tuple(f"c{i}" for i in range(NC))
        b, _ = import_model(
            src, out=tmp / "bundle", overrides=ImportOverrides(decoder="yolov8", names=names)
        )
        bundle = b.path
        desc = "tiny test detector (ONNX, dynamic batch, 64x64)"
    if args.image:
        image = Path(args.image).read_bytes()
    elif (REALWORLD / "images" / "bus.jpg").is_file():
        image = (REALWORLD / "images" / "bus.jpg").read_bytes()
    else:
        sys.path.insert(0, str(ROOT))
        from tests.tiny_models import write_image

        image = write_image(tmp / "img.jpg", h=480, w=640).read_bytes()
    return bundle, image, desc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bundle", help="bundle to serve (default: built per --model)")
    ap.add_argument("--model", choices=["tiny", "yolox", "yolox-tuned", "zoo"], default="tiny")
    ap.add_argument("--plain-artifact", help="artifact the plain server runs (default: onnx-fp32)")
    ap.add_argument("--image", help="image to send (default: realworld bus.jpg)")
    ap.add_argument("--requests", type=int, default=200, help="requests per level (min 4x level)")
    ap.add_argument("--warmup", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--workers", type=int, help="cvdeploy workers (default: auto)")
    ap.add_argument("--threads", type=int, help="runtime threads per cvdeploy worker")
    ap.add_argument(
        "--full-decode",
        action="store_true",
        help="cvdeploy decodes every JPEG in full (reduced_decode: false), like the plain one",
    )
    ap.add_argument("--skip-plain", action="store_true", help="only the cvdeploy server")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_load.json"))
    ap.add_argument("--plain-server", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain_server:  # the child process of the plain side
        import uvicorn

        uvicorn.run(
            plain_app(args.plain_server, args.plain_artifact),
            host="127.0.0.1",
            port=args.port,
            log_level="warning",
        )
        return
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="serve-load-") as d:
        tmp = Path(d)
        bundle, image, desc = _prepare(args, tmp)
        print(f"model: {desc}; image {len(image)} bytes", flush=True)
        port = _free_port()
        plain = []
        if not args.skip_plain:
            plain = _run_server(
                "plain",
                [
                    sys.executable,
                    __file__,
                    "--plain-server",
                    str(bundle),
                    "--port",
                    str(port),
                    *(["--plain-artifact", args.plain_artifact] if args.plain_artifact else []),
                ],
                port,
                "/predict",
                image,
                args,
                tmp,
            )
        port = _free_port()
        conf = tmp / "serve.yaml"
        conf.write_text(f"reduced_decode: {'false' if args.full_decode else 'true'}\n")
        cvd = _run_server(
            "cvdeploy",
            [
                sys.executable,
                "-m",
                "cvdeploy.cli.main",
                "serve",
                str(bundle),
                "--port",
                str(port),
                "--max-batch",
                str(args.max_batch),
                *(["--workers", str(args.workers)] if args.workers else []),
                "--queue",
                "1024",
                "--config",
                str(conf),
                *(["--threads", str(args.threads)] if args.threads else []),
            ],
            port,
            f"/v1/models/{_bundle_name(bundle)}/predict",
            image,
            args,
            tmp,
        )
    out = Path(args.out)
    existing: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    key = args.bundle or args.model
    if not plain:  # the plain figures of the last full run of this model
        plain = existing.get(key, {}).get("plain") or [{"throughput_rps": float("nan")}]
    if args.workers or args.threads:
        key += f"-workers{args.workers}-threads{args.threads or 'default'}"
    if args.full_decode:
        key += "-full-decode"
    at16 = {"plain": plain[-1], "cvdeploy": cvd[-1]}
    speedup = cvd[-1]["throughput_rps"] / max(plain[-1]["throughput_rps"], 1e-9)
    p99_over_p50 = cvd[-1]["p99_ms"] / max(cvd[-1]["p50_ms"], 1e-9)
    failures = sum(sum(r["failures"].values()) for r in cvd)
    targets = {
        "throughput_x_at_16": round(speedup, 2),
        "throughput_target_met": speedup >= 2.0,
        "p99_over_p50_at_16": round(p99_over_p50, 2),
        "p99_target_met": p99_over_p50 <= 3.0,
        "cvdeploy_failures": failures,
    }
    result = {
        "model": desc,
        "environment": _environment(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg_1min_before": round(load_before, 2),
            "load_avg_1min_after": round(os.getloadavg()[0], 2),
        },
        "settings": {
            "plain_artifact": args.plain_artifact or "onnx-fp32 (when the bundle has it)",
            "max_batch": args.max_batch,
            "workers": args.workers,
            "threads": args.threads,
            "reduced_decode": not args.full_decode,
            "plain_measured_now": not args.skip_plain,
            "requests_per_level": args.requests,
            "image_bytes": len(image),
        },
        "plain": plain,
        "cvdeploy": cvd,
        "at_16_inflight": at16,
        "targets": targets,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    existing[key] = result
    out.write_text(json.dumps(existing, indent=2))
    print(json.dumps(targets, indent=2))
    print(f"wrote {out}")


def _environment() -> dict[str, Any]:
    from cvdeploy.environment import fingerprint

    return fingerprint()


def _bundle_name(path: Path) -> str:
    from cvdeploy.bundle import Bundle

    return Bundle.load(path, verify=False).name


if __name__ == "__main__":
    main()
