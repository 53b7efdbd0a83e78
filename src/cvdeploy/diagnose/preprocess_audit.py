"""Preprocessing audit: is the spec's pipeline the one the model needs, and the one fed?

Two questions, two methods.

**Does a variant of the spec score clearly better?** (:func:`score_variants`) The model runs
on the same images through the spec's pipeline and through plausible variants, one field
changed at a time: colour order, ``/255`` or not, mean/std (none or ImageNet's),
letterbox or stretch, centre or top-left, pad value, interpolation. Each image gets a
score: with labels, the F1 of its detections (top-1 correctness for classifiers); without,
the model's own confidence (the mean of its five best detection scores, or the top-1
probability). A variant is *clearly better* when a one-sided Wilcoxon signed-rank test over
the images rejects at 1% (Holm over the variants) and its mean score is at least 10%
higher. The search is greedy: the best clear winner is applied and the search repeats
(two fields can be wrong at once). On labelled data a winner means the spec is wrong; on
production images only, it means the production images arrive differently (or the spec is
wrong, when no labelled data says otherwise).

**What pipeline produced the inputs actually fed?** (:func:`infer_fed_pipeline`) From
logged model inputs (``.npy`` tensors) or images:

- the value transform: the per-channel ``scale``/``mean``/``std`` under which the values
  map back to integers in 0..255 (resized ``uint8`` pixels are integers; the lattice of
  values gives the transform away);
- padding bands: constant grey rows/columns at the borders give the pad value and where
  the image sits (both sides: centred; bottom/right only: top-left); no band in images
  whose aspect ratio differs from the input's: stretched;
- colour order: the per-image channel means against the reference summary's (a Gaussian
  likelihood ratio of "as the spec says" against "channels swapped"), and, when that is
  not decisive, the model's confidence on the inputs as fed against channel-swapped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from cvdeploy.diagnose.labels import Labelled, match
from cvdeploy.pipeline import Classification, Detections, Predictor, Thresholds
from cvdeploy.pipeline.preprocess import ResizeMeta, resize_image, to_tensor
from cvdeploy.progress import track
from cvdeploy.spec import ModelSpec, Preprocess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
P_CLEAR = 0.01
GAIN_CLEAR = 0.10
TOP_K = 5
SCORE_THRESHOLDS = Thresholds(conf=0.001)
_INTERP = {"nearest": cv2.INTER_NEAREST, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC}


# variants ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Variant:
    """A pipeline: the spec's preprocessing with some fields changed.

    Attributes:
        changes: ``((field, value), ...)`` relative to the spec, e.g. ``(("color", "bgr"),)``.
        preprocess: The resulting preprocessing.
        interp: ``linear`` (cvdeploy's), ``nearest``, ``area`` or ``cubic``.
    """

    changes: tuple[tuple[str, Any], ...]
    preprocess: Preprocess
    interp: str = "linear"

    @property
    def label(self) -> str:
        """E.g. ``color=bgr, scale=1``."""
        return ", ".join(f"{k}={_fmt(v)}" for k, v in self.changes) or "spec"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "1/255" if abs(v - 1 / 255) < 1e-9 else f"{v:g}"
    if isinstance(v, tuple):
        return "(" + ",".join(f"{x:g}" for x in v) + ")"
    return str(v)


def _imagenet(pp: Preprocess) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet's mean/std in the spec's channel order and pixel scale."""
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if pp.color == "bgr":
        mean, std = mean[::-1], std[::-1]
    k = 1.0 / (pp.scale * 255.0)  # scale 1: mean and std in 0..255 units
    return tuple(m / k for m in mean), tuple(s / k for s in std)


def single_changes(pp: Preprocess, *, task: str) -> list[tuple[str, Any]]:
    """The one-field changes worth trying from ``pp``."""
    out: list[tuple[str, Any]] = []
    if pp.color != "gray":
        out.append(("color", "bgr" if pp.color == "rgb" else "rgb"))
    out.append(("scale", 1.0 if pp.scale < 0.5 else 1 / 255))
    trivial = all(m == 0 for m in pp.mean) and all(s == 1 for s in pp.std)
    if pp.color != "gray":
        out.append(("mean_std", "imagenet" if trivial else "none"))
    elif not trivial:
        out.append(("mean_std", "none"))
    if pp.resize == "letterbox":
        out.append(("resize", "stretch"))
        out.append(("align", "top-left" if pp.align == "center" else "center"))
        out.append(("pad_value", 0 if pp.pad_value != 0 else 114))
    elif task == "detect":
        out.append(("resize", "letterbox"))
    out.append(("interp", "area"))
    out.append(("interp", "nearest"))
    return out


def apply_changes(pp: Preprocess, changes: Sequence[tuple[str, Any]]) -> tuple[Preprocess, str]:
    """The preprocessing (and interpolation) with ``changes`` applied in order."""
    upd: dict[str, Any] = {}
    interp = "linear"
    cur = pp
    for k, v in changes:
        if k == "interp":
            interp = str(v)
            continue
        if k == "mean_std":
            if v == "none":
                upd = {"mean": (0.0,) * pp.channels, "std": (1.0,) * pp.channels}
            else:
                m, s = _imagenet(cur)
                upd = {"mean": m, "std": s}
        elif k == "scale":  # the classic slip: /255 forgotten (or added), mean/std kept
            upd = {"scale": float(v)}
        else:
            upd = {k: v}
        cur = cur.model_copy(update=upd)
    return Preprocess.model_validate(cur.model_dump()), interp


def preprocess_variant(
    images: Sequence[np.ndarray],
    pp: Preprocess,
    imgsz: tuple[int, int],
    *,
    interp: str = "linear",
    layout: str = "NCHW",
    dtype: Any = np.float32,
) -> tuple[np.ndarray, list[ResizeMeta]]:
    """Resize and normalise images like :meth:`Predictor.preprocess`, with any
    preprocessing and interpolation."""
    resized, metas = [], []
    for img in images:
        src = img
        if interp != "linear":
            src = _pre_resize(img, pp, imgsz, _INTERP[interp])
        r, m = resize_image(src, imgsz, mode=pp.resize, align=pp.align, pad_value=pp.pad_value)
        if src is not img:  # the mapping back is onto the original image
            sy, sx = img.shape[0] / src.shape[0], img.shape[1] / src.shape[1]
            m = ResizeMeta(
                orig_hw=(img.shape[0], img.shape[1]),
                input_hw=m.input_hw,
                scale=(m.scale[0] / sx, m.scale[1] / sy),
                pad=m.pad,
                mode=m.mode,
            )
        resized.append(r)
        metas.append(m)
    x = to_tensor(
        resized,
        color="rgb" if pp.color == "gray" else pp.color,
        scale=pp.scale,
        mean=pp.mean,
        std=pp.std,
        layout="NHWC" if layout == "NHWC" else "NCHW",
        dtype=dtype,
        grayscale=pp.color == "gray",
    )
    return x, metas


def _pre_resize(img: np.ndarray, pp: Preprocess, imgsz: tuple[int, int], flag: int) -> np.ndarray:
    """Resize with another interpolation to the size the geometry would resize to, so that
    :func:`resize_image` only pads (or crops)."""
    h, w = imgsz
    oh, ow = img.shape[:2]
    if pp.resize == "stretch":
        size = (w, h)
    elif pp.resize == "letterbox":
        r = min(h / oh, w / ow)
        if pp.align == "center":
            size = (max(1, round(ow * r)), max(1, round(oh * r)))
        else:
            size = (max(1, int(ow * r)), max(1, int(oh * r)))
    else:
        return img
    out = cv2.resize(img, size, interpolation=flag)
    if img.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    return out


# scoring -----------------------------------------------------------------------------------------
def _confidence(res: Detections | Classification) -> float:
    if isinstance(res, Classification):
        return float(np.max(res.probs))
    s = np.sort(res.scores)[::-1][:TOP_K]
    return float(np.pad(s, (0, TOP_K - len(s))).mean())


@dataclass(slots=True)
class VariantScore:
    """One variant's scores on the images.

    Attributes:
        variant: Its label (``spec`` for the spec itself).
        changes: The field changes.
        mean: Mean per-image score.
        gain: Relative gain over the spec's mean score.
        p_value: One-sided Wilcoxon p-value (variant better than the spec).
        p_adjusted: Holm-adjusted over the variants of the round.
        clearly_better: See the module docstring.
        metric: ``f1`` or ``top1`` (labelled) or ``confidence``.
        map50_95: mAP50-95 on the images (labelled detection sets).
    """

    variant: str
    changes: list[tuple[str, Any]]
    mean: float
    gain: float = 0.0
    p_value: float = 1.0
    p_adjusted: float = 1.0
    clearly_better: bool = False
    metric: str = "confidence"
    map50_95: float | None = None


@dataclass(slots=True)
class VariantReport:
    """The search: each round's scores and the changes that won."""

    images: int
    metric: str
    rounds: list[list[VariantScore]]
    winner: list[tuple[str, Any]]
    spec_score: float
    best_score: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        from cvdeploy.diagnose.findings import _json_ready

        out: dict[str, Any] = _json_ready(asdict(self))
        return out


def _image_scores(
    pred: Predictor,
    images: Sequence[np.ndarray],
    pp: Preprocess,
    interp: str,
    *,
    labels: Labelled | None,
    idx: Sequence[int],
) -> tuple[np.ndarray, list[Detections | Classification]]:
    assert pred.imgsz is not None
    out: list[float] = []
    results: list[Detections | Classification] = []
    dtype = pred.runner.io.input.dtype
    for k, img in enumerate(images):
        x, metas = preprocess_variant(
            [img],
            pp,
            (int(pred.imgsz[0]), int(pred.imgsz[1])),
            interp=interp,
            layout=pred.runner.io.layout,
            dtype=np.float32 if dtype == "float32" else dtype,
        )
        res = pred.postprocess(pred.infer(x), metas, thresholds=SCORE_THRESHOLDS)[0]
        results.append(res)
        if labels is None:
            out.append(_confidence(res))
        elif isinstance(res, Classification):
            out.append(float(int(np.argmax(res.probs)) == labels.labels[idx[k]]))
        else:
            i = idx[k]
            c = match(
                res,
                labels.boxes[i],
                labels.classes[i],
                conf=pred.spec.decoder.conf,
                num_classes=pred.spec.num_classes,
            )
            out.append(c.f1)
    return np.array(out), results


def _wilcoxon_greater(d: np.ndarray) -> float:
    from scipy.stats import wilcoxon

    if np.allclose(d, 0):
        return 1.0
    try:
        return float(wilcoxon(d, alternative="greater", zero_method="zsplit").pvalue)
    except ValueError:
        return 1.0


def score_variants(
    pred: Predictor,
    images: Sequence[np.ndarray],
    *,
    labels: Labelled | None = None,
    label_index: Sequence[int] = (),
    max_rounds: int = 2,
    progress: bool = False,
) -> VariantReport:
    """Score the spec's pipeline against one-field variants, greedily (module docstring).

    Args:
        pred: A loaded predictor of the artifact (its spec is the one audited).
        images: The images (BGR).
        labels: Their ground truth (``label_index[i]`` is image ``i``'s position in it);
            ``None``: score by the model's confidence.
        max_rounds: Most fields changed together.
        progress: Show a progress bar.
    """
    from cvdeploy.diagnose.stats import holm

    spec: ModelSpec = pred.spec
    metric = "confidence" if labels is None else ("top1" if spec.task == "classify" else "f1")
    idx = list(label_index) if labels is not None else list(range(len(images)))
    chosen: list[tuple[str, Any]] = []
    base_pp, base_interp = spec.preprocess, "linear"
    base, _ = _image_scores(pred, images, base_pp, base_interp, labels=labels, idx=idx)
    spec_mean = float(base.mean())
    rounds: list[list[VariantScore]] = []
    for _ in range(max_rounds):
        cands = [
            c
            for c in single_changes(base_pp, task=spec.task)
            if c[0] not in {k for k, _ in chosen}
            and not (c[0] == "interp" and base_interp != "linear")
        ]
        scores: list[VariantScore] = []
        per: list[np.ndarray] = []
        for ch in track(cands, total=len(cands), description="pipeline variants", enabled=progress):
            changes = [*chosen, ch]
            pp, interp = apply_changes(spec.preprocess, changes)
            s, _ = _image_scores(pred, images, pp, interp, labels=labels, idx=idx)
            per.append(s)
            mean = float(s.mean())
            denom = max(abs(float(base.mean())), 1e-6)
            scores.append(
                VariantScore(
                    variant=Variant(tuple(changes), pp, interp).label,
                    changes=changes,
                    mean=mean,
                    gain=(mean - float(base.mean())) / denom,
                    p_value=_wilcoxon_greater(s - base),
                    metric=metric,
                )
            )
        adj = holm([v.p_value for v in scores])
        for v, p in zip(scores, adj, strict=True):
            v.p_adjusted = p
            v.clearly_better = p <= P_CLEAR and v.gain >= GAIN_CLEAR
        rounds.append(scores)
        winners = [(v, s) for v, s in zip(scores, per, strict=True) if v.clearly_better]
        if not winners:
            break
        best, best_s = max(winners, key=lambda t: t[0].mean)
        chosen = list(best.changes)
        base_pp, base_interp = apply_changes(spec.preprocess, chosen)
        base = best_s
    return VariantReport(
        images=len(images),
        metric=metric,
        rounds=rounds,
        winner=chosen,
        spec_score=spec_mean,
        best_score=float(base.mean()),
    )


# what was fed ------------------------------------------------------------------------------------
@dataclass(slots=True)
class FedField:
    """One inferred field of the pipeline that produced the inputs.

    Attributes:
        field: ``color``, ``scale``, ``mean_std``, ``resize``, ``align``, ``pad_value``.
        fed: What the inputs show (``None``: could not tell).
        spec: What the spec says.
        evidence: Why.
    """

    field: str
    fed: Any
    spec: Any
    evidence: str

    @property
    def differs(self) -> bool:
        """The inputs were made with another value than the spec's."""
        return self.fed is not None and not _same(self.fed, self.spec)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))
        except (TypeError, ValueError):
            return False
    return bool(a == b)


