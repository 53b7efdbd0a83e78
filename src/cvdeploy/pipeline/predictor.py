"""The Predictor: preprocess (spec) -> Runner -> decode + NMS (spec) -> results.

Eval, bench, serve and doctor all use this class, so the pipeline that was measured is
the pipeline that is served. Every call reports per-stage wall-clock times.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cvdeploy.bundle import Artifact, Bundle, ModelFiles
from cvdeploy.errors import BackendUnavailable, SpecError, UsageError
from cvdeploy.pipeline.heads import get_head
from cvdeploy.pipeline.preprocess import ResizeMeta, resize_image, scale_boxes, to_tensor
from cvdeploy.pipeline.results import Classification, Detections
from cvdeploy.runtime import RUNTIMES, Runner, RunnerOptions, create_runner
from cvdeploy.runtime.base import numpy_dtype
from cvdeploy.spec import IOSpec, ModelSpec

Result = Detections | Classification
STAGES = ("preprocess", "inference", "postprocess")
# When no artifact is named and the bundle recommends none: deployment formats first.
FORMAT_PREFERENCE = ("openvino", "onnx", "tflite", "tensorrt", "torch")


@dataclass(slots=True)
class StageTimes:
    """Accumulated wall-clock milliseconds per stage, and how many images they cover."""

    preprocess: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0
    images: int = 0
    batches: int = 0

    def add(self, other: StageTimes) -> None:
        """Accumulate another measurement."""
        self.preprocess += other.preprocess
        self.inference += other.inference
        self.postprocess += other.postprocess
        self.images += other.images
        self.batches += other.batches

    def per_image(self) -> dict[str, float]:
        """Mean milliseconds per image for each stage."""
        n = max(self.images, 1)
        return {s: getattr(self, s) / n for s in STAGES}

    @property
    def total(self) -> float:
        """Sum of the stages, in milliseconds."""
        return self.preprocess + self.inference + self.postprocess


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Post-processing thresholds (``None``: the spec's default)."""

    conf: float | None = None
    iou: float | None = None
    max_det: int | None = None
    multi_label: bool = False
    agnostic: bool | None = None


@dataclass(slots=True)
class BatchRun:
    """What :meth:`Predictor.run_batch` returns.

    Attributes:
        results: One result per image, in image order.
        times: Wall-clock milliseconds of each stage over the batch.
        outputs: The raw model outputs (only when asked for with ``keep_outputs``).
    """

    results: list[Result]
    times: StageTimes
    outputs: list[np.ndarray] | None = None


