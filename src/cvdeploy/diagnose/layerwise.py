"""Layer-wise localisation: where does an artifact start to differ from its float source?

Both models run on the same real images with every compute layer's output exposed
(:mod:`cvdeploy.diagnose.taps`); layers are matched by name, and per layer the cosine
similarity and the SQNR (signal-to-quantization-noise ratio, ``10 log10(sum a^2 / sum
(a - b)^2)`` in dB, ``a`` the float source's activation) are accumulated over the images.

- The **cumulative** SQNR of a layer is that of the artifact run end to end: the curve of
  how the error grows through the network.
- The **isolated** (local) SQNR of a layer is measured with every layer fed the float
  source's activations instead of what the layers before it computed
  (:meth:`~cvdeploy.diagnose.taps.TappedModel.run_isolated`): the error it shows is its
  own (its quantized weights and input quantization), not inherited.
- The **first jump** is the first layer, in topological order, whose isolated SQNR is an
  outlier: 4 MAD below the layers' median (at least :data:`JUMP_MIN_DB`, at most twice
  that), and below what the artifact's number format gives a healthy layer
  (:data:`HEALTHY_DB`).
- A layer's isolated error includes the quantization of its input, and one input quantizer
  (OpenVINO ``FakeQuantize``, ONNX ``QuantizeLinear``) often feeds several layers (a
  tensor read by several branches). When the first jump's input quantizer feeds other
  layers and every one of them jumps too, the fault is that quantizer's (its range), not
  one layer's: the report names the quantizer (``jump_quantizer``) and all the layers it
  feeds (``jump_layers``); no measurement can tell which of them was "the" faulty layer,
  they read the same quantized tensor. A jump in only one of them is that layer's own
  (its weights).
- A layer's **share of the output error** is measured by taking its own error out: the
  artifact runs end to end with that one layer's output replaced by what it computed minus
  its isolated error, and the error of the model's outputs (over the detection head's
  scoring anchors, each channel scaled by the source's spread) is compared with the
  unchanged run's. Errors amplify through the network, so a layer with a healthy isolated
  SQNR can still carry much of the final error; this measures it. Each measured layer costs
  a model compilation (one graph cut per layer), so by default only the likely carriers
  are measured (``share_top``): the layers with the largest isolated error and those where
  the end-to-end SQNR drops most (where error enters the network); ``share_top=None``
  measures every layer.
- The layers **to keep in float** are the fewest, largest shares first, whose shares add
  up to half of all layers' (shares overlap: errors compound), at most :data:`MAX_KEEP`;
  :func:`try_keep_float`
  re-quantizes with them kept in float (``cvdeploy quantize --keep-float``) and measures
  how much of the accuracy gap closes.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvdeploy.bundle import Artifact, Bundle
from cvdeploy.diagnose.taps import TappedModel, match_points, tappable
from cvdeploy.errors import UsageError
from cvdeploy.pipeline import Predictor
from cvdeploy.pipeline.heads import Head, get_head
from cvdeploy.progress import track

CAP_DB = 120.0
JUMP_MIN_DB = 10.0
MAX_KEEP = 8
SHARE_TOP = 8
"""Default ``share_top``: the output shares of the 8 largest isolated errors and the 8
largest SQNR drops are measured (at most 16 runs instead of one per layer)."""
JUMP_SHARE_MIN = 0.05
"""A first jump whose own error is less than this share of the output's error (its
``output_share``) is reported as information, not a warning: the output does not feel it."""
LOST_DB = 10.0
"""Isolated SQNR of one output channel below which the channel is lost (its error a tenth of
its signal's power or more, a third of its amplitude) when it is also this far below the
layer's median channel: the error is in that channel, not spread over the layer."""
HEALTHY_DB = {"fp32": 60.0, "fp16": 35.0, "bf16": 30.0, "int8": 12.0}
"""Isolated SQNR below which a layer can be a jump, by precision family (``int8-*``: int8).
An 8-bit layer's own error is normally 25-45 dB below its signal; a badly quantized one can
sit near 15 dB (the zoo detector's worst, measured); below 12 dB the error is a third of the
signal's amplitude or more: broken, not merely coarse."""
_BITS = {"int8": 8, "int8-bf16": 8, "int8-dynamic": 8, "bf16": 8, "fp16": 11, "fp32": 24}


@dataclass(slots=True)
class LayerStat:
    """One layer's agreement with the float source.

    Attributes:
        layer: The candidate's layer name (what ``--keep-float`` matches).
        source_layer: The matching layer of the float source.
        op_type: The operation.
        order: Position in the candidate's topological order.
        cosine: Cosine similarity over all images (run end to end).
        sqnr_db: Cumulative SQNR in dB (capped at :data:`CAP_DB`).
        local_db: Isolated SQNR in dB: the layer fed the float source's activations.
        drop_db: The worst input's cumulative SQNR minus this layer's (>= 0).
        output_share: Share of the model's output error removed when this layer's own error
            is taken out (``None``: not measured).
        inputs: Candidate layers feeding it.
        quantizer: The quantizer of its input activation (INT8 artifacts; ``None``: none).
        channels: Output channels (axis 1; ``None``: no channel axis).
        lost_channels: Output channels whose isolated SQNR is under :data:`LOST_DB` and that
            far below the layer's median channel: the error is concentrated in them, as when
            a per-tensor input scale rounds small channels to zero and the layer reads each
            channel alone (a depthwise convolution).
        channel_median_db: The median isolated SQNR of the output channels.
    """

    layer: str
    source_layer: str
    op_type: str
    order: int
    cosine: float
    sqnr_db: float
    local_db: float = CAP_DB
    drop_db: float = 0.0
    output_share: float | None = None
    inputs: list[str] = field(default_factory=list)
    quantizer: str | None = None
    channels: int | None = None
    lost_channels: list[int] = field(default_factory=list)
    channel_median_db: float | None = None

    @property
    def local_nsr(self) -> float:
        """The isolated noise-to-signal ratio (linear)."""
        return float(10 ** (-self.local_db / 10))


@dataclass(slots=True)
class LayerReport:
    """The layer-wise comparison of an artifact with its float source.

    Attributes:
        artifact: The candidate.
        source: The float source.
        images: Images compared on.
        layers: Every matched layer, in the candidate's order.
        unmatched: Candidate layers with no counterpart in the source.
        first_jump: The first layer whose isolated SQNR is an outlier (``None``: no single
            layer stands out).
        threshold_db: The isolated SQNR below which a layer counts as a jump.
        keep_float: The suggested layers to keep in float (INT8 artifacts).
        trial: The measured ``--keep-float`` trial (:func:`try_keep_float`), if run.
        jump_quantizer: The input quantizer the first jump shares with other layers that
            all jump too: the fault is in that quantizer (``None``: the first jump is the
            layer's own, or there is none).
        jump_layers: The layers the fault shows in: the first jump, and with a
            ``jump_quantizer`` every layer it feeds (empty: no jump).
    """

    artifact: str
    source: str
    images: int
    layers: list[LayerStat]
    unmatched: list[str]
    first_jump: str | None
    threshold_db: float
    keep_float: list[str] = field(default_factory=list)
    trial: dict[str, Any] | None = None
    jump_quantizer: str | None = None
    jump_layers: list[str] = field(default_factory=list)

    def layer(self, name: str) -> LayerStat | None:
        """The stats of one layer."""
        return next((s for s in self.layers if s.layer == name), None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        from cvdeploy.diagnose.findings import _json_ready

        out: dict[str, Any] = _json_ready(asdict(self))
        return out


def float_source(bundle: Bundle, artifact: Artifact | str) -> Artifact:
    """The float model an artifact is compared with: the first FP32 ONNX/OpenVINO artifact
    up its provenance chain, else any FP32 ONNX/OpenVINO artifact of the bundle.

    Raises:
        UsageError: The bundle holds no FP32 ONNX or OpenVINO artifact (or only the
            artifact itself).
    """
    art = bundle.artifact(artifact) if isinstance(artifact, str) else artifact
    ids = {a.id: a for a in bundle.manifest.artifacts}
    seen = {art.id}
    cur = art
    while cur.produced_by.source and cur.produced_by.source in ids:
        cur = ids[cur.produced_by.source]
        if cur.id in seen:
            break
        seen.add(cur.id)
        if cur.precision == "fp32" and tappable(cur):
            return cur
    for fmt in ("onnx", "openvino"):
        for a in bundle.manifest.artifacts:
            if a.id != art.id and a.format == fmt and a.precision == "fp32":
                return a
    have = ", ".join(f"{a.id} ({a.format} {a.precision})" for a in bundle.manifest.artifacts)
    raise UsageError(
        f"bundle {bundle.name!r} has no float source for a layer comparison of {art.id}: "
        f"it needs an FP32 ONNX or OpenVINO artifact (artifacts: {have})",
        hint="import or export the FP32 model the artifact was made from into the bundle "
        "(`cvdeploy export BUNDLE --format onnx`, or `cvdeploy import FP32.onnx`)",
    )


def _sqnr(sig: float, err: float) -> float:
    if err <= 0:
        return CAP_DB
    if sig <= 0:
        return -CAP_DB
    return float(min(CAP_DB, 10.0 * math.log10(sig / err)))


def compare_layers(
    bundle: Bundle,
    artifact: str,
    images: Sequence[np.ndarray],
    *,
    source: str | None = None,
    threads: int | None = None,
    progress: bool = False,
    attribute: int = 4,
    share_top: int | None = SHARE_TOP,
) -> LayerReport:
    """Compare every layer of ``artifact`` with its float source on real images.

    Args:
        bundle: The bundle.
        artifact: The candidate (ONNX or OpenVINO).
        images: Real images (BGR), each run through the spec's preprocessing.
        source: The float source (default: :func:`float_source`).
        threads: Runtime threads.
        progress: Show a progress bar.
        attribute: Images on which each layer's share of the output error is measured
            (one end-to-end run per layer and image; 0: not measured, and layers to keep
            in float are chosen by their isolated error).
        share_top: Measure the shares of the union of the ``share_top`` layers with the
            largest isolated error and the ``share_top`` with the largest SQNR drop only
            (one model compilation per measured layer; the others' share stays ``None``);
            ``None``: every layer.

    Raises:
        UsageError: No images, an artifact that cannot be tapped, no float source, or no
            layer in common.
    """
    if not images:
        raise UsageError("the layer comparison needs at least one image", hint="give --data")
    cand = bundle.artifact(artifact)
    src = bundle.artifact(source) if source else float_source(bundle, cand)
    if src.id == cand.id:
        raise UsageError(f"{cand.id} cannot be compared with itself")
    for art in (cand, src):
        if not tappable(art):
            raise UsageError(
                f"artifact {art.id} is {art.format}: layer outputs can be compared for onnx and "
                "openvino artifacts only"
            )
    tm_src = TappedModel(bundle, src, threads=threads)
    tm_cand = TappedModel(bundle, cand, threads=threads)
    pairs = match_points(tm_src.points, tm_cand.points)
    if not pairs:
        raise UsageError(
            f"no layer of {cand.id} matches a layer of {src.id} by name",
            hint="compare artifacts made one from the other (export, quantize)",
        )
    src_keys = [s for s, _ in pairs]
    cand_keys = [c for _, c in pairs]
    tm_src = TappedModel(bundle, src, only=src_keys, threads=threads)
    tm_cand = TappedModel(bundle, cand, only=cand_keys, threads=threads)
    pre_src = Predictor.from_bundle(bundle, src.id, batch=1)
    pre_cand = Predictor.from_bundle(bundle, cand.id, batch=1, imgsz=pre_src.imgsz)
    # per layer: sum a^2, sum e^2, sum ab, sum b^2 (end to end), sum e_local^2 (isolated)
    acc = np.zeros((len(pairs), 5), dtype=np.float64)
    # per layer and output channel (axis 1): sum a^2, sum e_local^2
    acc_ch: dict[int, np.ndarray] = {}
    head = get_head(bundle.spec.decoder.kind)
    kept: list[tuple[np.ndarray, list[np.ndarray], list[np.ndarray], dict[str, np.ndarray]]] = []
    with tm_src, tm_cand:
        for n_img, img in enumerate(
            track(images, total=len(images), description="layers", enabled=progress)
        ):
            xs, _ = pre_src.preprocess([img])
            xc, _ = pre_cand.preprocess([img])
            a_outs, a_out = tm_src.run_all(xs)
            b_outs, b_out = tm_cand.run_all(xc)
            fed = {ck: a_out[sk] for sk, ck in pairs if a_out[sk].shape == b_out[ck].shape}
            c_out = tm_cand.run_isolated(xc, fed)
            if n_img < attribute:  # each layer's value with its own error taken out
                own_out = {ck: b_out[ck] - (c_out[ck] - fed[ck]) for ck in fed}
                kept.append((xc, a_outs, b_outs, own_out))
            for i, (sk, ck) in enumerate(pairs):
                # float32 dot products (BLAS, blocked sums): the dominant per-image cost
                a = np.ascontiguousarray(a_out[sk], dtype=np.float32).ravel()
                b = np.ascontiguousarray(b_out[ck], dtype=np.float32).ravel()
                c = np.ascontiguousarray(c_out[ck], dtype=np.float32).ravel()
                if a.shape != b.shape or a.shape != c.shape:
                    acc[i] = np.nan
                    continue
                e = a - b
                el = a - c
                shape = a_out[sk].shape
                if len(shape) == 4 and shape[0] == 1 and shape[1] > 1:  # NCHW
                    a2 = a.reshape(shape[1], -1)
                    l2 = el.reshape(shape[1], -1)
                    ch = np.stack([np.einsum("ij,ij->i", a2, a2), np.einsum("ij,ij->i", l2, l2)])
                    acc_ch[i] = acc_ch[i] + ch if i in acc_ch else ch.astype(np.float64)
                acc[i] += (
                    float(a @ a),
                    float(e @ e),
                    float(a @ b),
                    float(b @ b),
                    float(el @ el),
                )
    points = {p.key: p for p in tm_cand.points}
    stats: dict[str, LayerStat] = {}
    for i, (sk, ck) in enumerate(pairs):
        s_aa, s_ee, s_ab, s_bb, s_ll = acc[i]
        if not np.isfinite(acc[i]).all():
            continue
        denom = math.sqrt(s_aa * s_bb)
        cos = s_ab / denom if denom > 0 else (1.0 if s_ee == 0 else 0.0)
        p = points[ck]
        stats[ck] = LayerStat(
            layer=ck,
            source_layer=sk,
            op_type=p.op_type,
            order=p.order,
            cosine=float(cos),
            sqnr_db=_sqnr(s_aa, s_ee),
            local_db=_sqnr(s_aa, s_ll),
            inputs=[k for k in p.inputs],
            quantizer=p.quantizer,
        )
        if i in acc_ch:
            _channel_stats(stats[ck], acc_ch[i])
    entry_db = min(CAP_DB, 6.02 * _BITS.get(cand.precision, 24) + 1.76)
    for st in stats.values():
        ins = [stats[k] for k in st.inputs if k in stats]
        in_db = min((s.sqnr_db for s in ins), default=entry_db)
        st.drop_db = max(0.0, in_db - st.sqnr_db)
    if kept:
        _attribute(
            tm_cand, head, kept, stats, progress=progress, only=share_candidates(stats, share_top)
        )
    layers = sorted(stats.values(), key=lambda s: s.order)
    local = np.array([s.local_db for s in layers]) if layers else np.full(1, CAP_DB)
    med = float(np.median(local))
    mad = float(np.median(np.abs(local - med))) * 1.4826
    healthy = HEALTHY_DB.get(cand.precision.split("-")[0], HEALTHY_DB["int8"])
    # 4 MAD below the median (10 to 20 dB: a few layers give no stable MAD), and unhealthy
    thr = min(med - min(max(JUMP_MIN_DB, 4.0 * mad), 2 * JUMP_MIN_DB), healthy)
    jump = next((s.layer for s in layers if s.local_db < thr), None)
    jump_q, jump_layers = jump_group(layers, jump, thr)
    keep: list[str] = []
    if cand.precision.startswith("int8"):
        keep = suggest_keep_float(layers)
    matched = {c for _, c in pairs}
    return LayerReport(
        artifact=cand.id,
        source=src.id,
        images=len(images),
        layers=layers,
        unmatched=[p.key for p in tm_cand.points if p.key not in matched],
        first_jump=jump,
        threshold_db=thr,
        keep_float=keep,
        jump_quantizer=jump_q,
        jump_layers=jump_layers,
    )


def _channel_stats(st: LayerStat, ch: np.ndarray) -> None:
    """Per-channel isolated SQNRs of one layer (``ch``: sums of a^2 and e_local^2)."""
    s_aa, s_ll = ch
    live = s_aa > 0
    if not live.any():
        return
    db = np.array([_sqnr(float(x), float(y)) for x, y in zip(s_aa, s_ll, strict=True)])
    st.channels = len(db)
    st.channel_median_db = float(np.median(db[live]))
    bound = min(LOST_DB, st.channel_median_db - LOST_DB)
    lost = [int(k) for k in np.flatnonzero(live & (db < bound))]
    st.lost_channels = lost if len(lost) <= len(db) // 2 else []


def jump_group(
    layers: Sequence[LayerStat], jump: str | None, threshold_db: float
) -> tuple[str | None, list[str]]:
    """Whose fault is the first jump: ``(quantizer, layers)``.

    When the jump's input quantizer feeds other layers and every one of them is below the
    threshold too, the quantizer is at fault and all of them show it (in topological
    order); otherwise the jump is the layer's own: ``(None, [jump])``. No jump:
    ``(None, [])``.
    """
    if jump is None:
        return None, []
    st = next(s for s in layers if s.layer == jump)
    if st.quantizer is None:
        return None, [jump]
    fed = sorted((s for s in layers if s.quantizer == st.quantizer), key=lambda s: s.order)
    if len(fed) > 1 and all(s.local_db < threshold_db for s in fed):
        return st.quantizer, [s.layer for s in fed]
    return None, [jump]


def _output_error(head: Head, src: list[np.ndarray], cand: list[np.ndarray]) -> float:
    """Squared error of the candidate's outputs (a detection head: over the source's scoring
    anchors, each channel scaled by the source's spread there)."""
    if head.anchors_first is not None and len(src) == 1:
        a, b = head.rows(src[0]), head.rows(cand[0])
        sel = head.anchor_scores(src[0]) >= 0.05
        if sel.any():
            a, b = a[sel], b[sel]
        a = a.reshape(-1, a.shape[-1]).astype(np.float64)
        b = b.reshape(-1, b.shape[-1]).astype(np.float64)
        sd = a.std(0) + 1e-6 * (np.abs(a).max() + 1e-12)
        return float((((a - b) / sd) ** 2).sum())
    return float(
        sum(((x.astype(np.float64) - y) ** 2).sum() for x, y in zip(src, cand, strict=True))
    )


def _attribute(
    tm: TappedModel,
    head: Head,
    kept: Sequence[tuple[np.ndarray, list[np.ndarray], list[np.ndarray], dict[str, np.ndarray]]],
    stats: dict[str, LayerStat],
    *,
    progress: bool,
    only: set[str] | None = None,
) -> None:
    """Each layer's share of the output error: its own error taken out, one run per layer
    (the layers in ``only``, default every layer)."""
    pick = [k for k in stats if only is None or k in only]
    base = sum(_output_error(head, a, b) for _, a, b, _ in kept)
    if base <= 0:
        for k in pick:
            stats[k].output_share = 0.0
        return
    layers = [k for k in pick if all(k in own for *_, own in kept)]
    for k in track(layers, total=len(layers), description="output shares", enabled=progress):
        outs = tm.run_fed([x for x, *_ in kept], [{k: own[k]} for *_, own in kept])
        err = sum(_output_error(head, a, o) for (_, a, _, _), o in zip(kept, outs, strict=True))
        stats[k].output_share = (base - err) / base


def share_candidates(stats: dict[str, LayerStat], top: int | None) -> set[str] | None:
    """The layers whose output share is worth measuring: the ``top`` largest isolated
    errors and the ``top`` largest SQNR drops (``None``: every layer)."""
    if top is None or top >= len(stats):
        return None
    by_local = sorted(stats.values(), key=lambda s: (s.local_db, s.order))[:top]
    by_drop = sorted(stats.values(), key=lambda s: (-s.drop_db, s.order))[:top]
    return {s.layer for s in (*by_local, *by_drop)}


def suggest_keep_float(layers: Sequence[LayerStat], *, share: float = 0.5) -> list[str]:
    """The fewest layers (at most :data:`MAX_KEEP`) that carry ``share`` of the output error,
    largest first (by their isolated noise when the shares were not measured)."""
    measured = any(s.output_share is not None for s in layers)
    if measured:  # shares overlap (errors compound), so: half of their sum
        weights = {s.layer: max(0.0, s.output_share or 0.0) for s in layers}
    else:
        weights = {s.layer: s.local_nsr for s in layers}
    total = sum(weights.values())
    ranked = sorted(layers, key=lambda s: -weights[s.layer])
    out: list[str] = []
    acc = 0.0
    for s in ranked:
        if acc >= share * total or len(out) >= MAX_KEEP or weights[s.layer] <= 0:
            break
        out.append(s.layer)
        acc += weights[s.layer]
    return out


def placebo_layers(layers: Sequence[LayerStat], keep: Sequence[str]) -> list[str]:
    """As many layers as ``keep``, the healthiest (largest isolated SQNR, smallest output
    share) of those not in it: keeping them in float is the keep-float trial's placebo."""
    rest = [s for s in layers if s.layer not in set(keep)]
    rest.sort(key=lambda s: (-s.local_db, s.output_share or 0.0, s.order))
    return [s.layer for s in rest[: len(keep)]]


def _hardlink_copy(src: Path, dst: Path) -> None:
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def try_keep_float(
    bundle: Bundle,
    artifact: str,
    keep: Sequence[str],
    data: Path,
    *,
    calib: Path | None = None,
    noise: int = 0,
    placebo: Sequence[str] = (),
    known: dict[str, float] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Re-quantize with ``keep`` in float and measure how much of the gap closes.

    Works on a hard-linked copy of the bundle in a temporary folder (the bundle itself is
    not changed). The artifact must have been made by ``cvdeploy quantize``; its backend,
    engine, method and source are reused. The calibration set is ``calib`` (default: the
    one recorded with the artifact when it is still there, else ``data``). When the
    calibration set differs from the recorded one, a baseline without ``keep`` is
    re-quantized too, so the comparison is like for like.

    Quantization itself is noisy: another calibration sample of the same data moves the
    accuracy, sometimes by as much as the whole INT8 gap (YOLOX-Nano on coco128: 0.3230 to
    0.3313 mAP50-95 over three 96-image samples, against a gap of 0.0084). With ``noise``
    > 0, the artifact is also re-quantized (without ``keep``) from that many random
    samples of three quarters of the calibration images; the spread of those accuracies
    (``noise_sd``) is what a keep-float change must exceed to count.

    Changing what is quantized moves the accuracy too, more than calibration sampling
    does: on YOLOX-Nano (coco128, gap 0.0084), keeping one healthy layer in float (43 dB
    isolated SQNR) moved mAP50-95 by -0.0026, and another by -0.0021, against a
    calibration-sample sd of 0.0007. With ``placebo`` (layers that carry no error,
    :func:`placebo_layers`), the artifact is also re-quantized with those kept in float
    instead: a keep-float change no larger than the placebo's is not a recovery.

    Args:
        bundle: The bundle.
        artifact: The INT8 artifact.
        keep: Layers to keep in float.
        data: Labelled data the accuracy is measured on.
        calib: Calibration images (default: the recorded set, else ``data``).
        noise: Calibration samples of the noise baseline (0: none; each costs a
            quantization and an evaluation).
        placebo: Layers kept in float instead, as a control (empty: none; one more
            quantization and evaluation).
        known: Scores already measured on ``data`` with the same protocol, by artifact id
            (doctor's controlled-dataset table): the float source and the unchanged
            artifact are not evaluated again.
        progress: Show progress bars.

    Returns:
        ``map_fp32``, ``map_int8`` (the baseline), ``map_keep``, ``recovered`` (the share
        of the gap closed), ``keep_passes_gate`` (whether the re-quantized artifact passes
        the INT8 integrity gate: every re-quantization is measured whatever the gate says,
        so that a baseline the gate refuses can still be compared), the layers kept and the
        command that does it for real; with
        ``noise``: ``noise_maps``, ``noise_sd`` and ``within_noise`` (the keep-float change
        is within two standard deviations of the calibration noise); with ``placebo``:
        ``placebo_keep``, ``map_placebo`` and ``beyond_placebo`` (the keep-float change
        is larger than the placebo's, in absolute value).

    Raises:
        UsageError: The artifact was not made by ``cvdeploy quantize``.
    """
    from cvdeploy.optimize import (
        MIN_CALIBRATION_IMAGES,
        QuantizeOptions,
        list_calibration_images,
        quantize_bundle,
    )
    from cvdeploy.verify import evaluate_bundle

    art = bundle.artifact(artifact)
    tool = art.produced_by.tool
    if not tool.startswith("quantize:") or art.produced_by.source is None:
        raise UsageError(
            f"{art.id} was not made by `cvdeploy quantize` ({tool}): it cannot be re-quantized "
            "with layers kept in float here"
        )
    backend = tool.split(":", 1)[1]
    opts_rec = art.produced_by.options
    recorded = Path(str(opts_rec.get("calib_source") or ""))
    calib_used = calib or (recorded if str(recorded) and recorded.exists() else data)
    same_calib = calib_used == recorded
    method = str(opts_rec.get("calib_method") or "minmax")
    engine = "nncf" if opts_rec.get("engine") == "nncf" else "ort"
    source_id = art.produced_by.source
    base_keep = tuple(str(k) for k in opts_rec.get("kept_float") or ())
    results: dict[str, Any] = {
        "backend": backend,
        "calibration": str(calib_used),
        "keep_float": list(keep),
    }
    with tempfile.TemporaryDirectory(prefix="cvdeploy-doctor-") as tmp:
        work = Path(tmp) / bundle.path.name
        _hardlink_copy(bundle.path, work)
        b = Bundle.load(work, verify=False, loader=bundle.loader)

        gates: list[bool] = []

        def quantize(keep_now: tuple[str, ...], cal: Path | None = None) -> float:
            quantize_bundle(
                b,
                cal or calib_used,
                options=QuantizeOptions(
                    backend=backend,
                    engine=engine if backend == "onnxruntime" else "ort",
                    method=method,
                    keep_float=keep_now,
                    force=True,
                    source=source_id,
                    overwrite=True,
                    measure=False,
                    progress=progress,
                    gate_cosine=0.5,
                    save_refused=True,
                ),
            )
            fresh = Bundle.load(work, verify=False)
            check = fresh.artifact(art.id).latest("parity")
            gates.append(bool(check is not None and check.passed))
            rep = evaluate_bundle(fresh, data, artifact=art.id, record=False, progress=progress)
            return float(_score(rep.metrics))

        def score(aid: str) -> float:
            if known and known.get(aid) is not None:
                return float(known[aid])
            rep = evaluate_bundle(b, data, artifact=aid, record=False, progress=progress)
            return float(_score(rep.metrics))

        m_fp32 = score(source_id)
        m_base = score(art.id) if same_calib else quantize(base_keep)
        m_keep = quantize(tuple(dict.fromkeys([*base_keep, *keep])))
        results["keep_passes_gate"] = gates[-1]
        noise_maps = [
            quantize(base_keep, cal)
            for cal in _calibration_samples(calib_used, noise, Path(tmp) / "calib")
        ]
        if placebo:
            m_placebo = quantize(tuple(dict.fromkeys([*base_keep, *placebo])))
            results.update(
                placebo_keep=list(placebo),
                map_placebo=m_placebo,
                beyond_placebo=m_keep - m_base > abs(m_placebo - m_base),
            )
    gap = m_fp32 - m_base
    n_calib = len(set(list_calibration_images(calib_used)))
    if noise_maps:
        sd = float(np.std([m_base, *noise_maps], ddof=1))
        results.update(
            noise_maps=noise_maps,
            noise_sd=sd,
            within_noise=abs(m_keep - m_base) <= 2 * sd,
            gap_within_noise=gap <= 2 * sd,
        )
    results.update(
        map_fp32=m_fp32,
        map_int8=m_base,
        map_keep=m_keep,
        gap=gap,
        recovered=(m_keep - m_base) / gap if gap > 1e-9 else None,
        same_calibration=same_calib,
        command="cvdeploy quantize BUNDLE --calib "
        + f"{calib_used} --backend {backend} "
        + (f"--engine {engine} " if backend == "onnxruntime" and engine != "ort" else "")
        + (f"--method {method} " if method != "minmax" else "")
        + ("--force " if n_calib < MIN_CALIBRATION_IMAGES else "")
        + "--overwrite "
        + " ".join(f"--keep-float '{k}'" for k in keep),
    )
    return results


def _calibration_samples(calib: Path, n: int, root: Path) -> list[Path]:
    """``n`` folders, each linking a random three quarters of the calibration images."""
    if n <= 0:
        return []
    import random

    from cvdeploy.optimize import list_calibration_images

    paths = sorted(set(list_calibration_images(calib)))
    k = max(1, round(len(paths) * 0.75))
    out: list[Path] = []
    for seed in range(1, n + 1):
        d = root / f"sample{seed}"
        d.mkdir(parents=True)
        for i, p in enumerate(random.Random(seed).sample(paths, k)):
            try:
                os.symlink(p.resolve(), d / f"{i:05d}_{p.name}")
            except OSError:
                shutil.copy2(p, d / f"{i:05d}_{p.name}")
        out.append(d)
    return out


def _score(metrics: dict[str, Any]) -> float:
    v = metrics.get("map50_95", metrics.get("top1"))
    return float(v) if v is not None else math.nan
