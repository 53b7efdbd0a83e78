"""Drift between a reference set and production images, with calibrated false alarms.

The **reference summary** holds, for up to a few hundred validation images, the per-image
statistics of :mod:`cvdeploy.diagnose.features` (image properties, the artifact's
predictions) and the model's own embeddings (the pooled output of a backbone layer,
projected on their first principal components). ``cvdeploy eval`` records it in the bundle
(:func:`record_reference`: ``reference/*.npz`` plus a ``reference`` check on the artifact);
``cvdeploy doctor`` and the server's rolling check compare production windows with it
(:func:`compare`).

:func:`compare` runs four families of tests (see :mod:`cvdeploy.diagnose.stats`): KS per
statistic (Holm), the predicted-class mix (image permutation), MMD on the embeddings (or
on the image properties when there are none) and a classifier two-sample test, with
``alpha`` split between the families (Bonferroni), so that a window drawn from the
reference's own distribution raises an alarm with probability at most ``alpha``. When
nothing is rejected and the window is too small to detect a moderate shift, the verdict is
``too small to tell``, with the window size that would be needed.
"""

from __future__ import annotations

import io
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cvdeploy.bundle import Artifact, Bundle, Check, ReferenceData, sha256_file
from cvdeploy.data.io import decode_image_bytes, read_image
from cvdeploy.diagnose.features import (
    IMAGE_FEATURES,
    FeatureTable,
    image_features,
    prediction_features,
    result_features,
)
from cvdeploy.diagnose.stats import (
    TestResult,
    c2st,
    class_mix_test,
    ks_family,
    ks_min_detectable,
    mmd_test,
    window_needed,
)
from cvdeploy.diagnose.taps import TappedModel, embedding_point, pool, tappable
from cvdeploy.errors import InputError, IntegrityError, UsageError
from cvdeploy.pipeline import Predictor, Thresholds
from cvdeploy.progress import track

ALPHA = 0.05
MIN_WINDOW = 20
"""Below this many images a window is always "too small to tell" unless a test rejects."""
MODERATE_KS = 0.3
"""The KS distance of a moderate shift (about 0.75 standard deviations of a normal's mean)."""
EMBEDDING_DIMS = 32
REFERENCE_DIR = "reference"
FEATURE_SIDE = 640
"""Longest side of the canonical copy pixel statistics are computed on (capped by the
model input's longer side)."""


# decoding ---------------------------------------------------------------------------------------
def jpeg_reduction(size: tuple[int, int], fit: tuple[int, int]) -> int:
    """The JPEG decode scale the server uses (``cvdeploy.serve.inputs.jpeg_reduction``):
    the largest ``1/f`` (8, 4, 2) whose shorter side still covers the model input's
    longer side. Statistics of production and reference images are computed on images
    decoded by the same rule, so that the server's reduced decode is not taken for drift."""
    need = max(fit)
    for f in (8, 4, 2):
        if min(size) // f >= need:
            return f
    return 1


_REDUCED = {
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def decode_for_features(
    data: bytes, fit: tuple[int, int], *, source: str = "<bytes>"
) -> tuple[np.ndarray, tuple[int, int], int]:
    """Decode an image as the server would for the model input ``fit`` (height, width).

    Returns:
        The image (BGR), the original ``(width, height)`` and the reduction used.

    Raises:
        ImageDecodeError: The bytes are not a decodable image.
    """
    f = 1
    size: tuple[int, int] | None = None
    if data[:2] == b"\xff\xd8":
        try:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                size = im.size
                orient = im.getexif().get(0x0112)
            if orient not in (5, 6, 7, 8):
                f = jpeg_reduction(size, fit)
        except Exception:  # an unreadable header: the full decode reports the problem
            f = 1
    if f > 1 and size is not None:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED[f])
        if img is not None and img.ndim == 3:
            return img, size, f
    img = decode_image_bytes(data, source=source)
    return img, (int(img.shape[1]), int(img.shape[0])), 1


def feature_side(fit: tuple[int, int]) -> int:
    """The canonical side for a model input size."""
    return min(FEATURE_SIDE, max(fit))