@dataclass(slots=True)
class Predictor:
    """Runs images through one artifact with the bundle spec's pre- and post-processing.

    Build with :meth:`from_bundle`; use as a context manager to release the runner.

    Attributes:
        spec: The model spec.
        runner: A runner for the artifact.
        artifact_id: Which artifact runs.
        thresholds: Post-processing overrides.
        imgsz: Input height and width (defaults to the artifact's static size or spec.imgsz).
        batch: Largest batch per inference call (the artifact's fixed batch wins).
    """

    spec: ModelSpec
    runner: Runner
    artifact_id: str = "?"
    thresholds: Thresholds = field(default_factory=Thresholds)
    imgsz: tuple[int, int] | None = None
    batch: int = 8
    _dtype: Any = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        io = self.runner.io
        hw = _static_hw(io)
        if self.imgsz is None:
            self.imgsz = hw or self.spec.imgsz
        elif hw is not None and tuple(self.imgsz) != hw:
            raise UsageError(
                f"artifact {self.artifact_id} has a fixed input size {hw[0]}x{hw[1]}, "
                f"cannot run at {self.imgsz[0]}x{self.imgsz[1]}",
                hint="drop --imgsz, or export with --dynamic to change the input size",
            )
        if any(s % self.spec.stride for s in self.imgsz) and self.spec.task == "detect":
            raise UsageError(
                f"imgsz {self.imgsz} must be a multiple of the model stride {self.spec.stride}"
            )
        fixed = io.fixed_batch
        if fixed is not None:
            self.batch = fixed
        if self.batch < 1:
            raise UsageError(f"batch must be >= 1, got {self.batch}")
        self._dtype = numpy_dtype(io.input.dtype)

    # construction -------------------------------------------------------------------------
    @classmethod
    def from_bundle(
        cls,
        bundle: Bundle,
        artifact: str | None = None,
        *,
        options: RunnerOptions | None = None,
        thresholds: Thresholds | None = None,
        imgsz: tuple[int, int] | None = None,
        batch: int = 8,
        model_bytes: bytes | None = None,
    ) -> Predictor:
        """Create a predictor for an artifact of a bundle (not loaded until first use).

        Args:
            bundle: The bundle.
            artifact: Artifact id; default: the bundle's recommended one, else the first
                available in :data:`FORMAT_PREFERENCE` order.
            options: Runner options; default: the recommended configuration's when the
                recommended artifact is used.
            thresholds: Post-processing overrides.
            imgsz: Input size override (dynamic-size artifacts only).
            batch: Largest batch per inference call.
            model_bytes: Model content in memory; default: what the bundle's loader gives
                (:meth:`~cvdeploy.bundle.Bundle.model_files`: an encrypted artifact decrypted
                in memory when the bundle was loaded with its key, never written to disk).
        """
        art = select_artifact(bundle, artifact)
        rec = bundle.manifest.recommended
        if options is None and rec is not None and rec.artifact == art.id:
            ro = rec.options
            options = RunnerOptions(threads=ro.threads, device=ro.device, extra=dict(ro.extra))
        files = (
            bundle.model_files(art)
            if model_bytes is None
            else ModelFiles(bundle.model_file(art, encrypted_ok=True), model_bytes)
        )
        runner = create_runner(
            art.format,
            files.path,
            art.io,
            options=options,
            model_bytes=files.model_bytes,
            weights_bytes=files.weights_bytes,
            inference_precision=art.runtime_precision,
        )
        return cls(
            spec=bundle.spec,
            runner=runner,
            artifact_id=art.id,
            thresholds=thresholds or Thresholds(),
            imgsz=imgsz,
            batch=batch,
        )

    def __enter__(self) -> Predictor:
        self.runner.load()
        return self

    def __exit__(self, *exc: object) -> None:
        self.runner.close()

    # stages -------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[ResizeMeta]]:
        """Resize and normalise images (BGR uint8) into one input batch."""
        pp = self.spec.preprocess
        assert self.imgsz is not None
        resized, metas = [], []
        for img in images:
            r, m = resize_image(
                img, self.imgsz, mode=pp.resize, align=pp.align, pad_value=pp.pad_value
            )
            resized.append(r)
            metas.append(m)
        gray = pp.color == "gray"
        x = to_tensor(
            resized,
            color="rgb" if pp.color == "gray" else pp.color,
            scale=pp.scale,
            mean=pp.mean,
            std=pp.std,
            layout=self.runner.io.layout,
            dtype=self._dtype,
            grayscale=gray,
        )
        return x, metas

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        """Run the model on a preprocessed batch, padding a short batch for fixed-batch models."""
        n = x.shape[0]
        fixed = self.runner.io.fixed_batch
        if fixed is not None and n < fixed:
            pad = np.zeros((fixed - n, *x.shape[1:]), dtype=x.dtype)
            return [o[:n] for o in self.runner.run(np.concatenate([x, pad]))]
        return self.runner.run(x)

    def postprocess(
        self,
        outputs: list[np.ndarray],
        metas: Sequence[ResizeMeta],
        *,
        thresholds: Thresholds | None = None,
    ) -> list[Result]:
        """Decode raw outputs into results in original-image coordinates.

        Args:
            outputs: The model's raw outputs for the batch.
            metas: How each image was resized.
            thresholds: Overrides for this call (default: :attr:`thresholds`).
        """
        dec = self.spec.decoder
        head = get_head(dec.kind)
        assert self.imgsz is not None
        extra = head.decode_args(dec, input_hw=(self.imgsz[0], self.imgsz[1]))
        out = outputs[0].astype(np.float32, copy=False)
        if self.spec.task == "classify":
            return list(head.decode(out, **extra))
        t = self.thresholds if thresholds is None else thresholds
        kw: dict[str, Any] = {
            "conf": dec.conf if t.conf is None else t.conf,
            "iou": dec.iou if t.iou is None else t.iou,
            "max_det": dec.max_det if t.max_det is None else t.max_det,
            "multi_label": t.multi_label,
            "agnostic": dec.agnostic if t.agnostic is None else t.agnostic,
        }
        dets: list[Detections] = head.decode(out, **kw, **extra)
        return [
            Detections(
                boxes=scale_boxes(d.boxes, m).astype(np.float32),
                scores=d.scores,
                class_ids=d.class_ids,
            )
            for d, m in zip(dets, metas, strict=True)
        ]

    # calls --------------------------------------------------------------------------------
    def run_batch(
        self,
        images: Sequence[np.ndarray],
        *,
        thresholds: Thresholds | Sequence[Thresholds] | None = None,
        keep_outputs: bool = False,
        check_outputs: Callable[[list[np.ndarray]], None] | None = None,
    ) -> BatchRun:
        """Run one batch through preprocess -> inference -> postprocess, timing each stage.

        The one stage loop of predict, eval, bench, serve, the parity gate and calibration.

        Args:
            images: At most :attr:`batch` images (BGR uint8).
            thresholds: Post-processing overrides: one for the whole batch, or one per
                image (images with different thresholds share preprocessing and
                inference); default: :attr:`thresholds`.
            keep_outputs: Keep the raw model outputs in the result.
            check_outputs: Called with the raw outputs before they are decoded (untimed);
                raise to stop (the parity gate compares them with its source's there).

        Returns:
            The results in image order, the stage times and (when asked) the raw outputs.

        Raises:
            UsageError: More images than :attr:`batch`, or a thresholds list whose length
                differs from the number of images.
        """
        if not images:
            return BatchRun(results=[], times=StageTimes(), outputs=[] if keep_outputs else None)
        n = len(images)
        if n > self.batch:
            raise UsageError(f"batch of {n} images exceeds {self.batch}")
        groups = _threshold_groups(thresholds, n)
        t0 = time.perf_counter()
        x, metas = self.preprocess(images)
        t1 = time.perf_counter()
        outs = self.infer(x)
        t2 = time.perf_counter()
        t_post = t2
        if check_outputs is not None:
            check_outputs(outs)
            t_post = time.perf_counter()
        if len(groups) == 1:
            results = self.postprocess(outs, metas, thresholds=next(iter(groups)))
        else:
            by_image: dict[int, Result] = {}
            for t, idx in groups.items():
                part = self.postprocess(
                    [o[idx] for o in outs], [metas[i] for i in idx], thresholds=t
                )
                by_image.update(zip(idx, part, strict=True))
            results = [by_image[i] for i in range(n)]
        t3 = time.perf_counter()
        times = StageTimes(
            (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t_post) * 1e3, images=n, batches=1
        )
        return BatchRun(results=results, times=times, outputs=outs if keep_outputs else None)

    def predict_batch(self, images: Sequence[np.ndarray]) -> tuple[list[Result], StageTimes]:
        """Predict one batch (at most :attr:`batch` images), timing each stage."""
        run = self.run_batch(images)
        return run.results, run.times

    def predict(self, images: Sequence[np.ndarray]) -> tuple[list[Result], StageTimes]:
        """Predict any number of images, in batches of :attr:`batch`."""
        results: list[Result] = []
        total = StageTimes()
        for chunk in _chunks(images, self.batch):
            r, t = self.predict_batch(chunk)
            results.extend(r)
            total.add(t)
        return results, total

    def stream(self, images: Iterable[np.ndarray]) -> Iterator[tuple[list[Result], StageTimes]]:
        """Predict an iterable lazily, one batch at a time."""
        buf: list[np.ndarray] = []
        for img in images:
            buf.append(img)
            if len(buf) == self.batch:
                yield self.predict_batch(buf)
                buf = []
        if buf:
            yield self.predict_batch(buf)


