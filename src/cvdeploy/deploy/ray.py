"""Ray: batch inference on Ray Data, and a Ray Serve application, from the same predictor.

Both run cvdeploy's :class:`~cvdeploy.pipeline.Predictor` (the bundle's preprocessing,
runtime and decoding), one per Ray actor or Serve replica.

- :func:`ray_batch` (``cvdeploy batch --ray``): ``map_batches`` over the image paths with an
  actor pool (``concurrency`` = actors), each actor holding one predictor. Without an
  address it starts a local Ray instance bound to the loopback (no dashboard, a temporary
  session directory); with ``--address`` it joins a cluster, and nothing else changes (the
  image paths must then be readable by every node: shared storage).
- :func:`build_app` / :func:`app_builder`: a Serve deployment with replicas or autoscaling
  and ``@serve.batch``; ``serve run serve_config.yaml`` (written by ``cvdeploy package
  --target ray``) starts it.

Ray 2.x listens on every interface by default. The local instance here is started with the
node address 127.0.0.1, no dashboard, and ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` in the
environment before ray is imported (the CLI sets it; Ray reads it at import), which makes
the GCS, the raylet, the agents and the workers bind the loopback (checked by a test).
 Ray Serve's HTTP proxy binds ``http_options.host``
(127.0.0.1 in the config written here); each Serve replica's internal gRPC server still
binds ``[::]`` (Ray's own choice), so run Serve on a host whose firewall admits only the
cluster.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cvdeploy.bundle import Bundle
from cvdeploy.deploy.base import PackageOptions, PackageResult, copy_bundle, select_runnable
from cvdeploy.errors import BackendUnavailable

if TYPE_CHECKING:
    from cvdeploy.deploy.batch import BatchOptions

__all__ = ["app_builder", "build_app", "init_local", "package_ray", "ray_batch", "require_ray"]

LOOPBACK = "127.0.0.1"
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Set to 0 before ray is imported, it makes a local Ray instance's processes bind the
loopback (Ray reads it at import, in the driver and in every process it starts)."""


def require_ray(*, serve: bool = False) -> None:
    """Raise with the install command when Ray (or Ray Serve) is missing."""
    mods = ["ray", "ray.data"] + (["ray.serve"] if serve else [])
    try:
        missing = [m for m in mods if importlib.util.find_spec(m) is None]
    except ModuleNotFoundError:
        missing = mods
    if missing:
        raise BackendUnavailable(
            f"Ray is not installed ({', '.join(missing)} missing)",
            hint="pip install 'cvdeploy[ray]' (Ray Data and Ray Serve)",
        )


