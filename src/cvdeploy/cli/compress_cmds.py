"""`cvdeploy prune`, `distill` and `qat`: smaller models, learnt from unlabeled images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from cvdeploy.cli.common import (
    err_console,
    handle_errors,
    out_console,
    print_json,
    third_party_output_to_stderr,
)
from cvdeploy.errors import UsageError

if TYPE_CHECKING:
    from cvdeploy.compress import CompressReport


def parse_fraction(value: str | None, option: str) -> float | None:
    """Parse ``0.7`` or ``0.7x``."""
    if value is None:
        return None
    text = value.strip().lower().removesuffix("x")
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{option} must be a number like 0.7 or 0.7x, got {value!r}") from None


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_report(rep: Any) -> None:
    """The result table of a compression report."""
    con = out_console()
    t = Table(title=f"{rep.command}: {rep.source} -> {rep.bundle} (latency on {rep.runtime})")
    cols = (
        "model",
        "artifact",
        "ratio",
        "params",
        "MMACs",
        "size MB",
        "metric",
        "p50 ms",
        "speed-up",
        "note",
    )
    for c in cols:
        t.add_column(c, justify="left" if c in ("model", "artifact", "note") else "right")
    for r in rep.rows:
        t.add_row(
            r.name,
            r.artifact,
            _fmt(r.ratio, ".2f"),
            "-" if r.params is None else f"{r.params / 1e6:.2f} M",
            "-" if r.macs is None else f"{r.macs / 1e6:.0f}",
            _fmt(r.size_mb, ".2f"),
            "-" if r.value is None else f"{r.metric} {r.value:.4f}",
            _fmt(r.p50_ms, ".2f"),
            "-" if r.speedup is None else f"{r.speedup:.2f}x",
            r.note,
        )
    con.print(t)
    for tr in rep.training:
        con.print(
            "training"
            + (f" (step {tr['step']})" if "step" in tr else "")
            + f": {tr['iterations']} iterations in {tr['seconds']:.0f} s, loss "
            f"{tr['loss_first']:.3f} -> {tr['loss_last']:.3f}"
        )
    if rep.target:
        met = "met" if rep.target.get("met") else "[bold red]not met[/]"
        con.print(
            f"target {rep.target['kind']} {rep.target['value']}: {met} ({rep.target['stop']})"
        )
    for n in rep.notes:
        con.print(f"note: {n}")
    con.print(f"bundle: {rep.bundle} ({rep.seconds:.0f} s; latency measured on {rep.cpu})")


Minutes = Annotated[float | None, typer.Option(help="training budget in minutes (the whole run)")]
Iters = Annotated[
    int | None,
    typer.Option(help="optimizer steps (per pruning step), instead of or with --minutes"),
]
Runtime = Annotated[str, typer.Option(help="where latency is measured: onnxruntime or openvino")]
Labels = Annotated[
    bool | None,
    typer.Option(
        "--labels/--no-labels",
        help="use the data's labels (default: when it has them; --no-labels learns from the "
        "teacher alone)",
    ),
]
EvalData = Annotated[
    Path | None, typer.Option(help="labelled dataset to score every model on (mAP / top-1)")
]
Resume = Annotated[
    bool, typer.Option(help="continue an interrupted run from its working folder (OUT.work)")
]
Overwrite = Annotated[bool, typer.Option(help="replace --out and a stale working folder")]
Json = Annotated[bool, typer.Option("--json", help="print the report as JSON")]
Threads = Annotated[int | None, typer.Option(help="runtime and training threads")]


def _run(make: Callable[..., CompressReport], *args: Any, **kwargs: Any) -> CompressReport:
    """Run a compress command with its progress lines and third-party output on stderr."""
    con = err_console()
    with third_party_output_to_stderr():
        return make(*args, log=lambda m: con.print(m, markup=False, highlight=False), **kwargs)


@handle_errors
def prune_cmd(
    source: Annotated[
        str,
        typer.Argument(
            help="zoo model (detector-n), training checkpoint, module:factory (with --spec), "
            "or a bundle holding a torch artifact (an imported ONNX model is refused: `cvdeploy "
            "qat` takes it)"
        ),
    ],
    data: Annotated[
        Path, typer.Option(help="images to recover on (folder, or a data.yaml's train split)")
    ],
    out: Annotated[Path, typer.Option(help="bundle to write")],
    ratio: Annotated[
        float | None,
        typer.Option(help="fraction of channels to remove (default 0.3 without a target)"),
    ] = None,
    target_latency: Annotated[
        str | None,
        typer.Option(
            help="stop once the exported model's end-to-end p50 is at most this fraction of "
            "the unpruned one's, e.g. 0.7x"
        ),
    ] = None,
    max_ratio: Annotated[
        float, typer.Option(help="with --target-latency: the largest ratio tried")
    ] = 0.75,
    runtime: Runtime = "onnxruntime",
    importance: Annotated[
        str, typer.Option(help="channel importance: l1, l2, bn, taylor or lamp")
    ] = "l2",
    round_to: Annotated[
        int, typer.Option(help="keep channel counts multiples of this (1: any)")
    ] = 8,
    steps: Annotated[int, typer.Option(help="pruning steps, each recovered and measured")] = 3,
    minutes: Minutes = 10.0,
    iters: Iters = None,
    max_drop: Annotated[
        float | None,
        typer.Option(help="stop before a step that loses more mAP50-95 (needs --eval-data)"),
    ] = None,
    eval_data: EvalData = None,
    labels: Labels = None,
    int8: Annotated[
        str | None,
        typer.Option(
            help="then quantize the pruned model (openvino or onnxruntime) and add a "
            "'pruned + INT8' row timed in the same rounds"
        ),
    ] = None,
    calib: Annotated[
        Path | None, typer.Option(help="calibration images for --int8 (default: --data)")
    ] = None,
    spec: Annotated[Path | None, typer.Option(help="spec file of a module:factory source")] = None,
    lr: Annotated[float, typer.Option(help="peak learning rate of recovery")] = 0.002,
    batch: Annotated[int, typer.Option(help="images per optimizer step")] = 8,
    threads: Threads = 2,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    resume: Resume = False,
    overwrite: Overwrite = False,
    keep_work: Annotated[
        bool, typer.Option(help="keep the working folder (every step's bundle)")
    ] = False,
    json_out: Json = False,
) -> None:
    """Physically remove channels, judged by the exported model's measured latency.

    Each step prunes with torch-pruning's dependency graph (channel counts rounded to
    --round-to, the output layers kept), recovers by self-distillation from the unpruned
    model on --data (no labels needed), exports through the parity gate, and is timed
    against the unpruned export on --runtime (alternating rounds). It stops at --ratio or
    --target-latency, or before a step that loses more than --max-drop. Interrupted runs
    continue with --resume.
    """
    from cvdeploy.compress import PruneOptions, prune_model

    opts = PruneOptions(
        ratio=ratio,
        target_latency=parse_fraction(target_latency, "--target-latency"),
        max_ratio=max_ratio,
        runtime=runtime,
        importance=importance,
        round_to=None if round_to <= 1 else round_to,
        steps=steps,
        minutes=minutes,
        iters=iters,
        max_drop=max_drop,
        eval_data=eval_data,
        labels=labels,
        batch=batch,
        lr=lr,
        threads=threads,
        seed=seed,
        resume=resume,
        overwrite=overwrite,
        keep_work=keep_work,
        int8=int8,
        calib=calib,
        progress=not json_out,
    )
    rep = _run(
        prune_model,
        source,
        data,
        out,
        options=opts,
        spec_file=spec,
    )
    if json_out:
        print_json(rep.to_dict())
    else:
        print_report(rep)


@handle_errors
def distill_cmd(
    teacher: Annotated[
        Path,
        typer.Option(help="any bundle cvdeploy can run (e.g. an imported ONNX or OpenVINO model)"),
    ],
    data: Annotated[
        Path, typer.Option(help="images to learn from (folder, or a data.yaml's train split)")
    ],
    out: Annotated[Path, typer.Option(help="the student's bundle")],
    student: Annotated[
        str,
        typer.Option(
            help="zoo:NAME (e.g. zoo:detector-p) or module:factory (an imported ONNX model "
            "can be the --teacher, not the student; `cvdeploy qat` trains it as INT8)"
        ),
    ] = "zoo:detector-p",
    teacher_artifact: Annotated[
        str | None, typer.Option(help="the teacher's artifact (default: its preferred one)")
    ] = None,
    imgsz: Annotated[
        int | None, typer.Option(help="the student's input size (default: the teacher's)")
    ] = None,
    minutes: Minutes = 10.0,
    iters: Iters = None,
    pseudo_conf: Annotated[
        float,
        typer.Option(
            help="smallest teacher confidence kept as a pseudo-label (when the teacher's "
            "output does not line up with the student's; with --pseudo-flip, of the fused "
            "score)"
        ),
    ] = 0.25,
    pseudo_flip: Annotated[
        bool,
        typer.Option(
            help="offline pseudo-labels from each image and its mirror, fused (weighted box "
            "fusion, the mean score of the two views kept from --pseudo-conf): a second "
            "teacher pass for more precise boxes"
        ),
    ] = True,
    targets: Annotated[
        str,
        typer.Option(
            help="how a detector teacher teaches: offline (it labels every image once, the "
            "student learns these pseudo-labels at the cost of a labelled step), online (it "
            "runs on every augmented batch: dense outputs, or pseudo-labels when its layout "
            "differs), auto (offline for a zoo detector student without labels, else online)"
        ),
    ] = "auto",
    labels: Labels = None,
    eval_data: EvalData = None,
    runtime: Runtime = "onnxruntime",
    lr: Annotated[float, typer.Option(help="peak learning rate")] = 0.005,
    batch: Annotated[int, typer.Option(help="images per optimizer step")] = 8,
    threads: Threads = 2,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    resume: Resume = False,
    overwrite: Overwrite = False,
    json_out: Json = False,
) -> None:
    """Train a smaller student from any runnable teacher bundle, on unlabeled images.

    The teacher runs through its own runtime (no training code needed); its outputs (class
    scores as soft targets, boxes; or its detections above --pseudo-conf when its layout
    differs from the student's) train the student, with the data's labels when it has
    them. The student gets the teacher's class names; the result is a normal bundle
    (torch + gated ONNX), ready for eval, quantize and serve.
    """
    from cvdeploy.compress import DistillOptions, distill_model

    opts = DistillOptions(
        student=student,
        teacher_artifact=teacher_artifact,
        imgsz=imgsz,
        minutes=minutes,
        iters=iters,
        lr=lr,
        batch=batch,
        pseudo_conf=pseudo_conf,
        pseudo_flip=pseudo_flip,
        targets=targets,
        labels=labels,
        eval_data=eval_data,
        runtime=runtime,
        threads=threads,
        seed=seed,
        resume=resume,
        overwrite=overwrite,
        progress=not json_out,
    )
    rep = _run(
        distill_model,
        teacher,
        data,
        out,
        options=opts,
    )
    if json_out:
        print_json(rep.to_dict())
    else:
        print_report(rep)


@handle_errors
def qat_cmd(
    source: Annotated[
        str,
        typer.Argument(
            help="zoo model, training checkpoint, module:factory (with --spec), a bundle "
            "holding a torch artifact, or an imported model: a bundle of an FP32 ONNX model "
            "(`cvdeploy import`) or an .onnx file with --spec, run as torch (its input scale "
            "and colour order folded into its first convolutions, a yolox/yolov5 head decoded "
            "to the yolov8 layout)"
        ),
    ],
    data: Annotated[
        Path, typer.Option(help="images to learn from (folder, or a data.yaml's train split)")
    ],
    out: Annotated[Path, typer.Option(help="bundle to write (FP32, PTQ and QAT artifacts)")],
    init: Annotated[str, typer.Option(help="start from: ptq (calibrated ranges)")] = "ptq",
    minutes: Minutes = 10.0,
    iters: Annotated[
        int | None, typer.Option(help="optimizer steps, instead of or with --minutes")
    ] = None,
    backend: Annotated[
        str,
        typer.Option(
            help="onnxruntime, openvino (adds IRs, timed on OpenVINO) or tensorrt (symmetric "
            "activations: the Q/DQ ONNX a TensorRT INT8 engine is built from)"
        ),
    ] = "onnxruntime",
    scheme: Annotated[
        str,
        typer.Option(
            help="default (per-channel weights, head logits float), per-tensor (one weight "
            "scale per layer), aggressive (per-tensor weights and every layer quantized, the "
            "head's logits too; the decoding stays float) or aggressive-symmetric (the same "
            "with TensorRT's int8 symmetric activations); PTQ and QAT use the same"
        ),
    ] = "default",
    calib_size: Annotated[int, typer.Option(help="images that calibrate the ranges")] = 128,
    keep_float: Annotated[
        str,
        typer.Option(
            help="activations left in float (PTQ and QAT alike): auto (a quantizer that alone "
            "carries at least half of the output error, measured after calibration), none, "
            "or quantizer names from a previous run's scheme (kept_float)"
        ),
    ] = "auto",
    max_drop: Annotated[
        float | None,
        typer.Option(help="refuse a QAT model that loses more (needs --eval-data)"),
    ] = None,
    eval_data: EvalData = None,
    labels: Labels = None,
    spec: Annotated[
        Path | None, typer.Option(help="spec file of a module:factory source or an .onnx file")
    ] = None,
    lr: Annotated[float, typer.Option(help="peak learning rate")] = 0.0003,
    batch: Annotated[int, typer.Option(help="images per optimizer step")] = 8,
    threads: Threads = 2,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    resume: Resume = False,
    overwrite: Overwrite = False,
    json_out: Json = False,
) -> None:
    """Quantization-aware training from PTQ, exported as an explicit Q/DQ INT8 ONNX.

    torchao's PT2E flow fake-quantizes the model (the detection head's decoding stays in
    float), calibrates the ranges on --data (that is the PTQ model), then fine-tunes with
    the ranges fixed, learning from the float model's outputs (no labels needed). PTQ and
    QAT are exported as Q/DQ ONNX (checked: QuantizeLinear/DequantizeLinear pairs, nothing
    decomposed, the head in float), gated against FP32 and shown side by side with the
    share of PTQ's loss that QAT recovered. `cvdeploy quantize --explain BUNDLE --artifact
    onnx-int8-qat` explains their speed.

    A model with no training code works too: `cvdeploy import MODEL.onnx --out B --preset
    yolox` then `cvdeploy qat B --data IMAGES`. Its graph runs as torch, taking RGB 0..1 (a
    0..255 scale, std and BGR order folded into the convolutions reading the input) and
    giving the yolov8 layout (a yolox or yolov5 head decoded in torch); the new bundle's
    spec says so. Operators, inputs or heads that cannot be converted are refused by name.
    """
    from cvdeploy.compress import QatOptions, qat_model

    opts = QatOptions(
        init=init,
        minutes=minutes,
        iters=iters,
        backend=backend,
        scheme=scheme,
        calib_size=calib_size,
        keep_float=keep_float,
        max_drop=max_drop,
        eval_data=eval_data,
        labels=labels,
        lr=lr,
        batch=batch,
        threads=threads,
        seed=seed,
        resume=resume,
        overwrite=overwrite,
        progress=not json_out,
    )
    rep = _run(
        qat_model,
        source,
        data,
        out,
        options=opts,
        spec_file=spec,
    )
    if json_out:
        print_json(rep.to_dict())
        return
    print_report(rep)
    t = rep.target
    if t.get("recovered") is not None:
        out_console().print(
            f"PTQ lost {t['ptq_loss']:.4f}, QAT {t['qat_loss']:.4f}: QAT recovered "
            f"{t['recovered']:.0%} of PTQ's loss; QAT/PTQ latency {t['qat_vs_ptq_latency']:.2f}"
        )