def _threshold_groups(
    thresholds: Thresholds | Sequence[Thresholds] | None, n: int
) -> dict[Thresholds | None, list[int]]:
    """The images of a batch grouped by their thresholds (``None``: the predictor's)."""
    if thresholds is None or isinstance(thresholds, Thresholds):
        return {thresholds: list(range(n))}
    if len(thresholds) != n:
        raise UsageError(f"{len(thresholds)} thresholds given for a batch of {n} images")
    groups: dict[Thresholds | None, list[int]] = {}
    for i, t in enumerate(thresholds):
        groups.setdefault(t, []).append(i)
    return groups


def _static_hw(io: IOSpec) -> tuple[int, int] | None:
    shape = io.input.shape
    hw = shape[2:4] if io.layout == "NCHW" else shape[1:3]
    if len(hw) != 2 or -1 in hw:
        return None
    return int(hw[0]), int(hw[1])


def _chunks(seq: Sequence[np.ndarray], n: int) -> Iterator[Sequence[np.ndarray]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def select_artifact(bundle: Bundle, artifact: str | None) -> Artifact:
    """Resolve an artifact id: explicit, else recommended, else by format preference.

    Raises:
        UsageError: The id is unknown.
        BackendUnavailable: No artifact of the bundle can run here.
    """
    if artifact not in (None, "auto"):
        return bundle.artifact(str(artifact))
    arts = bundle.manifest.artifacts
    if not arts:
        raise SpecError(
            f"bundle {bundle.name!r} has no artifacts",
            hint="add one with `cvdeploy export` or `cvdeploy import`",
        )
    rec = bundle.manifest.recommended
    if rec is not None and any(a.id == rec.artifact for a in arts):
        return bundle.artifact(rec.artifact)
    reasons = []
    for fmt in FORMAT_PREFERENCE:
        for a in arts:
            if a.format != fmt:
                continue
            av = RUNTIMES.availability(fmt) if fmt in RUNTIMES.names() else None
            if av is not None and av.available:
                return a
            reasons.append(f"{a.id}: {av.reason if av else 'no runtime registered'}")
    raise BackendUnavailable(
        f"no artifact of bundle {bundle.name!r} can run here: " + "; ".join(reasons)
    )