def init_local(temp_dir: Path | None = None, *, num_cpus: int | None = None) -> None:
    """Start a local Ray instance bound to the loopback (no dashboard), if none is running."""
    import warnings

    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        return
    if ray_constants.ENABLE_RAY_CLUSTER:
        warnings.warn(
            f"Ray was imported before {LOOPBACK_ENV}=0 was set: some of its processes may "
            "listen on every interface; set it in the environment before importing ray "
            "(`cvdeploy batch --ray` does)",
            RuntimeWarning,
            stacklevel=2,
        )
    tmp = Path(temp_dir) if temp_dir else Path(tempfile.mkdtemp(prefix="cvdeploy-ray-"))
    # Ray's processes (GCS, raylet, workers) read this when they start: with it, every one
    # of them binds the loopback instead of all interfaces. Set only while they are started.
    with _environ(**{LOOPBACK_ENV: "0"}):
        ray.init(
            address="local",
            _node_ip_address=LOOPBACK,
            include_dashboard=False,
            _temp_dir=str(tmp),
            num_cpus=num_cpus,
            log_to_driver=False,
            configure_logging=False,
        )


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Environment variables set for the block only (Ray's processes inherit them)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _PredictActor:
    """One predictor per Ray actor: paths in, JSON records out."""

    def __init__(
        self,
        bundle: str,
        artifact: str | None,
        batch: int,
        threads: int | None,
        thresholds: dict[str, Any],
        key_file: str | None,
        key_env: str | None,
    ) -> None:
        from cvdeploy.pipeline import Predictor, Thresholds
        from cvdeploy.runtime import RunnerOptions

        loader = None
        if key_file or key_env:
            from cvdeploy.security import key_from_options, model_loader

            loader = model_loader(key_from_options(Path(key_file) if key_file else None, key_env))
        self.bundle = Bundle.load(bundle, loader=loader)
        self.thresholds = Thresholds(**thresholds)
        self.predictor = Predictor.from_bundle(
            self.bundle,
            artifact,
            options=RunnerOptions(threads=threads) if threads else None,
            batch=batch,
            thresholds=self.thresholds,
        )
        self.predictor.runner.load()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import json

        import numpy as np

        from cvdeploy.deploy.records import predict_records

        paths = [str(p) for p in batch["path"]]
        records = []
        for i in range(0, len(paths), self.predictor.batch):
            records += predict_records(
                self.predictor,
                paths[i : i + self.predictor.batch],
                self.bundle.spec.names,
                self.thresholds,
            )
        return {"record": np.array([json.dumps(r, separators=(",", ":")) for r in records])}


def ray_batch(
    bundle: Bundle,
    paths: Sequence[str],
    write: Callable[[list[dict[str, Any]]], None],
    options: BatchOptions,
) -> tuple[str, dict[str, Any]]:
    """Run the batch job on Ray Data; ``write`` receives the records as they arrive.

    Returns:
        The artifact id and details (actors, the Ray address).
    """
    require_ray()
    import json

    import ray

    art = select_runnable(bundle, options.artifact)
    t0 = time.perf_counter()
    if options.address:
        ray.init(address=options.address, log_to_driver=False, configure_logging=False)
    else:
        init_local(options.ray_temp_dir)
    thresholds = {"conf": options.conf, "iou": options.iou, "max_det": options.max_det}
    details: dict[str, Any] = {
        "actors": options.actors,
        "address": options.address or f"local ({LOOPBACK})",
        "init_s": round(time.perf_counter() - t0, 3),
    }
    if not paths:
        return art.id, details
    items = ray.data.from_items([{"path": p} for p in paths])
    ds = items.map_batches(  # an actor pool: one predictor per actor
        _PredictActor,
        fn_constructor_kwargs={
            "bundle": str(bundle.path.resolve()),
            "artifact": art.id,
            "batch": options.batch,
            "threads": options.threads,
            "thresholds": thresholds,
            "key_file": str(options.key_file) if options.key_file else None,
            "key_env": options.key_env,
        },
        # blocks of 32+ paths per actor call (each call runs inference batches of --batch):
        # Ray's per-call overhead spread over more images
        batch_size=max(options.batch, 32),
        compute=ray.data.ActorPoolStrategy(size=options.actors),
        num_cpus=1,
        batch_format="numpy",
    )
    from cvdeploy.progress import track

    batches = ds.iter_batches(batch_size=options.batch, batch_format="numpy")
    total = -(-len(paths) // options.batch)
    for out in track(batches, total=total, description="batch (ray)", enabled=options.progress):
        write([json.loads(r) for r in out["record"]])
    return art.id, details


# --- Ray Serve --------------------------------------------------------------------------------
def build_app(
    bundle: str | Path,
    *,
    artifact: str | None = None,
    replicas: int | None = 1,
    max_replicas: int | None = None,
    max_batch: int = 8,
    batch_wait_s: float = 0.005,
    threads: int | None = 1,
    key_env: str | None = None,
) -> Any:
    """A Ray Serve application serving the bundle (``POST /`` with an image body).

    Args:
        bundle: The bundle directory (on every node).
        artifact: Artifact id (default: the recommended one).
        replicas: Fixed replicas; ignored when ``max_replicas`` is given.
        max_replicas: Autoscale between ``replicas`` and this many on queued requests.
        max_batch: Most requests ``@serve.batch`` groups into one inference call.
        batch_wait_s: Longest wait for a batch to fill.
        threads: Runtime threads per replica.
        key_env: Environment variable holding the model key of an encrypted bundle.
    """
    require_ray(serve=True)
    from ray import serve
    from starlette.requests import Request

    if max_replicas is not None:
        scaling: dict[str, Any] = {
            "autoscaling_config": {
                "min_replicas": replicas or 1,
                "max_replicas": max_replicas,
                "target_ongoing_requests": max_batch,
            }
        }
    else:
        scaling = {"num_replicas": replicas or 1}

    @serve.deployment(ray_actor_options={"num_cpus": threads or 1}, **scaling)
    class CvdeployPredictor:
        def __init__(self) -> None:
            self.actor = _PredictActor(str(bundle), artifact, max_batch, threads, {}, None, key_env)

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=batch_wait_s)
        async def predict(self, images: list[Any]) -> list[dict[str, Any]]:
            run = self.actor.predictor.run_batch(images)
            names = self.actor.bundle.spec.names
            return [{"results": r.to_dicts(names)} for r in run.results]

        async def __call__(self, request: Request) -> Any:
            from starlette.responses import JSONResponse

            from cvdeploy.data.io import decode_image_bytes
            from cvdeploy.errors import CvdeployError

            try:
                img = decode_image_bytes(await request.body(), source="body")
            except CvdeployError as exc:
                return JSONResponse({"error": exc.message}, status_code=400)
            out = await self.predict(img)
            return {
                "model": self.actor.bundle.name,
                "artifact": self.actor.predictor.artifact_id,
                "width": int(img.shape[1]),
                "height": int(img.shape[0]),
                **out,
            }

    return CvdeployPredictor.bind()  # type: ignore[attr-defined]


def app_builder(args: dict[str, Any]) -> Any:
    """Ray Serve's application builder (``import_path`` of ``serve_config.yaml``)."""
    return build_app(
        args["bundle"],
        artifact=args.get("artifact"),
        replicas=args.get("replicas", 1),
        max_replicas=args.get("max_replicas"),
        max_batch=int(args.get("max_batch", 8)),
        batch_wait_s=float(args.get("batch_wait_s", 0.005)),
        threads=args.get("threads", 1),
        key_env=args.get("key_env"),
    )


def package_ray(bundle: Bundle, out: Path, options: PackageOptions) -> PackageResult:
    """The ray target: the bundle, a Serve config file and a README."""
    art = select_runnable(bundle, options.artifact)
    copy_bundle(bundle, out / "bundle")
    args: dict[str, Any] = {
        "bundle": "bundle",
        "artifact": art.id,
        "replicas": options.replicas,
        "max_replicas": options.max_replicas,
        "max_batch": options.max_batch,
        "threads": 1,
    }
    if art.encryption is not None:
        args["key_env"] = options.key_env or "CVDEPLOY_MODEL_KEY"
    config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": LOOPBACK, "port": 8000},
        "applications": [
            {
                "name": bundle.name,
                "route_prefix": "/",
                "import_path": "cvdeploy.deploy.ray:app_builder",
                "args": args,
            }
        ],
    }
    (out / "serve_config.yaml").write_text(
        "# Ray Serve config: `serve run serve_config.yaml` (from this directory).\n"
        "# http_options.host is the loopback: put 0.0.0.0 behind a firewall to accept others.\n"
        + yaml.safe_dump(config, sort_keys=False),
        encoding="utf-8",
    )
    (out / "README.md").write_text(
        f"# {bundle.name} on Ray\n\n"
        "```bash\npip install 'cvdeploy[ray]'\n"
        "serve run serve_config.yaml          # Ray Serve on http://127.0.0.1:8000/\n"
        "curl -s --data-binary @picture.jpg http://127.0.0.1:8000/\n"
        "cvdeploy batch bundle --data 'photos/**/*.jpg' --out preds.jsonl --ray "
        "[--address ray://head:10001]\n```\n\n"
        f"Artifact `{art.id}`; {options.replicas} replica(s), autoscaling up to "
        f"{options.max_replicas}, `@serve.batch` up to {options.max_batch} requests. "
        "Each Serve replica's internal gRPC port binds all interfaces (Ray's choice): keep "
        "the nodes behind a firewall.\n",
        encoding="utf-8",
    )
    return PackageResult(
        target="ray",
        out=out,
        artifact=art.id,
        image=None,
        commands=["serve run serve_config.yaml"],
        notes=["each Serve replica's internal gRPC port binds [::] (Ray's choice)"],
    )