# collecting statistics --------------------------------------------------------------------------
@dataclass(slots=True)
class ImageSource:
    """One image to summarise: a file, or bytes and/or a decoded image already in memory.

    Attributes:
        id: A name for evidence (the file name).
        path: The file (read when ``data`` is not given).
        data: The encoded bytes.
        image: The decoded image (``data`` is still used for the JPEG quality).
        size: Original ``(width, height)`` of a reduced ``image``.
        result: A prediction already made (a logged request); the model is then not run,
            unless embeddings are asked for.
    """

    id: str
    path: Path | None = None
    data: bytes | None = None
    image: np.ndarray | None = None
    size: tuple[int, int] | None = None
    result: Any = None


def sources_from_paths(paths: Iterable[Path]) -> list[ImageSource]:
    """Image sources for files."""
    return [ImageSource(id=p.name, path=p) for p in paths]


def _load(
    src: ImageSource, fit: tuple[int, int]
) -> tuple[np.ndarray, bytes | None, tuple[int, int]]:
    if src.image is not None:
        size = src.size or (int(src.image.shape[1]), int(src.image.shape[0]))
        return src.image, src.data, size
    data = src.data
    if data is None and src.path is not None:
        try:
            data = src.path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read image {src.path}: {exc}") from exc
    if data is None:
        raise InputError(f"image {src.id} has neither a file nor bytes")
    img, size, _ = decode_for_features(data, fit, source=str(src.path or src.id))
    return img, data, size


def _embedding_artifact(bundle: Bundle, artifact: Artifact) -> Artifact | None:
    """The artifact embeddings are tapped from: this one when it can be tapped, else a
    float artifact of the bundle that can (encrypted ones only with the bundle's loader)."""
    for a in (artifact, *(a for a in bundle.manifest.artifacts if a.precision == "fp32")):
        if tappable(a) and (a.encryption is None or bundle.loader is not None):
            return a
    return None


def collect(
    bundle: Bundle,
    sources: Sequence[ImageSource],
    *,
    artifact: str | None = None,
    embeddings: bool = True,
    embedding_layer: str | None = None,
    progress: bool = False,
    threads: int | None = None,
    label: str = "summarising images",
) -> tuple[FeatureTable, dict[str, Any]]:
    """Per-image statistics of images through one artifact: image properties, predictions
    at the spec's default confidence threshold and (when the bundle has an ONNX or OpenVINO
    artifact) pooled embeddings.

    Args:
        bundle: The bundle.
        sources: The images.
        artifact: The artifact whose predictions are summarised (default: the predictor's
            choice, the recommended one).
        embeddings: Tap an embedding layer.
        embedding_layer: The layer to pool (default: :func:`embedding_point`'s choice).
        progress: Show a progress bar.
        threads: Runtime threads.
        label: Progress bar label.

    Returns:
        The table and what was used (artifact, embedding artifact and layer, threshold).

    Raises:
        InputError: No images, or an image cannot be read.
    """
    if not sources:
        raise InputError(
            "no images to summarise", hint="give a folder of images or a dataset with images"
        )
    spec = bundle.spec
    pred = Predictor.from_bundle(bundle, artifact, batch=1, thresholds=Thresholds())
    assert pred.imgsz is not None
    fit = (int(pred.imgsz[0]), int(pred.imgsz[1]))
    side = feature_side(fit)
    conf = spec.decoder.conf
    names = (*IMAGE_FEATURES, *prediction_features(spec.task))
    emb_art = _embedding_artifact(bundle, bundle.artifact(pred.artifact_id)) if embeddings else None
    tapped: TappedModel | None = None
    emb_key: str | None = None
    emb_pred = pred
    shared = emb_art is not None and emb_art.id == pred.artifact_id
    if emb_art is not None and not shared:
        emb_pred = Predictor.from_bundle(bundle, emb_art.id, batch=1, imgsz=pred.imgsz)
    rows: list[np.ndarray] = []
    classes: list[np.ndarray] = []
    embs: list[np.ndarray] = []
    ids: list[str] = []
    with pred:
        if emb_art is not None:
            tapped = TappedModel(bundle, emb_art, threads=threads)
            first_img, _, _ = _load(sources[0], fit)
            x0, _ = emb_pred.preprocess([first_img])
            shapes = tapped.shapes(x0) if embedding_layer is None else {}
            keys = {p.key for p in tapped.points}
            if embedding_layer is not None and embedding_layer not in keys:
                raise UsageError(
                    f"layer {embedding_layer!r} is not a compute layer of {emb_art.id}",
                    hint="leave --embedding-layer out to let cvdeploy choose",
                )
            emb_key = embedding_layer or embedding_point(tapped.points, shapes).key
            tapped.close()
            tapped = TappedModel(bundle, emb_art, only=[emb_key], threads=threads)
            tapped.load()
        try:
            for src in track(sources, total=len(sources), description=label, enabled=progress):
                img, data, size = _load(src, fit)
                feats = image_features(img, data=data, size=size, side=side)
                res = src.result
                res_size = size  # a logged result is in the original image's coordinates
                if tapped is not None and emb_key is not None:
                    x, metas = emb_pred.preprocess([img])
                    outs, taps = tapped.run_all(x)
                    embs.append(pool(taps[emb_key])[0])
                    if res is None and shared:  # one inference for both
                        res = pred.postprocess(outs, metas)[0]
                        res_size = (int(img.shape[1]), int(img.shape[0]))
                if res is None:
                    res = pred.run_batch([img]).results[0]
                    res_size = (int(img.shape[1]), int(img.shape[0]))
                pf, cc = result_features(
                    res, conf=conf, num_classes=spec.num_classes, image_size=res_size
                )
                rows.append(np.concatenate([feats, pf]))
                classes.append(cc)
                ids.append(src.id)
        finally:
            if tapped is not None:
                tapped.close()
    table = FeatureTable(
        names=names,
        values=np.stack(rows),
        classes=np.stack(classes),
        embeddings=np.stack(embs) if embs else None,
        ids=ids,
    )
    used = {
        "artifact": pred.artifact_id,
        "embedding_artifact": None if emb_art is None else emb_art.id,
        "embedding_layer": emb_key,
        "conf": conf,
        "inference_precision": pred.runner.effective_precision,
    }
    return table, used


