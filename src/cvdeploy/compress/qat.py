"""``cvdeploy qat``: quantization-aware training that recovers what PTQ lost, as Q/DQ INT8.

The float model is exported and fake-quantized (:func:`cvdeploy.compress.qdq.prepare_qat`),
calibrated on the user's images (that is the post-training quantization it starts from, and
the ``ptq`` artifact of the table), then fine-tuned with the ranges fixed, learning from the
float model's outputs on unlabeled images (labels too for a classifier that has them). Both
the PTQ and the QAT models are written as explicit Q/DQ ONNX, their structure checked,
gated against the FP32 export with the INT8 tolerances, scored and timed side by side.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvdeploy.bundle import Bundle, Provenance
from cvdeploy.compress.data import load_train_images
from cvdeploy.compress.loop import LoopOptions, distill_loop
from cvdeploy.compress.loss import DistillLoss
from cvdeploy.compress.measure import (
    ModelRow,
    accuracy,
    artifact_for,
    export_candidate,
    interleaved_latency,
    write_torch_bundle,
)
from cvdeploy.compress.qdq import (
    SCHEMES,
    dominant_quantizers,
    export_qdq_onnx,
    freeze_ranges,
    keep_float,
    prepare_qat,
    qdq_structure,
    scheme_of,
)
from cvdeploy.compress.report import CompressReport
from cvdeploy.compress.sources import resolve_source
from cvdeploy.compress.state import WorkDir, check_budget, check_out
from cvdeploy.compress.teacher import TorchTeacher
from cvdeploy.data import read_image
from cvdeploy.environment import fingerprint
from cvdeploy.errors import CheckFailed, UsageError
from cvdeploy.export import gate_images
from cvdeploy.pipeline import Predictor
from cvdeploy.runtime import create_runner
from cvdeploy.spec import IOSpec, TensorSpec
from cvdeploy.verify import check_parity

__all__ = ["BACKENDS", "QatOptions", "qat_model"]

BACKENDS = ("onnxruntime", "openvino", "tensorrt")
Log = Callable[[str], None]


@dataclass(frozen=True)
class QatOptions:
    """Options of :func:`qat_model`.

    Attributes:
        init: Where fake quantization starts: ``ptq`` (ranges calibrated on the images).
        minutes: Training budget.
        iters: Optimizer steps (instead of, or as well as, minutes).
        backend: ``onnxruntime`` or ``openvino`` (where the INT8 model is timed; OpenVINO
            also gets IR artifacts), or ``tensorrt`` (symmetric int8 activations, the Q/DQ
            ONNX a TensorRT engine is built from; timed on ONNX Runtime here).
        scheme: ``default`` (per-channel weights, the head's logits and decoding in float),
            ``per-tensor`` (one weight scale per convolution), or ``aggressive``
            (per-tensor weights and every layer quantized, the head's logits included; only
            the decoding after them stays float), or ``aggressive-symmetric`` (the same with
            TensorRT's int8 symmetric activations, whatever the backend). The PTQ baseline and
            the QAT model use the same scheme. See :data:`cvdeploy.compress.qdq.SCHEMES`.
        calib_size: Images used to calibrate the ranges.
        keep_float: Activation quantizers to leave out (their tensors stay float, in the
            PTQ and QAT artifacts alike): ``auto`` (those that alone carry at least half of
            the calibrated model's output error, measured on 8 calibration images: a range
            one tensor's outliers stretch, like YOLOX's first activation), ``none``, or
            quantizer names (comma-separated, as a previous run's scheme records them).
        max_drop: Refuse a QAT model that loses more metric than this (needs eval_data).
        eval_data: Labelled data for FP32 / PTQ / QAT metrics.
        labels: Use the training data's labels (classification; ``None``: when present).
        lr: Peak learning rate.
        batch: Images per step.
        threads: Runtime threads (and torch threads for training).
        latency_rounds: Alternating rounds of the latency measurement.
        seed: Seed.
        resume: Continue an interrupted run.
        overwrite: Replace ``out`` (and a stale working folder).
        work_dir: Working folder (default ``OUT.work``).
        keep_work: Keep the working folder after success.
        score_refused: Measure mode (benchmarks): a QAT artifact the INT8 gate refuses does
            not stop the run; like a refused PTQ baseline it is left out of the bundle,
            scored and timed from the working folder, and its refusal reported
            (``target.gate_refused``, ``target.met`` false).
        progress: Show progress bars.
    """

    init: str = "ptq"
    minutes: float | None = 10.0
    iters: int | None = None
    backend: str = "onnxruntime"
    scheme: str = "default"
    calib_size: int = 128
    keep_float: str = "auto"
    max_drop: float | None = None
    eval_data: Path | None = None
    labels: bool | None = None
    lr: float = 0.0003
    batch: int = 8
    threads: int | None = 2
    latency_rounds: int = 3
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    work_dir: Path | None = None
    keep_work: bool = False
    score_refused: bool = False
    progress: bool = True


def _validate(o: QatOptions, out: Path) -> None:
    if o.init != "ptq":
        raise UsageError(f"--init {o.init!r} is not supported", hint="use --init ptq")
    if o.scheme not in SCHEMES:
        raise UsageError(f"unknown scheme {o.scheme!r}", hint=f"choose {', '.join(SCHEMES)}")
    if o.backend not in BACKENDS:
        raise UsageError(f"unknown backend {o.backend!r}", hint=f"choose {', '.join(BACKENDS)}")
    check_budget(o.minutes, o.iters)
    if o.max_drop is not None and o.eval_data is None:
        raise UsageError("--max-drop needs --eval-data (labelled data to measure the drop on)")
    if o.calib_size < 1:
        raise UsageError(f"--calib-size must be >= 1, got {o.calib_size}")
    if not o.keep_float.strip():
        raise UsageError("--keep-float is empty", hint="use auto, none or quantizer names")
    check_out(out, o.overwrite)


def _io(path: Path) -> IOSpec:
    import onnx

    g = onnx.load(str(path)).graph

    def spec(v: Any) -> TensorSpec:
        dims = [d.dim_value if d.dim_value > 0 else -1 for d in v.type.tensor_type.shape.dim]
        return TensorSpec(name=v.name, shape=tuple(dims))

    inits = {i.name for i in g.initializer}
    return IOSpec(
        inputs=tuple(spec(i) for i in g.input if i.name not in inits),
        outputs=tuple(spec(o) for o in g.output),
    )


def _sensitive(
    prepared: torch.nn.Module, model: torch.nn.Module, images: Any, o: QatOptions, task: str
) -> list[dict[str, Any]]:
    """``keep_float="auto"``: the activation quantizers that carry most of the error, on the
    first 8 calibration images."""
    x, _ = images.batch(_calibration_images(images, 8, o.seed), rng=None, augment=False)
    with torch.no_grad():
        ref = model.eval()(x)
    ref = ref[0] if isinstance(ref, list | tuple) else ref
    return dominant_quantizers(prepared, x, ref, task=task)


def _calibration_images(images: Any, n: int, seed: int) -> list[int]:
    """The indices of the (at most) ``n`` calibration images, in a seeded order."""
    idx = list(range(images.n))
    np.random.default_rng(seed).shuffle(idx)
    return idx[: min(n, images.n)]


@torch.no_grad()
def _calibrate(prepared: torch.nn.Module, images: Any, n: int, seed: int) -> int:
    prepared.eval()
    idx = _calibration_images(images, n, seed)
    for i in range(0, len(idx), 16):
        x, _ = images.batch(idx[i : i + 16], rng=None, augment=False)
        prepared(x)
    return len(idx)


def qat_model(
    source: str,
    data: Path,
    out: Path,
    *,
    options: QatOptions | None = None,
    spec_file: Path | None = None,
    log: Log | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> CompressReport:
    """Quantization-aware training of ``source`` on ``data``; write FP32, PTQ and QAT.

    Args:
        source: A zoo model, a checkpoint, ``module:factory`` (with ``spec_file``), a
            bundle with a torch artifact, or an imported model: a bundle whose model is FP32
            ONNX, or an ``.onnx`` file with ``spec_file`` (run as torch, its input convention
            folded into its first convolutions and its head decoded to the YOLOv8 layout: see
            :mod:`cvdeploy.compress.onnx_source`).
        data: The images (a folder, or a dataset whose train split is used).
        out: The bundle written: ``torch-fp32``, ``onnx-fp32``, ``onnx-int8-ptq`` and
            ``onnx-int8-qat`` (and OpenVINO IRs of them with ``backend="openvino"``).
        options: See :class:`QatOptions`.
        spec_file: Spec of a ``module:factory`` source or an ``.onnx`` file.
        log: Receives progress lines.
        on_step: Called after every optimizer step with ``(step, loss)``.

    Returns:
        The report: FP32, PTQ and QAT side by side, and the share of PTQ's loss recovered.

    Raises:
        UsageError: Bad options or source.
        DatasetError: Missing, empty or too small data.
        CheckFailed: A Q/DQ export that is not clean, a gate refusal, or ``max_drop`` missed.
        TrainingInterrupted: Ctrl-C; the state is saved for ``resume``.
    """
    o = options or QatOptions()
    say = log or (lambda _m: None)
    out = Path(out)
    _validate(o, out)
    t0 = time.perf_counter()
    src = resolve_source(source, spec_file=spec_file)
    imgsz = src.imgsz
    notes: list[str] = list(src.notes)
    images = load_train_images(
        data, task=src.spec.task, names=src.spec.names, imgsz=imgsz, labels=o.labels,
        warnings=notes, preprocess=src.spec.preprocess,
    )  # fmt: skip
    if src.spec.task == "detect" and images.labelled:
        images.labelled = False
        notes.append(
            "QAT of a detector learns from the float model's outputs (dense targets on every "
            "anchor); the data's labels are not used"
        )
    for n in notes:
        say(f"note: {n}")
    command = {
        "source": source, "data": str(data), "backend": o.backend, "scheme": o.scheme,
        "minutes": o.minutes, "iters": o.iters, "calib_size": o.calib_size,
    }  # fmt: skip
    work, state = WorkDir.open(
        o.work_dir or out.with_name(out.name + ".work"),
        command=command, resume=o.resume, overwrite=o.overwrite,
    )  # fmt: skip
    runtime = "openvino" if o.backend == "openvino" else "onnxruntime"
    gate = gate_images(data, [], limit=16)
    fp32 = work.path / "fp32"
    if (fp32 / "bundle.json").is_file():
        fb = Bundle.load(fp32)
    else:
        say("exporting the float model")
        fb = write_torch_bundle(
            src.module, out=fp32, name=src.name, spec=src.spec, builder=src.builder,
            samples=gate[:8], tool="qat-source", options={"source": source}, pruned=src.pruned,
            builder_data=src.builder_data,
        )  # fmt: skip
        fb = export_candidate(fb, runtime=runtime, gate_data=data)
    symmetric = o.backend == "tensorrt" or o.scheme.endswith("-symmetric")
    example = torch.zeros(2, 3, imgsz, imgsz)
    say("exporting the model with fake quantization (torch.export + torchao prepare_qat_pt2e)")
    per_channel, head_outputs = o.scheme == "default", o.scheme.startswith("aggressive")
    prepared = prepare_qat(
        src.module, example, per_channel=per_channel, symmetric_activations=symmetric,
        head_outputs=head_outputs,
    )  # fmt: skip
    if state is not None and state.get("calibrated") is not None:
        kept = list(state.get("kept_float", []))
        keep_float(prepared, [k["quantizer"] for k in kept])
        prepared.load_state_dict(state["calibrated"])
        n_calib = int(state["n_calib"])
        freeze_ranges(prepared)
    else:
        n_calib = _calibrate(prepared, images, o.calib_size, o.seed)
        freeze_ranges(prepared)
        if o.keep_float == "auto":
            kept = _sensitive(prepared, src.module, images, o, src.spec.task)
        elif o.keep_float == "none":
            kept = []
        else:
            kept = [{"quantizer": n.strip()} for n in o.keep_float.split(",") if n.strip()]
        keep_float(prepared, [k["quantizer"] for k in kept])
    for k in kept:
        why = (
            f": alone {k['share']:.0%} of the output error, range {k['range']}"
            if "share" in k
            else " (--keep-float)"
        )
        say(f"kept in float: the input of {', '.join(k.get('feeds', [])) or k['quantizer']}{why}")
    calibrated = copy.deepcopy(prepared.state_dict())
    ptq_file = work.path / "ptq.onnx"
    if not ptq_file.is_file():
        export_qdq_onnx(prepared, ptq_file, imgsz=imgsz)
    work.save({"calibrated": calibrated, "n_calib": n_calib, "kept_float": kept, "loop": None})
    say(f"PTQ: ranges calibrated on {n_calib} images; training with the ranges fixed")
    teacher = TorchTeacher(src.module, task=src.spec.task)
    loss_fn = DistillLoss(task=src.spec.task, num_classes=src.spec.num_classes)
    with warnings.catch_warnings():
        # copying the exported graph (the weight EMA) warns about torch's own pytree specs
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec")
        res = distill_loop(
            prepared, teacher, images, loss_fn,
            options=LoopOptions(
                budget_s=None if o.minutes is None else o.minutes * 60, max_steps=o.iters,
                batch=o.batch, lr=o.lr, seed=o.seed, threads=o.threads, train_mode=False,
                warmup=0.05, weight_decay=0.0, progress=o.progress, title="qat",
            ),
            save=lambda s: work.save(
                {"calibrated": calibrated, "n_calib": n_calib, "kept_float": kept, "loop": s}
            ),
            resume=None if state is None else state.get("loop"),
            on_step=on_step,
        )  # fmt: skip
    qat_file = work.path / "qat.onnx"
    export_qdq_onnx(prepared, qat_file, imgsz=imgsz)
    structures = {}
    for key, f in (("ptq", ptq_file), ("qat", qat_file)):
        st = qdq_structure(f)
        want_logits = st["head_convs"] if head_outputs else 0
        if (
            st["decomposed"] or st["head_qdq"] or not st["convs_quantized"]
            or st["head_outputs_quantized"] != want_logits
        ):  # fmt: skip
            raise CheckFailed(
                f"the {key} Q/DQ export is not clean: {st['convs_quantized']} of {st['convs']} "
                f"convolutions quantized, decomposed ops {st['decomposed'] or 'none'}, "
                f"{st['head_qdq']} Q/DQ nodes in the head's decoding, "
                f"{st['head_outputs_quantized']} of {st['head_convs']} head outputs quantized "
                f"({want_logits} expected with the {o.scheme} scheme)"
            )
        structures[key] = st
    scheme = scheme_of(
        per_channel=per_channel, symmetric_activations=symmetric, head_outputs=head_outputs,
        name=o.scheme,
    )  # fmt: skip
    scheme["kept_float"] = kept
    training = {
        "iterations": res.steps, "seconds": round(res.elapsed_s, 1),
        "loss_first": res.mean_loss(first=True), "loss_last": res.mean_loss(first=False),
        "resumed_from": res.resumed_from, "calibration_images": n_calib,
    }  # fmt: skip
    with Bundle.create(
        out, name=fb.name, spec=fb.spec, overwrite=o.overwrite, action="copy",
        details={"from": "qat"}, copy_of=fb,
    ):  # fmt: skip
        pass
    bundle = Bundle.load(out)
    images_bgr = [read_image(p) for p in gate]
    refused: dict[str, str] = {}
    try:
        ids = _add_int8(
            bundle, {"ptq": ptq_file, "qat": qat_file}, images_bgr, o, scheme, structures,
            training, n_calib, refused=refused,
            refusable=("ptq", "qat") if o.score_refused else ("ptq",),
        )  # fmt: skip
    except CheckFailed as exc:  # the QAT artifact refused: no bundle is delivered
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        raise CheckFailed(
            f"{exc.message}; no bundle was written (the trained state is kept in {work.path})",
            hint="train longer (--minutes) or with a lower --lr, or use --scheme default "
            "(per-channel weights)",
        ) from exc
    bundle = Bundle.load(out)
    fmt_art = artifact_for(runtime)
    models: dict[str, tuple[Bundle, str]] = {"fp32": (bundle, fmt_art)}
    for key, f in (("ptq", ptq_file), ("qat", qat_file)):
        if key in ids:
            models[key] = (bundle, ids[key])
            continue
        # refused by the INT8 gate (the PTQ baseline with the aggressive scheme can be; QAT
        # only with score_refused): not delivered, but measured, so it is added (with its
        # failed check) to the working folder's FP32 bundle and scored and timed from there
        why = refused[("openvino" if runtime == "openvino" else "onnx") + f"-int8-{key}"]
        say(f"note: the {key.upper()} artifact was refused by the INT8 gate: {why}")
        notes.append(
            f"the {key.upper()} artifact was refused by the INT8 gate ({why}); it is not in "
            "the bundle, and was scored and timed from the working folder"
        )
        ids[key] = _add_int8(
            Bundle.load(fp32), {key: f}, images_bgr, o, scheme, structures, training, n_calib,
            refused=None,
        )[key]  # fmt: skip
        models[key] = (Bundle.load(fp32), ids[key])
    lat = interleaved_latency(models, gate, rounds=o.latency_rounds, threads=o.threads)
    rows = []
    for key, (b, art) in models.items():
        a = b.artifact(art)
        row = ModelRow(
            name=key, artifact=art, size_mb=a.size_bytes / 1e6, p50_ms=lat[key].p50_ms,
            inference_p50_ms=lat[key].inference_p50_ms,
            speedup=lat["fp32"].p50_ms / lat[key].p50_ms,
        )  # fmt: skip
        gate_note = [f"{i} refused by the INT8 gate: {r}" for i, r in refused.items() if key in i]
        if gate_note:
            row.note = "; ".join(gate_note) + ("" if key != "ptq" else " (not in the bundle)")
        if o.eval_data is not None:
            row.metric, row.value = accuracy(b, art, o.eval_data, record=b is bundle)
        rows.append(row)
    target: dict[str, Any] = {
        "kind": "qat", "scheme": scheme, "met": not any(k.endswith("-qat") for k in refused),
        "stop": "trained", "gate_refused": refused,
    }  # fmt: skip
    v = {r.name: r.value for r in rows}
    if v["fp32"] is not None and v["ptq"] is not None and v["qat"] is not None:
        ptq_loss, qat_loss = v["fp32"] - v["ptq"], v["fp32"] - v["qat"]
        target.update(ptq_loss=ptq_loss, qat_loss=qat_loss, value=o.max_drop)
        target["recovered"] = (ptq_loss - qat_loss) / ptq_loss if ptq_loss > 0 else None
        if o.max_drop is not None and qat_loss > o.max_drop:
            import shutil

            shutil.rmtree(out, ignore_errors=True)
            raise CheckFailed(
                f"QAT lost {qat_loss:.4f} (PTQ {ptq_loss:.4f}), more than --max-drop "
                f"{o.max_drop}: nothing was saved",
                hint="train longer (--minutes), or use per-channel weights",
            )
    if lat["ptq"].p50_ms > 0:
        target["qat_vs_ptq_latency"] = lat["qat"].p50_ms / lat["ptq"].p50_ms
    report = CompressReport(
        command="qat", bundle=out, source=source, runtime=runtime, rows=rows, target=target,
        training=[training], notes=notes, cpu=str(fingerprint().get("cpu", {}).get("model", "")),
    )  # fmt: skip
    report.seconds = time.perf_counter() - t0
    with bundle.edit(action="qat", details=report.to_dict()):
        pass
    if not o.keep_work:
        work.remove()
    return report


def _add_int8(
    bundle: Bundle,
    files: dict[str, Path],
    images: list[np.ndarray],
    o: QatOptions,
    scheme: dict[str, Any],
    structures: dict[str, Any],
    training: dict[str, Any],
    n_calib: int,
    *,
    refused: dict[str, str] | None,
    refusable: tuple[str, ...] = ("ptq",),
) -> dict[str, str]:
    """Add the PTQ and QAT Q/DQ ONNX (and IRs for OpenVINO), each through the INT8 gate.

    A QAT artifact the gate refuses stops the command (unless ``refusable`` names it). A
    refused PTQ artifact (the baseline, not the product) is left out and its reason put in
    ``refused``; with
    ``refused=None`` it is added anyway with its failed check (the working folder's
    bundle, where the baseline is scored from). Returns the ids added for the runtime."""
    import shutil

    ref = bundle.artifact("onnx-fp32")
    ids: dict[str, str] = {}
    with bundle.edit(action="qat-artifacts", details={"scheme": scheme}) as edit:
        for key, f in files.items():
            targets = [("onnx", f"onnx-int8-{key}")]
            if o.backend == "openvino":
                targets.append(("openvino", f"openvino-int8-{key}"))
            for fmt, art_id in targets:
                d = edit.artifact_dir(art_id, replace=True)
                if fmt == "onnx":
                    shutil.copyfile(f, d / "model.onnx")
                    main = "model.onnx"
                else:
                    import openvino as ov

                    ov.save_model(ov.convert_model(str(f)), str(d / "model.xml"))
                    main = "model.xml"
                io = _io(f)
                src_pred = Predictor(
                    spec=bundle.spec,
                    runner=create_runner("onnx", edit.path_of(ref.files[0].path), ref.io),
                    artifact_id=ref.id,
                    batch=1,
                )
                cand = Predictor(
                    spec=bundle.spec,
                    runner=create_runner(fmt, d / main, io),
                    artifact_id=art_id,
                    batch=1,
                )
                with src_pred, cand:
                    parity = check_parity(src_pred, cand, images, precision="int8")
                if not parity.passed:
                    reason = "; ".join(parity.failures)
                    if refused is not None:  # None: added anyway, with its failed check
                        if key not in refusable:
                            raise CheckFailed(f"{art_id} was refused by the INT8 gate: {reason}")
                        refused[art_id] = reason
                        shutil.rmtree(d)
                        continue
                edit.add_artifact(
                    artifact_id=art_id,
                    format=fmt,
                    precision="int8",
                    io=io,
                    main_file=main,
                    produced_by=Provenance(
                        tool=f"qat:{key}",
                        source=ref.id,
                        options={
                            "scheme": scheme,
                            "qdq": structures[key],
                            "init": o.init,
                            "calibration_images": n_calib,
                            **({"training": training} if key == "qat" else {}),
                        },
                    ),
                    environment=fingerprint(),
                    checks=[parity.to_check(source=ref.id)],
                    inference_precision="f32",
                )
                if fmt == ("openvino" if o.backend == "openvino" else "onnx"):
                    ids[key] = art_id
    return ids