@dataclass(slots=True)
class FedReport:
    """What the production inputs reveal about the pipeline that made them."""

    inputs: int
    kind: str
    fields: list[FedField] = field(default_factory=list)

    @property
    def differences(self) -> list[FedField]:
        """The fields where the inputs disagree with the spec."""
        return [f for f in self.fields if f.differs]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        out = asdict(self)
        out["differences"] = [f.field for f in self.differences]
        from cvdeploy.diagnose.findings import _json_ready

        res: dict[str, Any] = _json_ready(out)
        return res


def _to_hwc(t: np.ndarray, channels: int) -> list[np.ndarray]:
    """Tensors (CHW, HWC, NCHW, NHWC, HW) as a list of HWC float arrays."""
    a = np.asarray(t, dtype=np.float64)
    if a.ndim == 2:
        return [a[:, :, None]]
    if a.ndim == 3:
        a = a[None]
    out = []
    for x in a:
        chw = x.shape[0] in (1, 3, channels) and x.shape[-1] not in (1, 3, channels)
        if chw:
            x = np.transpose(x, (1, 2, 0))
        out.append(x)
    return out


def _transform_candidates(
    pp: Preprocess, channels: int
) -> list[tuple[str, float, tuple[float, ...], tuple[float, ...]]]:
    """``(name, scale, mean, std)`` per tensor channel: the spec's and the usual others."""
    ones, zeros = (1.0,) * channels, (0.0,) * channels
    cands = [("spec", pp.scale, tuple(pp.mean), tuple(pp.std))]
    for scale in (1.0, 1 / 255):
        cands.append((f"scale={_fmt(scale)}", scale, zeros, ones))
        if channels == 3:
            k = 1.0 / (scale * 255.0)
            for order, (m, s) in (
                ("rgb", (IMAGENET_MEAN, IMAGENET_STD)),
                ("bgr", (IMAGENET_MEAN[::-1], IMAGENET_STD[::-1])),
            ):
                cands.append(
                    (
                        f"scale={_fmt(scale)}, imagenet({order})",
                        scale,
                        tuple(x / k for x in m),
                        tuple(x / k for x in s),
                    )
                )
        half = 0.5 if scale < 0.5 else 127.5
        cands.append(
            (
                f"scale={_fmt(scale)}, mean/std {half:g}",
                scale,
                (half,) * channels,
                (half,) * channels,
            )
        )
    # the same arithmetic written two ways ((x/255 - m)/s == (x - 255m)/(255s)) is one
    # candidate, named with the spec's scale when it can be
    cands.sort(key=lambda c: (c[0] != "spec", abs(c[1] - pp.scale) > 1e-12))
    out: list[tuple[str, float, tuple[float, ...], tuple[float, ...]]] = []
    seen: list[np.ndarray] = []
    for c in cands:
        key = np.concatenate([c[1] / np.asarray(c[3]), np.asarray(c[2]) / np.asarray(c[3])])
        if any(np.allclose(key, k, rtol=1e-6, atol=1e-9) for k in seen):
            continue
        seen.append(key)
        out.append(c)
    return out