# the reference summary --------------------------------------------------------------------------
@dataclass(slots=True)
class ReferenceSummary:
    """A reference set's statistics (see the module docstring).

    Attributes:
        table: Per-image statistics; ``table.embeddings`` are projected on the reference's
            own principal components (for display: the drift tests do not use them).
        pca_mean: Mean the embeddings were centred with (``None``: no embeddings).
        pca_components: ``(dims, channels)`` projection of the embeddings.
        meta: Artifact, dataset, embedding layer, threshold, images, created.
        raw_embeddings: ``(images, channels)`` unprojected embeddings. :func:`compare`
            fits its projection on the reference and the window together (a projection
            fitted on the reference alone makes the two samples unequal under "no
            shift"); a summary recorded without them (older versions) is compared on the
            image statistics only.
    """

    table: FeatureTable
    pca_mean: np.ndarray | None = None
    pca_components: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    raw_embeddings: np.ndarray | None = None

    @property
    def has_embeddings(self) -> bool:
        """Whether windows can be compared on the model's embeddings."""
        return self.raw_embeddings is not None and len(self.raw_embeddings) >= 2

    def project(self, emb: np.ndarray | None) -> np.ndarray | None:
        """Raw embeddings projected like the reference's (for display)."""
        if emb is None or self.pca_mean is None or self.pca_components is None:
            return None
        if emb.shape[1] != self.pca_mean.shape[0]:
            return None
        out: np.ndarray = (emb - self.pca_mean) @ self.pca_components.T
        return out

    @classmethod
    def from_table(cls, table: FeatureTable, meta: dict[str, Any]) -> ReferenceSummary:
        """Fit the embedding projection on the table's raw embeddings (kept too)."""
        mean = comps = None
        projected = raw = None
        if table.embeddings is not None and len(table.embeddings) >= 2:
            e = table.embeddings.astype(np.float64)
            raw = e
            mean, comps = pca_fit(e)
            projected = (e - mean) @ comps.T
        t = FeatureTable(
            names=table.names,
            values=table.values,
            classes=table.classes,
            embeddings=projected,
            ids=table.ids,
        )
        return cls(t, mean, comps, dict(meta), raw)

    def save(self, path: Path) -> None:
        """Write the summary as ``.npz``."""
        import json

        arrays: dict[str, np.ndarray] = {
            # float64: a statistic stored rounded would never tie with the same value of a
            # window (a KS test would see every JPEG quality or aspect ratio as moved)
            "values": self.table.values.astype(np.float64),
            "classes": self.table.classes.astype(np.float32),
            "names": np.array(self.table.names),
            "ids": np.array(self.table.ids),
            "meta": np.array(json.dumps(self.meta)),
        }
        if self.table.embeddings is not None and self.pca_mean is not None:
            arrays["embeddings"] = self.table.embeddings.astype(np.float32)
            arrays["pca_mean"] = self.pca_mean.astype(np.float32)
            assert self.pca_components is not None
            arrays["pca_components"] = self.pca_components.astype(np.float32)
        if self.raw_embeddings is not None:
            arrays["raw_embeddings"] = self.raw_embeddings.astype(np.float32)
        with path.open("wb") as f:
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> ReferenceSummary:
        """Read a summary written by :meth:`save`."""
        import json

        with np.load(path, allow_pickle=False) as z:
            emb = z["embeddings"].astype(np.float64) if "embeddings" in z else None
            table = FeatureTable(
                names=tuple(str(n) for n in z["names"]),
                values=z["values"].astype(np.float64),
                classes=z["classes"].astype(np.float64),
                embeddings=emb,
                ids=[str(i) for i in z["ids"]],
            )
            return cls(
                table,
                z["pca_mean"].astype(np.float64) if "pca_mean" in z else None,
                z["pca_components"].astype(np.float64) if "pca_components" in z else None,
                json.loads(str(z["meta"])),
                z["raw_embeddings"].astype(np.float64) if "raw_embeddings" in z else None,
            )


