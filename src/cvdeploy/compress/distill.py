"""``cvdeploy distill``: a student learns from any bundle cvdeploy can run, without labels.

The teacher runs through its own runtime at its recorded precision (an imported ONNX or
OpenVINO model, INT8 or not: no training code needed). On each augmented batch of the
user's images it gives dense targets when its output lines up with the student's (a
yolov8-layout detector at the student's input size and preprocessing), and otherwise its
detections above ``pseudo_conf`` as pseudo-labels; labels are added when the dataset has
them. The student takes the teacher's class names and a spec for its own input size; the
result is a normal bundle (torch, and its ONNX / OpenVINO exports through the parity gate).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cvdeploy.bundle import Bundle
from cvdeploy.compress.data import load_train_images
from cvdeploy.compress.loop import LoopOptions, LoopResult, distill_loop
from cvdeploy.compress.loss import DistillLoss
from cvdeploy.compress.measure import (
    RUNTIME_FORMATS,
    ModelRow,
    accuracy,
    artifact_for,
    export_candidate,
    interleaved_latency,
    write_torch_bundle,
)
from cvdeploy.compress.prune import count_macs
from cvdeploy.compress.report import CompressReport, speed_note
from cvdeploy.compress.state import WorkDir, check_budget, check_out
from cvdeploy.compress.teacher import BundleTeacher, LabelledOnce, Teacher, load_teacher_bundle
from cvdeploy.environment import fingerprint
from cvdeploy.errors import UsageError
from cvdeploy.export import gate_images, zoo_spec
from cvdeploy.runtime import RUNTIMES
from cvdeploy.runtime.torch import build_module

__all__ = ["TARGET_MODES", "DistillOptions", "build_student", "distill_model"]

TARGET_MODES = ("auto", "offline", "online")
"""How the teacher teaches a detector (see :class:`DistillOptions`)."""
STATIC_WARMUP = 0.2
"""Offline pseudo-labels: share of training with fixed-anchor assignment (the zoo's)."""

Log = Callable[[str], None]


@dataclass(frozen=True)
class DistillOptions:
    """Options of :func:`distill_model`.

    Attributes:
        student: ``zoo:NAME`` (a fresh zoo architecture) or ``module:factory`` (a function
            returning a ``torch.nn.Module`` whose eval output is the spec's layout).
        teacher_artifact: The teacher's artifact (default: recommended / preferred).
        imgsz: The student's input side (default: the teacher's).
        minutes: Training budget.
        iters: Optimizer steps (instead of, or as well as, minutes).
        lr: Peak learning rate.
        batch: Images per step.
        pseudo_conf: Smallest teacher confidence kept as a pseudo-label.
        pseudo_flip: Offline pseudo-labels from the image and its mirror, fused
            (:meth:`BundleTeacher.label_set` ``flip``): a second teacher pass for more
            precise boxes.
        targets: How the teacher teaches a detector: ``offline`` (it labels every training
            image once, before training; the student then learns these pseudo-labels as
            labels, with the zoo's training recipe, at the cost of a labelled step),
            ``online`` (it runs on every augmented batch: dense outputs when it lines up
            with the student, else pseudo-labels), ``auto`` (offline for a zoo detector
            student learning without labels, else online).
        labels: Use the data's labels (``None``: when it has them).
        eval_data: Labelled data to score teacher and student on.
        runtime: Where the student and the teacher are timed.
        threads: Runtime threads (and torch threads for training).
        seed: Seed.
        resume: Continue an interrupted run.
        overwrite: Replace ``out`` (and a stale working folder).
        work_dir: Working folder (default ``OUT.work``).
        keep_work: Keep the working folder after success.
        progress: Show progress bars.
    """

    student: str = "zoo:detector-p"
    teacher_artifact: str | None = None
    imgsz: int | None = None
    minutes: float | None = 10.0
    iters: int | None = None
    lr: float = 0.005
    batch: int = 8
    pseudo_conf: float = 0.25
    pseudo_flip: bool = True
    targets: str = "auto"
    labels: bool | None = None
    eval_data: Path | None = None
    runtime: str = "onnxruntime"
    threads: int | None = 2
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    work_dir: Path | None = None
    keep_work: bool = False
    progress: bool = True


def build_student(student: str, *, task: str, num_classes: int) -> tuple[torch.nn.Module, str]:
    """``(fresh student module, its builder string)`` for ``zoo:NAME`` or ``module:factory``.

    Raises:
        UsageError: Another form, an unknown zoo name, or a zoo model of the other task.
    """
    if student.startswith("zoo:"):
        from cvdeploy.zoo import build_model, model_task

        name = student[4:]
        if model_task(name) != task:
            raise UsageError(
                f"--student {student} is a {model_task(name)} model and the teacher a {task} one",
                hint="choose a zoo student of the teacher's task",
            )
        return build_model(name, num_classes=num_classes), f"zoo:{name}"
    if student.count(":") >= 1 and not Path(student).exists():
        builder = f"factory:{student}"
        return build_module(builder, num_classes=num_classes), builder
    raise UsageError(
        f"--student must be zoo:NAME or module:factory, got {student!r}",
        hint="e.g. --student zoo:detector-p (an imported ONNX model cannot be the student: "
        "it can be the --teacher, or be trained as INT8 with `cvdeploy qat BUNDLE`)",
    )


def _offline(mode: str, task: str, student: torch.nn.Module, labelled: bool) -> bool:
    """Whether the teacher labels the training set once instead of teaching every batch."""
    possible = task == "detect" and hasattr(student, "forward_raw")
    if mode == "offline" and not possible:
        raise UsageError(
            "--targets offline needs a detector teacher and a zoo detector student (it "
            "trains with the zoo's detection loss on the teacher's pseudo-labels)",
            hint="use --targets online, or --student zoo:detector-p",
        )
    if mode == "offline" and labelled:
        raise UsageError(
            "--targets offline replaces the labels with the teacher's: this dataset has labels",
            hint="add --no-labels to learn from the teacher only, or use --targets online",
        )
    return mode == "offline" or (mode == "auto" and possible and not labelled)


def _validate(o: DistillOptions, out: Path) -> None:
    check_budget(o.minutes, o.iters)
    if o.targets not in TARGET_MODES:
        raise UsageError(
            f"unknown --targets {o.targets!r}", hint=f"choose {', '.join(TARGET_MODES)}"
        )
    if not 0 < o.pseudo_conf < 1:
        raise UsageError(f"--pseudo-conf must be in (0, 1), got {o.pseudo_conf}")
    if o.runtime not in RUNTIME_FORMATS:
        raise UsageError(
            f"unknown runtime {o.runtime!r}", hint=f"choose {', '.join(RUNTIME_FORMATS)}"
        )
    av = RUNTIMES.availability(RUNTIME_FORMATS[o.runtime])
    if not av.available:
        raise UsageError(f"the {o.runtime} runtime is {av.reason}")
    check_out(out, o.overwrite)


def distill_model(
    teacher: Path,
    data: Path,
    out: Path,
    *,
    options: DistillOptions | None = None,
    log: Log | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> CompressReport:
    """Train a student on ``data`` from ``teacher``'s outputs; write it as a bundle at ``out``.

    Args:
        teacher: A bundle cvdeploy can run.
        data: The images (a folder, or a dataset whose train split is used).
        out: The student's bundle.
        options: See :class:`DistillOptions`.
        log: Receives progress lines.
        on_step: Called after every optimizer step with ``(step, loss)``.

    Returns:
        The report: the teacher and the student side by side.

    Raises:
        UsageError: Bad options, a teacher that is not a bundle, a student of another task.
        DatasetError: Missing, empty or too small data.
        CheckFailed: The gate refused the student's export.
        TrainingInterrupted: Ctrl-C; the state is saved for ``resume``.
    """
    o = options or DistillOptions()
    say = log or (lambda _m: None)
    out = Path(out)
    _validate(o, out)
    t_start = time.perf_counter()
    tb = load_teacher_bundle(Path(teacher))
    tspec = tb.spec
    imgsz = o.imgsz or int(max(tspec.imgsz))
    if tspec.task == "detect" and imgsz % 32:
        raise UsageError(f"the student's input size must be a multiple of 32, got {imgsz}")
    student, builder = build_student(o.student, task=tspec.task, num_classes=tspec.num_classes)
    spec = zoo_spec(tspec.task, tuple(tspec.names), (imgsz, imgsz))
    notes: list[str] = []
    images = load_train_images(
        data, task=tspec.task, names=tuple(tspec.names), imgsz=imgsz, labels=o.labels,
        warnings=notes,
    )  # fmt: skip
    offline = _offline(o.targets, tspec.task, student, images.labelled)
    command = {
        "teacher": str(teacher), "student": o.student, "data": str(data), "imgsz": imgsz,
        "minutes": o.minutes, "iters": o.iters, "labels": images.labelled,
        "targets": o.targets,
    }  # fmt: skip
    work, state = WorkDir.open(
        o.work_dir or out.with_name(out.name + ".work"),
        command=command,
        resume=o.resume,
        overwrite=o.overwrite,
    )
    teach = BundleTeacher(
        tb, artifact=o.teacher_artifact, student_imgsz=imgsz, pseudo_conf=o.pseudo_conf,
        threads=o.threads,
    )  # fmt: skip
    for n in notes:
        say(f"note: {n}")
    zoo_like = hasattr(student, "forward_raw") or tspec.task == "classify"
    budget_s = None if o.minutes is None else o.minutes * 60
    teaching: Teacher = teach
    if offline:
        assert images.detect is not None
        t0 = time.perf_counter()
        boxes = teach.label_set(images.detect, flip=o.pseudo_flip)
        spent = time.perf_counter() - t0
        images.labelled = True
        images.use_zoo_schedule()  # the labelled zoo training's sizes and mosaic schedule
        if budget_s is not None:
            budget_s = max(budget_s - spent, 1.0)
        teaching = LabelledOnce(
            f"{teach.identity}, pseudo-labels (conf >= {o.pseudo_conf}"
            f"{', fused with the mirrored image' if o.pseudo_flip else ''}) "
            f"computed once: {boxes} boxes on {images.n} images in {spent:.1f} s"
        )
    mode = "offline" if offline else "online"
    used_labels = images.labelled and not offline  # offline: the labels are the teacher's
    say(
        f"teacher: {teaching.description}; {images.n} images"
        + (" with labels" if used_labels else " (no labels)")
    )
    loss_fn = DistillLoss(
        task=tspec.task, num_classes=tspec.num_classes, model=student,
        static_warmup=STATIC_WARMUP if offline else 0.0,
    )  # fmt: skip
    try:
        res: LoopResult = distill_loop(
            student, teaching, images, loss_fn,
            options=LoopOptions(
                budget_s=budget_s, max_steps=o.iters,
                batch=o.batch, lr=o.lr, seed=o.seed, threads=o.threads, train_mode=zoo_like,
                warmup=0.03, progress=o.progress, title="distill",
                channels_last=hasattr(student, "forward_raw"),
            ),
            save=lambda s: work.save({"loop": s}),
            resume=None if state is None else state["loop"],
            on_step=on_step,
        )  # fmt: skip
    finally:
        teach.close()
    gate = gate_images(data, [], limit=16)
    sb = write_torch_bundle(
        student, out=work.path / "student", name=f"{tb.name}-student", spec=spec,
        builder=builder, samples=gate[:8], tool="distill",
        options={"teacher": str(teacher), "teacher_artifact": teach.artifact,
                 "student": o.student, "labels": used_labels, "targets": mode},
        pruned=False,
    )  # fmt: skip
    sb = export_candidate(sb, runtime=o.runtime, gate_data=data)
    fmt_art = artifact_for(o.runtime)
    x = torch.zeros(1, 3, imgsz, imgsz)
    macs, params = count_macs(student, x)
    t_art = tb.artifact(teach.artifact)
    lat = interleaved_latency(
        {"teacher": (tb, t_art.id), "student": (sb, fmt_art)}, gate, threads=o.threads
    )
    t_row = ModelRow(
        name="teacher", artifact=t_art.id, size_mb=t_art.size_bytes / 1e6,
        p50_ms=lat["teacher"].p50_ms, inference_p50_ms=lat["teacher"].inference_p50_ms,
        speedup=1.0,
    )  # fmt: skip
    s_row = ModelRow(
        name="student", artifact=fmt_art, params=params, macs=macs,
        size_mb=sb.artifact(fmt_art).size_bytes / 1e6, p50_ms=lat["student"].p50_ms,
        inference_p50_ms=lat["student"].inference_p50_ms,
        speedup=lat["teacher"].p50_ms / lat["student"].p50_ms,
    )  # fmt: skip
    s_row.note = speed_note(s_row.speedup, f"{o.runtime} (teacher on {t_art.format})")
    if o.eval_data is not None:
        t_row.metric, t_row.value = accuracy(tb, t_art.id, o.eval_data, record=False)
        s_row.metric, s_row.value = accuracy(sb, fmt_art, o.eval_data)
    training: dict[str, Any] = {
        "iterations": res.steps, "seconds": round(res.elapsed_s, 1),
        "loss_first": res.mean_loss(first=True), "loss_last": res.mean_loss(first=False),
        "resumed_from": res.resumed_from, "teacher": teaching.description,
        "targets": mode, "labels": used_labels, "images": images.n,
    }  # fmt: skip
    report = CompressReport(
        command="distill", bundle=out, source=str(teacher), runtime=o.runtime,
        rows=[t_row, s_row], training=[training], notes=notes,
        cpu=str(fingerprint().get("cpu", {}).get("model", "")),
    )  # fmt: skip
    with Bundle.create(
        out, name=sb.name, spec=spec, overwrite=o.overwrite, action="copy",
        details={"from": "distill"}, copy_of=sb,
    ):  # fmt: skip
        pass
    report.seconds = time.perf_counter() - t_start
    final = Bundle.load(out)
    with final.edit(action="distill", details=report.to_dict()):
        pass
    if not o.keep_work:
        work.remove()
    return report