def _lattice_score(
    x: np.ndarray, scale: float, mean: Sequence[float], std: Sequence[float]
) -> float:
    """Share of values that map back to an integer pixel in 0..255 under the transform."""
    raw = (x * np.asarray(std) + np.asarray(mean)) / scale
    ok = (raw > -0.5) & (raw < 255.5) & (np.abs(raw - np.round(raw)) < 0.02)
    return float(ok.mean())


def _bands(img: np.ndarray) -> tuple[int, int, int, int, float | None]:
    """Rows/columns of constant grey at the top, bottom, left, right, and their value."""
    g = np.round(img).astype(np.int64)
    grey = np.all(g == g[:, :, :1], axis=2) if g.shape[2] > 1 else np.ones(g.shape[:2], bool)
    v = g[:, :, 0]

    def run(lines: np.ndarray, gmask: np.ndarray) -> tuple[int, float | None]:
        n, val = 0, None
        for row, gm in zip(lines, gmask, strict=True):
            if not gm.all() or np.ptp(row) != 0:
                break
            if val is None:
                val = float(row[0])
            elif row[0] != val:
                break
            n += 1
        return n, val

    t, vt = run(v, grey)
    b, vb = run(v[::-1], grey[::-1])
    left, vl = run(v.T, grey.T)
    r, vr = run(v.T[::-1], grey.T[::-1])
    vals = [x for x, n in ((vt, t), (vb, b), (vl, left), (vr, r)) if x is not None and n >= 2]
    h, w = v.shape
    if t >= h or left >= w:  # a blank image
        return 0, 0, 0, 0, None
    return t, b, left, r, (max(set(vals), key=vals.count) if vals else None)