def pca_fit(e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the first (at most :data:`EMBEDDING_DIMS`) principal components of rows."""
    mean = e.mean(0)
    _, sv, vt = np.linalg.svd(e - mean, full_matrices=False)
    useful = int((sv > 1e-3 * sv[0]).sum()) if sv.size and sv[0] > 0 else 0
    comps = vt[: max(1, min(EMBEDDING_DIMS, useful, len(e) - 1))]
    return mean, comps


def pooled_projection(ref: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both samples projected on the principal components of the *pooled* sample.

    The projection is a function of the pooled sample only (not of which rows are the
    reference's), so permuting rows between the samples leaves it unchanged and the
    permutation tests stay exact under "no shift". A projection fitted on the reference
    alone concentrates the reference's variance on its components (an in-sample fit) while
    the window's is not: with few reference images, a shift no matter the data.
    """
    r = np.asarray(ref, np.float64)
    w = np.asarray(window, np.float64)
    z = np.concatenate([r, w])
    ok = np.all(np.isfinite(z), axis=0)
    z = z[:, ok]
    mean, comps = pca_fit(z)
    p = (z - mean) @ comps.T
    return p[: len(r)], p[len(r) :]


def dataset_images(
    bundle: Bundle, data: Path | str, *, split: str = "val", images: Path | None = None
) -> list[Path]:
    """The image files of a labelled dataset (detection yaml/json, classification tree) or
    of a plain folder.

    Raises:
        DatasetError: Nothing usable was found.
    """
    from cvdeploy.data import list_images, load_classification_dataset, load_detection_dataset

    p = Path(data)
    if p.is_dir() and not any(p.glob("*.yaml")) and bundle.spec.task == "detect":
        return list_images([p])
    if bundle.spec.task == "classify":
        return [it.path for it in load_classification_dataset(p, split=split).items]
    return [it.path for it in load_detection_dataset(p, split=split, images=images).items]


def _spread(paths: Sequence[Path], n: int) -> list[Path]:
    if len(paths) <= n:
        return list(paths)
    idx = np.linspace(0, len(paths) - 1, n).round().astype(int)
    return [paths[i] for i in idx]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "reference"


@dataclass(slots=True)
class ReferenceRecord:
    """What :func:`record_reference` wrote."""

    artifact: str
    name: str
    file: str
    images: int
    embedding_layer: str | None
    seconds: float


def record_reference(
    bundle: Bundle,
    data: Path | str,
    *,
    artifact: str | None = None,
    split: str = "val",
    images: Path | None = None,
    name: str | None = None,
    max_images: int = 300,
    progress: bool = True,
    threads: int | None = None,
) -> ReferenceRecord:
    """Summarise a labelled set's images into the bundle as the drift reference.

    Up to ``max_images`` images (spread evenly over the set) go through the artifact; the
    summary is written to ``reference/<artifact>--<name>.npz`` and recorded as a
    ``reference`` check of the artifact (with the file's sha256).

    Args:
        bundle: The bundle (changed atomically).
        data: The dataset (as ``cvdeploy eval --data``) or a folder of images.
        artifact: The artifact (default: the recommended / first runnable).
        split: Dataset split.
        images: The image folder of a COCO json (default: discovered).
        name: The check's name (default: ``<dataset file stem>:<split>``).
        max_images: Most images summarised.
        progress: Show a progress bar.
        threads: Runtime threads.
    """
    t0 = time.perf_counter()
    paths = _spread(dataset_images(bundle, data, split=split, images=images), max_images)
    table, used = collect(
        bundle,
        sources_from_paths(paths),
        artifact=artifact,
        progress=progress,
        threads=threads,
        label="reference summary",
    )
    label = name or f"{Path(data).stem}:{split}"
    meta = {
        "artifact": used["artifact"],
        "dataset": label,
        "data": str(Path(data).resolve()),
        "images": len(table),
        "embedding_artifact": used["embedding_artifact"],
        "embedding_layer": used["embedding_layer"],
        "conf": used["conf"],
        "task": bundle.spec.task,
    }
    summary = ReferenceSummary.from_table(table, meta)
    rel = f"{REFERENCE_DIR}/{_safe(used['artifact'])}--{_safe(label)}.npz"
    with bundle.edit(
        action="reference", details={"artifact": used["artifact"], "dataset": label}
    ) as edit:
        dst = edit.path_of(rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists():
            dst.unlink()  # may be a hard link to the old bundle's file: never write through it
        summary.save(dst)
        edit.add_check(
            used["artifact"],
            Check(
                kind="reference",
                name=label,
                passed=None,
                data=ReferenceData(
                    file=rel,
                    sha256=sha256_file(dst),
                    size=dst.stat().st_size,
                    images=len(table),
                    data=meta["data"],
                    features=list(table.names),
                    embedding_layer=used["embedding_layer"],
                    embedding_dims=None
                    if summary.pca_components is None
                    else int(summary.pca_components.shape[0]),
                    conf=used["conf"],
                    inference_precision=used["inference_precision"],
                ),
            ),
        )
    return ReferenceRecord(
        artifact=used["artifact"],
        name=label,
        file=rel,
        images=len(table),
        embedding_layer=used["embedding_layer"],
        seconds=time.perf_counter() - t0,
    )


def reference_check(bundle: Bundle, artifact: str | None = None) -> tuple[Artifact, Check] | None:
    """The newest ``reference`` check: of ``artifact`` when it has one, else of any
    artifact (image statistics do not depend on the artifact)."""
    arts = list(bundle.manifest.artifacts)
    if artifact is not None:
        arts.sort(key=lambda a: a.id != artifact)
    best: tuple[Artifact, Check] | None = None
    for a in arts:
        c = a.latest("reference")
        if c is None:
            continue
        if artifact is not None and a.id == artifact:
            return a, c
        if best is None or c.created > best[1].created:
            best = (a, c)
    return best


def load_reference(bundle: Bundle, artifact: str | None = None) -> ReferenceSummary | None:
    """The bundle's drift reference (see :func:`reference_check`), checked against its
    recorded sha256, or ``None`` when none was recorded.

    Raises:
        IntegrityError: The summary file is missing or was altered.
    """
    found = reference_check(bundle, artifact)
    if found is None:
        return None
    art, check = found
    rel = str(check.data.get("file") or "")
    f = bundle.path / rel
    if not rel or not f.is_file():
        raise IntegrityError(
            f"the drift reference of {art.id} ({rel or 'no file'}) is missing from {bundle.path}",
            hint="record it again: `cvdeploy eval BUNDLE --data DATA`",
        )
    if sha256_file(f) != check.data.get("sha256"):
        raise IntegrityError(
            f"the drift reference {rel} was altered: its sha256 does not match bundle.json",
            hint="record it again: `cvdeploy eval BUNDLE --data DATA`",
        )
    ref = ReferenceSummary.load(f)
    ref.meta.setdefault("artifact", art.id)
    ref.meta["check"] = check.name
    return ref


# comparing --------------------------------------------------------------------------------------
@dataclass(slots=True)
class DriftReport:
    """The verdict on one window.

    Attributes:
        verdict: ``drift``, ``no drift detected`` or ``too small to tell``.
        p_value: The smallest family p-value times the number of families (capped at 1):
            ``p_value <= alpha`` exactly when the verdict is ``drift``.
        alpha: The false-alarm rate the tests are calibrated to.
        n_ref: Reference images.
        n_window: Window images.
        tests: Every test run (per-feature KS, class mix, MMD, C2ST).
        families: Per family: its smallest adjusted p-value and whether it rejected.
        min_detectable_ks: Smallest KS distance this window can detect.
        window_needed: Images needed to detect a moderate shift (KS distance
            :data:`MODERATE_KS`), when the window is too small.
        drifted: Names of the statistics and tests that rejected, most significant first.
        seconds: Compute time of the tests.
    """

    verdict: str
    p_value: float
    alpha: float
    n_ref: int
    n_window: int
    tests: list[TestResult]
    families: dict[str, dict[str, Any]]
    min_detectable_ks: float
    window_needed: int | None
    drifted: list[str]
    seconds: float = 0.0
    embeddings: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        from cvdeploy.diagnose.findings import _json_ready

        out: dict[str, Any] = _json_ready(asdict(self))
        return out

    def test(self, name: str) -> TestResult | None:
        """The test with this name (``ks:brightness``, ``mmd``...)."""
        return next((t for t in self.tests if t.name == name), None)


def compare(
    reference: ReferenceSummary,
    window: FeatureTable,
    *,
    alpha: float = ALPHA,
    permutations: int = 500,
    seed: int = 0,
    features: Sequence[str] | None = None,
) -> DriftReport:
    """Test a production window against the reference (see the module docstring).

    Args:
        reference: The reference summary.
        window: The window's statistics (raw embeddings: projected here).
        alpha: Family-wise false-alarm rate of the whole comparison.
        permutations: Permutations of the MMD and class-mix tests.
        seed: Seed of the permutations and the C2ST split (a fixed seed gives the same
            verdict for the same data).
        features: Statistics to test (default: every one both sides have).

    Raises:
        UsageError: The window has no images.
    """
    t0 = time.perf_counter()
    if len(window) == 0:
        raise UsageError("the production window holds no images")
    ref = reference.table
    common = [n for n in ref.names if n in window.names and (features is None or n in features)]
    r_cols = {n: ref.column(n) for n in common}
    w_cols = {n: window.column(n) for n in common}
    r_raw, w_raw = reference.raw_embeddings, window.embeddings
    use_emb = (
        reference.has_embeddings
        and r_raw is not None
        and w_raw is not None
        and len(w_raw) > 0
        and w_raw.shape[1] == r_raw.shape[1]
    )
    img_names = [n for n in common if n in IMAGE_FEATURES]
    if use_emb:
        assert r_raw is not None and w_raw is not None
        # fitted on reference + window: exchangeable under "no shift" (see pooled_projection)
        vec_r, vec_w = pooled_projection(r_raw, w_raw)
    else:
        vec_r = np.stack([r_cols[n] for n in img_names], 1)
        vec_w = np.stack([w_cols[n] for n in img_names], 1)
    families = ["statistics", "mmd", "c2st"]
    has_classes = ref.classes.shape[1] > 0 and ref.classes.sum() > 0 and window.classes.sum() > 0
    if has_classes:
        families.append("class_mix")
    a_f = alpha / len(families)
    tests: list[TestResult] = ks_family(r_cols, w_cols, alpha=a_f)
    fam: dict[str, dict[str, Any]] = {
        "statistics": {
            "p_adjusted": min((t.p_adjusted for t in tests), default=1.0),
            "tests": len(tests),
        }
    }
    mm = mmd_test(vec_r, vec_w, permutations=permutations, seed=seed)
    c2_in_r = (
        np.concatenate([vec_r, np.stack([r_cols[n] for n in img_names], 1)], 1)
        if use_emb
        else vec_r
    )
    c2_in_w = (
        np.concatenate([vec_w, np.stack([w_cols[n] for n in img_names], 1)], 1)
        if use_emb
        else vec_w
    )
    cc = c2st(c2_in_r, c2_in_w, seed=seed)
    cm = (
        class_mix_test(ref.classes, window.classes, permutations=permutations, seed=seed)
        if has_classes
        else None
    )
    for name, t in (("mmd", mm), ("c2st", cc), ("class_mix", cm)):
        if name not in families:
            continue
        if t is None:
            fam[name] = {"p_adjusted": 1.0, "tests": 0}
            continue
        t.p_adjusted = t.p_value
        t.rejected = t.p_value <= a_f
        t.detail["on"] = "embeddings" if name == "mmd" and use_emb else t.detail.get("on", "")
        tests.append(t)
        fam[name] = {"p_adjusted": t.p_value, "tests": 1}
    for v in fam.values():
        v["rejected"] = v["p_adjusted"] <= a_f
        v["alpha"] = a_f
    p_overall = min(1.0, len(families) * min(v["p_adjusted"] for v in fam.values()))
    drifted = [t.name for t in sorted(tests, key=lambda t: t.p_adjusted) if t.rejected]
    n_ks = max(1, sum(1 for t in tests if t.name.startswith("ks:")))
    n_ref = len(ref)
    mdk = ks_min_detectable(n_ref, len(window), alpha=a_f, tests=n_ks)
    needed = None
    if drifted:
        verdict = "drift"
    elif len(window) < MIN_WINDOW or mdk > MODERATE_KS:
        verdict = "too small to tell"
        needed = window_needed(n_ref, distance=MODERATE_KS, alpha=a_f, tests=n_ks)
        if needed is not None:
            needed = max(needed, MIN_WINDOW)
    else:
        verdict = "no drift detected"
    return DriftReport(
        verdict=verdict,
        p_value=p_overall,
        alpha=alpha,
        n_ref=n_ref,
        n_window=len(window),
        tests=tests,
        families=fam,
        min_detectable_ks=mdk if math.isfinite(mdk) else math.inf,
        window_needed=needed,
        drifted=drifted,
        seconds=time.perf_counter() - t0,
        embeddings=use_emb,
    )


def summarize_drift(report: DriftReport, names: Sequence[str] = ()) -> list[str]:
    """Evidence lines for a drift report (the tests that rejected, with their figures)."""
    lines = []
    for t in sorted(report.tests, key=lambda t: t.p_adjusted):
        if not t.rejected:
            continue
        if t.name.startswith("ks:"):
            d = t.detail
            sd = (
                "constant in the reference" if d["shift_sd"] is None else f"{d['shift_sd']:+.2f} SD"
            )
            lines.append(
                f"{d['feature']}: median {d['ref_median']:.3g} -> {d['window_median']:.3g} "
                f"({sd}), KS D={t.statistic:.2f}, p={t.p_adjusted:.2g} (Holm-adjusted)"
            )
        elif t.name == "class_mix":
            moved = ", ".join(
                f"{names[c['class']] if c['class'] < len(names) else c['class']} "
                f"{c['ref_share']:.0%}->{c['window_share']:.0%}"
                for c in t.detail.get("largest_changes", [])[:3]
            )
            lines.append(
                f"predicted-class mix changed (TV {t.statistic:.2f}, p={t.p_value:.2g}): {moved}"
            )
        elif t.name == "mmd":
            on = "the model's embeddings" if report.embeddings else "the image statistics"
            lines.append(f"MMD on {on}: {t.statistic:.3g}, permutation p={t.p_value:.2g}")
        elif t.name == "c2st":
            lines.append(
                f"a classifier tells production from reference images apart: held-out "
                f"accuracy {t.statistic:.0%}, p={t.p_value:.2g}"
            )
    return lines


def images_in(folder: Path) -> list[Path]:
    """Image files in a folder (recursively), sorted.

    Raises:
        InputError: The folder does not exist or holds no image.
    """
    from cvdeploy.data import list_images

    if not folder.exists():
        raise InputError(f"{folder} does not exist", hint="give a folder of production images")
    try:
        found = list_images([folder])
    except Exception as exc:
        raise InputError(f"no images in {folder}: {exc}") from exc
    if not found:
        raise InputError(f"no images in {folder}", hint="give a folder of production images")
    return found


def read_images(paths: Sequence[Path]) -> list[np.ndarray]:
    """Decode image files (full decode)."""
    return [read_image(p) for p in paths]
