"""Offline batch inference: a folder or a glob of images into JSON lines, resumable.

Each output line is one image::

    {"image": PATH, "width": W, "height": H, "results": [...], "artifact": ID}

or ``{"image": PATH, "error": "..."}`` for an image that cannot be read (it does not stop
the run). Lines are appended and flushed batch by batch; a rerun skips the images already
in the file (a line cut short by a crash is dropped first), so an interrupted run resumes
where it stopped. In-process by default; with Ray, on Ray Data (:mod:`cvdeploy.deploy.ray`).
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cvdeploy import jsonsafe
from cvdeploy.bundle import Bundle
from cvdeploy.data import image_paths
from cvdeploy.data.io import IMAGE_SUFFIXES
from cvdeploy.deploy.records import predict_records
from cvdeploy.errors import InputError, UsageError
from cvdeploy.pipeline import Predictor, Thresholds
from cvdeploy.progress import track

__all__ = [
    "BatchOptions",
    "BatchReport",
    "batch_predict",
    "list_inputs",
    "predict_records",
    "read_done",
]


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """How to run a batch job.

    Attributes:
        artifact: Artifact id (default: the recommended one).
        batch: Images per inference call.
        threads: Runtime threads per predictor (``None``: the runtime's default).
        conf: Confidence threshold (``None``: the spec's).
        iou: NMS IoU threshold (``None``: the spec's).
        max_det: Most detections per image (``None``: the spec's).
        resume: Skip the images already in the output (``False``: start it over).
        progress: Show a progress bar on stderr.
        key_file: Model key file of an encrypted bundle.
        key_env: Environment variable holding that key (read by every Ray actor too).
        ray: Run on Ray Data instead of in this process.
        address: Ray cluster address (``None``: a local instance on the loopback).
        actors: Ray actors, one predictor each.
        ray_temp_dir: Ray's session directory for a local instance.
    """

    artifact: str | None = None
    batch: int = 8
    threads: int | None = None
    conf: float | None = None
    iou: float | None = None
    max_det: int | None = None
    resume: bool = True
    progress: bool = True
    key_file: Path | None = None
    key_env: str | None = None
    ray: bool = False
    address: str | None = None
    actors: int = 1
    ray_temp_dir: Path | None = None

    @property
    def thresholds(self) -> Thresholds:
        """Post-processing overrides."""
        return Thresholds(conf=self.conf, iou=self.iou, max_det=self.max_det)


@dataclass(slots=True)
class BatchReport:
    """What a batch job did."""

    out: Path
    total: int
    done_before: int
    processed: int
    errors: int
    seconds: float
    artifact: str
    engine: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        """Throughput of this run (images processed / wall-clock seconds)."""
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        d = asdict(self)
        d["out"] = str(self.out)
        d["images_per_second"] = round(self.images_per_second, 3)
        return d


def list_inputs(images: str | Path) -> list[Path]:
    """The images ``--data`` names (a folder, searched recursively, a dataset yaml, a COCO
    json or image files, as for every command) or a glob pattern, sorted.

    Raises:
        InputError: Nothing matches, or the path is a file that is not an image.
    """
    text = str(images)
    if Path(text).expanduser().exists():
        return sorted(image_paths(text, splits=("val", "test", "train"), what="--data"))
    found = [
        Path(f)
        for f in glob.glob(text, recursive=True)
        if Path(f).is_file() and Path(f).suffix.lower() in IMAGE_SUFFIXES
    ]
    if not found:
        raise InputError(
            f"no images found at {text!r}",
            hint="give a folder of images, a dataset yaml or a glob such as 'photos/**/*.jpg' "
            "(quoted)",
        )
    return sorted(found)


def read_done(out: Path) -> set[str]:
    """The images already in an output file; a last line cut short is removed from it."""
    if not out.is_file():
        return set()
    done: set[str] = set()
    keep = 0
    with out.open("rb") as f:
        for raw in f:
            try:
                rec = jsonsafe.loads(raw)
            except ValueError:
                break  # a line cut short by a crash: everything after it is redone
            if not raw.endswith(b"\n") or not isinstance(rec, dict) or "image" not in rec:
                break
            done.add(str(rec["image"]))
            keep += len(raw)
    if keep != out.stat().st_size:
        with out.open("r+b") as f:
            f.truncate(keep)
    return done


def _load_bundle(bundle: Bundle | Path | str, options: BatchOptions) -> Bundle:
    if isinstance(bundle, Bundle):
        return bundle
    if options.key_file is not None or options.key_env is not None:
        from cvdeploy.security import key_from_options, model_loader

        key = key_from_options(options.key_file, options.key_env)
        return Bundle.load(bundle, loader=model_loader(key))
    return Bundle.load(bundle)


def _chunks(items: Sequence[str], n: int) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


class _Writer:
    """Appends records as lines, flushed per batch and synced at the end."""

    def __init__(self, out: Path, *, fresh: bool) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        self.f = out.open("w" if fresh else "a", encoding="utf-8")
        self.written = 0
        self.errors = 0

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        for r in records:
            self.f.write(json.dumps(r, separators=(",", ":")) + "\n")
            self.written += 1
            self.errors += "error" in r
        self.f.flush()

    def close(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


def batch_predict(
    bundle: Bundle | Path | str,
    images: str | Path | Sequence[Path],
    out: Path | str,
    *,
    options: BatchOptions | None = None,
) -> BatchReport:
    """Predict every image of a folder or glob into a JSON-lines file (see the module doc).

    Args:
        bundle: The bundle.
        images: A folder, a glob pattern, or a list of image paths.
        out: The JSON-lines file (appended to when resuming).
        options: How to run it.

    Returns:
        The counts and the wall-clock time of this run.

    Raises:
        InputError: No images match.
        BackendUnavailable: ``ray`` without Ray installed.
    """
    opts = options or BatchOptions()
    if opts.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {opts.batch}")
    b = _load_bundle(bundle, opts)
    paths = list(images) if isinstance(images, list | tuple) else list_inputs(images)  # type: ignore[arg-type]
    out_path = Path(out)
    done = read_done(out_path) if opts.resume else set()
    todo = [str(p) for p in paths if str(p) not in done]
    writer = _Writer(out_path, fresh=not opts.resume)
    t0 = time.perf_counter()
    try:
        if opts.ray:
            from cvdeploy.deploy.ray import ray_batch

            artifact, details = ray_batch(b, todo, writer.write, opts)
            engine = "ray"
        else:
            pred = Predictor.from_bundle(
                b,
                opts.artifact,
                options=_runner_options(opts.threads),
                batch=opts.batch,
                thresholds=opts.thresholds,
            )
            artifact, details, engine = pred.artifact_id, {}, "in-process"
            with pred:
                chunks = _chunks(todo, pred.batch)
                total = -(-len(todo) // pred.batch)
                for chunk in track(chunks, total=total, description="batch", enabled=opts.progress):
                    writer.write(predict_records(pred, chunk, b.spec.names, opts.thresholds))
    finally:
        writer.close()
    return BatchReport(
        out=out_path,
        total=len(paths),
        done_before=len(paths) - len(todo),
        processed=writer.written,
        errors=writer.errors,
        seconds=time.perf_counter() - t0,
        artifact=artifact,
        engine=engine,
        details=details,
    )


def _runner_options(threads: int | None) -> Any:
    from cvdeploy.runtime import RunnerOptions

    return RunnerOptions(threads=threads) if threads else None