def infer_fed_pipeline(
    samples: Sequence[np.ndarray],
    spec: ModelSpec,
    *,
    kind: str,
    reference_means: np.ndarray | None = None,
    reference_aspects: np.ndarray | None = None,
    pred: Predictor | None = None,
) -> FedReport:
    """Infer the pipeline that produced production inputs (module docstring).

    Args:
        samples: Model inputs as fed (``kind="tensor"``: float arrays, CHW/HWC/NCHW) or
            images as received (``kind="image"``: BGR ``uint8``).
        spec: The bundle's spec.
        reference_means: ``(n, 3)`` per-image channel means of the reference images, in the
            order OpenCV reads them (B, G, R).
        reference_aspects: Width / height of the reference images.
        pred: A loaded predictor, for the model-based colour check.
    """
    pp = spec.preprocess
    ch = pp.channels
    rep = FedReport(inputs=len(samples), kind=kind)
    if not samples:
        return rep
    if kind == "tensor":
        arrays = [a for s in samples for a in _to_hwc(s, ch)]
        flat = np.concatenate(
            [a.reshape(-1, a.shape[2])[:: max(1, a.size // 60000)] for a in arrays]
        )
        best = max(
            _transform_candidates(pp, arrays[0].shape[2]),
            key=lambda c: _lattice_score(flat, c[1], c[2], c[3]),
        )
        lattice = _lattice_score(flat, best[1], best[2], best[3])
        name, scale, mean, std = best
        if lattice < 0.5:  # no integer lattice (resized in float): fall back on the range
            name, scale, mean, std = "spec", pp.scale, tuple(pp.mean), tuple(pp.std)
            why = f"no integer pixel lattice ({lattice:.0%} of values): assuming the spec's"
            rep.fields.append(FedField("scale", None, pp.scale, why))
        else:
            why = f"{lattice:.1%} of values map back to integer pixels under {name}"
            rep.fields.append(FedField("scale", scale, pp.scale, why))
            spec_trivial = all(m == 0 for m in pp.mean) and all(s == 1 for s in pp.std)
            fed_trivial = all(m == 0 for m in mean) and all(s == 1 for s in std)
            ms_same = (spec_trivial and fed_trivial) or (
                not spec_trivial
                and np.allclose(np.asarray(mean) / scale, np.asarray(pp.mean) / pp.scale, atol=0.5)
                and np.allclose(np.asarray(std) / scale, np.asarray(pp.std) / pp.scale, rtol=0.01)
            )
            fed_ms = "spec" if ms_same else ("none" if fed_trivial else name.split(", ", 1)[-1])
            rep.fields.append(FedField("mean_std", fed_ms, "spec", why))
        raws = [
            (a * np.asarray(std)[None, None, :] + np.asarray(mean)[None, None, :]) / scale
            for a in arrays
        ]
    else:
        raws = [
            s.astype(np.float64) if s.ndim == 3 else s.astype(np.float64)[:, :, None]
            for s in samples
        ]
    _geometry(rep, raws, spec, kind=kind, reference_aspects=reference_aspects)
    if ch == 3:
        _colour(
            rep, raws, spec, kind=kind, reference_means=reference_means, pred=pred, samples=samples
        )
    return rep


def _geometry(
    rep: FedReport,
    raws: Sequence[np.ndarray],
    spec: ModelSpec,
    *,
    kind: str,
    reference_aspects: np.ndarray | None,
) -> None:
    pp = spec.preprocess
    bands = [_bands(r) for r in raws]
    banded = [b for b in bands if b[4] is not None and max(b[:4]) >= 2]
    share = len(banded) / len(bands)
    h, w = spec.imgsz
    model_aspect = w / h
    expect_bands = None
    if reference_aspects is not None and len(reference_aspects):
        expect_bands = float(
            np.mean(np.abs(np.asarray(reference_aspects) / model_aspect - 1) > 0.02)
        )
    if kind == "image":
        aspects = np.array([r.shape[1] / r.shape[0] for r in raws])
        at_model = float(np.mean(np.abs(aspects / model_aspect - 1) <= 0.01))
    else:
        at_model = 1.0
    fed_resize: str | None
    if share >= 0.3:
        fed_resize = "letterbox" if kind == "tensor" else "letterboxed"
        why = f"{len(banded)} of {len(bands)} inputs have constant grey padding bands"
    elif kind == "tensor" and (expect_bands is None or expect_bands >= 0.3):
        fed_resize = "stretch"
        why = f"no padding band in {len(bands)} inputs" + (
            f", while {expect_bands:.0%} of the reference images have another aspect "
            "ratio than the input (a letterbox would pad them)"
            if expect_bands is not None
            else ""
        )
    elif kind == "image" and at_model >= 0.9 and (expect_bands or 0) >= 0.3:
        fed_resize = "stretched"
        why = (
            f"{at_model:.0%} of the images arrive at the model's aspect ratio {w}x{h} without "
            f"padding, while {expect_bands:.0%} of the reference images have another: they "
            "are resized (stretched) before they are sent"
        )
    else:
        fed_resize = None if kind == "tensor" else "as sent"
        why = "no padding band" + (
            ", and nothing to compare the aspect ratios with" if kind == "tensor" else ""
        )
    if fed_resize == "letterboxed":
        why += ": the images arrive already letterboxed (the server letterboxes them again)"
    rep.fields.append(
        FedField("resize", fed_resize, pp.resize if kind == "tensor" else "as sent", why)
    )
    if fed_resize not in ("letterbox", "letterboxed"):
        return
    votes = {"center": 0, "top-left": 0}
    for t, b, left, r, _ in banded:
        if (t >= 2 and b >= 2 and abs(t - b) <= 1) or (left >= 2 and r >= 2 and abs(left - r) <= 1):
            votes["center"] += 1
        elif t <= 1 and left <= 1 and (b >= 2 or r >= 2):
            votes["top-left"] += 1
    align = max(votes, key=lambda k: votes[k]) if any(votes.values()) else None
    rep.fields.append(
        FedField(
            "align",
            align,
            pp.align,
            f"bands on both sides in {votes['center']} inputs, only at the bottom/right in "
            f"{votes['top-left']}",
        )
    )
    vals = [b[4] for b in banded if b[4] is not None]
    pad = int(max(set(vals), key=vals.count)) if vals else None
    rep.fields.append(
        FedField(
            "pad_value",
            pad,
            pp.pad_value,
            f"the bands' grey level is {pad} in {vals.count(pad)} of {len(vals)} inputs"
            if pad is not None
            else "no band value",
        )
    )


def _colour(
    rep: FedReport,
    raws: Sequence[np.ndarray],
    spec: ModelSpec,
    *,
    kind: str,
    reference_means: np.ndarray | None,
    pred: Predictor | None,
    samples: Sequence[np.ndarray],
) -> None:
    pp = spec.preprocess
    # the channel order the inputs are expected in (images as sent: BGR, as OpenCV reads)
    expected = pp.color if kind == "tensor" else "bgr"
    means = []
    for r in raws:
        t, b, left, rr, _ = _bands(r)
        core = r[t : r.shape[0] - b, left : r.shape[1] - rr]
        if core.size == 0:
            core = r
        means.append(core.reshape(-1, 3).mean(0))
    m = np.array(means)
    llr = None
    why = ""
    if reference_means is not None and len(reference_means) >= 10:
        ref = np.asarray(reference_means, dtype=np.float64)  # B, G, R
        if expected == "rgb":
            ref = ref[:, ::-1]
        mu = ref.mean(0)
        cov = np.cov(ref.T) + np.eye(3) * 1.0
        inv = np.linalg.inv(cov)

        def ll(x: np.ndarray) -> float:
            d = x - mu
            return float(-0.5 * np.einsum("ij,jk,ik->i", d, inv, d).sum())

        llr = ll(m[:, ::-1]) - ll(m)
        why = (
            f"channel means against the reference: log-likelihood ratio {llr:+.1f} for "
            f"swapped channels"
        )
    decided: str | None = None
    if llr is not None and abs(llr) >= math.log(1000):
        decided = ("bgr" if expected == "rgb" else "rgb") if llr > 0 else expected
    elif pred is not None:
        gain, p = _model_colour_check(pred, samples, kind=kind)
        why += ("; " if why else "") + (
            f"the model's confidence with channels swapped: {gain:+.0%} (Wilcoxon p={p:.2g})"
        )
        if p <= P_CLEAR and gain >= GAIN_CLEAR:
            decided = "bgr" if expected == "rgb" else "rgb"
        elif p > 0.2 or gain <= 0:
            decided = expected if llr is None or llr <= 0 else None
    if kind == "image":
        rep.fields.append(
            FedField(
                "color",
                None if decided is None else ("as sent" if decided == expected else "swapped"),
                "as sent",
                why or "no reference summary and no model to tell",
            )
        )
    else:
        rep.fields.append(FedField("color", decided, pp.color, why or "nothing to tell"))


def _model_colour_check(
    pred: Predictor, samples: Sequence[np.ndarray], *, kind: str
) -> tuple[float, float]:
    """Mean relative confidence gain with channels swapped, and its Wilcoxon p-value."""
    a: list[float] = []
    b: list[float] = []
    for s in samples:
        if kind == "tensor":
            xs = _as_model_input(pred, s)
            swapped = xs[:, ::-1] if pred.runner.io.layout == "NCHW" else xs[..., ::-1]
            outs_a = pred.infer(np.ascontiguousarray(xs))
            outs_b = pred.infer(np.ascontiguousarray(swapped))
            meta = _identity_meta(pred)
            ra = pred.postprocess(outs_a, [meta] * len(xs), thresholds=SCORE_THRESHOLDS)
            rb = pred.postprocess(outs_b, [meta] * len(xs), thresholds=SCORE_THRESHOLDS)
        else:
            ra = pred.run_batch([s], thresholds=SCORE_THRESHOLDS).results
            rb = pred.run_batch(
                [np.ascontiguousarray(s[:, :, ::-1])], thresholds=SCORE_THRESHOLDS
            ).results
        a.extend(_confidence(r) for r in ra)
        b.extend(_confidence(r) for r in rb)
    va, vb = np.array(a), np.array(b)
    gain = float((vb.mean() - va.mean()) / max(abs(va.mean()), 1e-6))
    return gain, _wilcoxon_greater(vb - va)


def _as_model_input(pred: Predictor, s: np.ndarray) -> np.ndarray:
    a = np.asarray(s, dtype=np.float32)
    if a.ndim == 3:
        a = a[None]
    want_nchw = pred.runner.io.layout == "NCHW"
    c_first = a.shape[1] in (1, 3) and a.shape[-1] not in (1, 3)
    if want_nchw and not c_first:
        a = np.transpose(a, (0, 3, 1, 2))
    elif not want_nchw and c_first:
        a = np.transpose(a, (0, 2, 3, 1))
    return np.ascontiguousarray(a)


def _identity_meta(pred: Predictor) -> ResizeMeta:
    assert pred.imgsz is not None
    hw = (int(pred.imgsz[0]), int(pred.imgsz[1]))
    return ResizeMeta(orig_hw=hw, input_hw=hw, scale=(1.0, 1.0), pad=(0.0, 0.0), mode="stretch")


def fault_tensors(
    images: Sequence[np.ndarray],
    spec: ModelSpec,
    changes: Sequence[tuple[str, Any]],
    *,
    layout: str = "NCHW",
) -> list[np.ndarray]:
    """Model inputs as a production pipeline with ``changes`` would feed them (one
    ``(1, C, H, W)`` float32 tensor per image): how tests and the benchmark plant faults."""
    pp, interp = apply_changes(spec.preprocess, changes)
    out = []
    for img in images:
        x, _ = preprocess_variant([img], pp, spec.imgsz, interp=interp, layout=layout)
        out.append(x)
    return out
