"""Deploy benchmark: batch throughput in-process vs Ray Data (1 and 2 actors), and the server
image's size and start-up time. Writes benchmarks/results/deploy.json.

    python benchmarks/deploy.py                 # the full run (a quiet machine, ~10 min)
    python benchmarks/deploy.py --quick         # tiny budgets: checks the script end to end

The model is the shipped detector-n exported to ONNX (FP32, dynamic batch), the images a
fresh synthetic set (256 px JPEGs). Each batch configuration runs as `cvdeploy batch` in a
fresh interpreter, as a user runs it (Ray: a local instance on the loopback, one
single-threaded predictor per actor; in-process: one predictor, 1 and 2 threads); the
figures are images per second of the whole job, and of the job less Ray's start
(``ray.init``). The image is built with the container engine found (podman or docker) on
the local base image of ``make base-image``; start-up is from ``run`` to the first 200 of
``/readyz``. What a 2-core machine can show: whether Ray Data's overhead (serialisation,
scheduling, one process per actor) stays under 20% of the in-process throughput when both
use the same cores; not how it scales past one node (that needs a cluster: the same command
with --address).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from _common import ROOT, cpu_kind

RESULTS = ROOT / "benchmarks" / "results" / "deploy.json"
BASE = os.environ.get("CVDEPLOY_TEST_BASE_IMAGE", "localhost/cvdeploy-base:bookworm")


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 1800) -> dict[str, Any]:
    res = subprocess.run(
        [sys.executable, "-m", "cvdeploy.cli.main", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if res.returncode != 0:
        raise SystemExit(f"cvdeploy {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(res.stdout[res.stdout.index("{") :])
    return out


def _bundle(work: Path) -> Path:
    out = work / "bundle"
    _cli("export", "detector-n", "--format", "onnx", "--dynamic", "--out", str(out))
    return out


def _images(work: Path, n: int) -> Path:
    from cvdeploy.data.synthetic import make_detection_dataset

    make_detection_dataset(work / "data", n_train=0, n_val=n, imgsz=256, seed=7)
    return work / "data" / "images" / "val"


def _batch(bundle: Path, images: Path, out: Path, *args: str) -> dict[str, Any]:
    if out.exists():
        out.unlink()
    t0 = time.perf_counter()
    rep = _cli("batch", str(bundle), "--data", str(images), "--out", str(out), *args)
    rep["process_s"] = round(time.perf_counter() - t0, 3)
    init = float((rep.get("details") or {}).get("init_s") or 0.0)
    rep["images_per_second_excl_init"] = round(rep["processed"] / (rep["seconds"] - init), 3)
    return rep


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(float(r[key]) for r in runs), 3)


def batch_throughput(bundle: Path, images: Path, work: Path, repeats: int) -> dict[str, Any]:
    configs = {
        "in_process_1_thread": ("--threads", "1", "--batch", "8"),
        "in_process_2_threads": ("--threads", "2", "--batch", "8"),
        "ray_1_actor": ("--ray", "--actors", "1", "--threads", "1", "--batch", "8"),
        "ray_2_actors": ("--ray", "--actors", "2", "--threads", "1", "--batch", "8"),
    }
    out: dict[str, Any] = {}
    for name, args in configs.items():
        runs = [_batch(bundle, images, work / f"{name}.jsonl", *args) for _ in range(repeats)]
        out[name] = {
            "runs": runs,
            "images_per_second": _median(runs, "images_per_second"),
            "images_per_second_excl_init": _median(runs, "images_per_second_excl_init"),
        }
        print(f"{name}: {out[name]['images_per_second']} images/s", file=sys.stderr)
    best_in = max(
        out["in_process_1_thread"]["images_per_second"],
        out["in_process_2_threads"]["images_per_second"],
    )
    out["ray_2_actors_vs_in_process"] = round(out["ray_2_actors"]["images_per_second"] / best_in, 3)
    out["ray_2_actors_vs_in_process_excl_init"] = round(
        out["ray_2_actors"]["images_per_second_excl_init"] / best_in, 3
    )
    out["ray_2_vs_1_actor"] = round(
        out["ray_2_actors"]["images_per_second"] / out["ray_1_actor"]["images_per_second"], 3
    )
    return out


def image_startup(bundle: Path, work: Path, repeats: int) -> dict[str, Any]:
    from cvdeploy.deploy import PackageOptions, find_engine, package_bundle
    from cvdeploy.errors import BackendUnavailable

    try:
        engine = find_engine()
    except BackendUnavailable as exc:
        return {"skipped": exc.message}
    if not engine.image_exists(BASE):
        return {"skipped": f"base image {BASE} absent: make base-image"}
    tag = f"localhost/cvdeploy-bench-{uuid.uuid4().hex[:8]}:1"
    ctx = package_bundle(
        bundle, "docker", work / "ctx", options=PackageOptions(wheels=True, base=BASE)
    )
    t0 = time.perf_counter()
    engine.build(ctx.out, tag, build_args={"BASE": BASE})
    build_s = time.perf_counter() - t0
    starts = []
    try:
        for i in range(repeats):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            name = f"cvdeploy-bench-{os.getpid()}-{i}"
            t0 = time.perf_counter()
            engine.run_detached(tag, name, env={"HOST": "127.0.0.1", "PORT": str(port)})
            try:
                deadline = time.monotonic() + 180
                while time.monotonic() < deadline:
                    try:
                        with urllib.request.urlopen(
                            f"http://127.0.0.1:{port}/readyz", timeout=1
                        ) as r:
                            if r.status == 200:
                                break
                    except OSError:
                        time.sleep(0.05)
                starts.append(round(time.perf_counter() - t0, 3))
            finally:
                engine.remove_container(name)
        size = engine.image_size(tag)
    finally:
        engine.remove_image(tag)
    return {
        "engine": engine.name,
        "base": BASE,
        "image_mb": round(size / 1e6, 1),
        "build_s": round(build_s, 1),
        "startup_s": starts,
        "startup_s_median": round(statistics.median(starts), 3) if starts else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny budgets (a check, not figures)")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-image", action="store_true", help="no container build")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    n, repeats = (40, 1) if args.quick else (args.images, args.repeats)
    from cvdeploy.environment import fingerprint

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cvd-bench-", dir="/tmp") as tmp:
        work = Path(tmp)
        bundle = _bundle(work)
        images = _images(work, n)
        result: dict[str, Any] = {
            "quick": args.quick,
            "images": n,
            "repeats": repeats,
            "cpu_kind": cpu_kind(),
            "environment": {k: v for k, v in fingerprint().items() if k != "packages"},
            "batch": batch_throughput(bundle, images, work, repeats),
        }
        if not args.skip_image:
            result["image"] = image_startup(bundle, work, repeats)
    result["loadavg_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
