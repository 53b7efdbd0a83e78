"""``cvdeploy prune``: iterative channel pruning judged by the exported artifact's latency.

Each step removes channels (:func:`cvdeploy.compress.prune.prune_step`), re-estimates the
BatchNorm statistics, recovers by self-distillation from the unpruned model on the user's
images (labels when they have them), exports the result through the parity gate, times it
against the unpruned model's export on the chosen runtime (alternating rounds) and scores it
on ``--eval-data``. It stops at the ratio or target latency asked for, or before a step
that would lose more than ``--max-drop``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

from cvdeploy.bundle import Bundle
from cvdeploy.compress.data import TrainImages, load_train_images
from cvdeploy.compress.loop import LoopOptions, distill_loop, recalibrate_bn
from cvdeploy.compress.loss import DistillLoss, student_output
from cvdeploy.compress.measure import (
    RUNTIME_FORMATS,
    ModelRow,
    accuracy,
    artifact_for,
    export_candidate,
    interleaved_latency,
    write_torch_bundle,
)
from cvdeploy.compress.prune import IMPORTANCES, MAX_RATIO, check_ratio, count_macs, prune_step
from cvdeploy.compress.report import CompressReport, speed_note
from cvdeploy.compress.rewrite import make_prunable
from cvdeploy.compress.sources import Source, names_onnx_model, resolve_source
from cvdeploy.compress.state import WorkDir, check_budget, check_out
from cvdeploy.compress.teacher import TorchTeacher
from cvdeploy.environment import fingerprint
from cvdeploy.errors import CheckFailed, UsageError
from cvdeploy.export import gate_images
from cvdeploy.runtime import RUNTIMES
from cvdeploy.runtime.torch import conform_to_state_dict

__all__ = ["PruneOptions", "prune_model"]

Log = Callable[[str], None]


@dataclass(frozen=True)
class PruneOptions:
    """Options of :func:`prune_model`.

    Attributes:
        ratio: Fraction of channels to remove (default 0.3 when no target latency).
        target_latency: Stop once the exported model's end-to-end p50 is at most this
            fraction of the unpruned one's (e.g. 0.7), pruning up to ``max_ratio``.
        max_ratio: The largest ratio tried for a target latency.
        runtime: ``onnxruntime`` or ``openvino``: where latency is measured.
        importance: Channel importance criterion (see :data:`IMPORTANCES`).
        round_to: Keep channel counts multiples of this (``None`` or 1: any).
        steps: Pruning steps (each followed by recovery and a measurement).
        minutes: Recovery budget of the whole run (split between the steps).
        iters: Optimizer steps per pruning step (instead of, or as well as, minutes).
        max_drop: Stop before a step whose metric drops more than this (needs eval_data).
        eval_data: Labelled data for mAP / top-1.
        labels: Use the training data's labels (``None``: when it has them).
        batch: Images per optimizer step.
        lr: Peak learning rate of recovery.
        threads: Runtime threads for latency (and torch threads for training).
        latency_rounds: Alternating rounds of each latency measurement.
        seed: Seed.
        resume: Continue an interrupted run from its working folder.
        overwrite: Replace ``out`` (and a stale working folder).
        work_dir: The working folder (default: ``OUT.work`` beside ``out``).
        keep_work: Keep the working folder after success.
        int8: Also quantize the pruned model with this backend (``openvino`` or
            ``onnxruntime``) and add a ``pruned + INT8`` row.
        calib: Calibration data of ``int8`` (default: the training data).
        progress: Show progress bars.
    """

    ratio: float | None = None
    target_latency: float | None = None
    max_ratio: float = 0.75
    runtime: str = "onnxruntime"
    importance: str = "l2"
    round_to: int | None = 8
    steps: int = 3
    minutes: float | None = 10.0
    iters: int | None = None
    max_drop: float | None = None
    eval_data: Path | None = None
    labels: bool | None = None
    batch: int = 8
    lr: float = 0.002
    threads: int | None = 2
    latency_rounds: int = 3
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    work_dir: Path | None = None
    keep_work: bool = False
    int8: str | None = None
    calib: Path | None = None
    progress: bool = True


def _validate(o: PruneOptions, out: Path) -> None:
    if o.ratio is not None and o.target_latency is not None:
        raise UsageError("give --ratio or --target-latency, not both")
    if o.target_latency is not None and not 0 < o.target_latency < 1:
        raise UsageError(
            f"--target-latency must be a fraction of the unpruned latency in (0, 1), "
            f"got {o.target_latency}",
            hint="e.g. --target-latency 0.7x",
        )
    if not 0 < o.max_ratio <= MAX_RATIO:
        raise UsageError(f"--max-ratio must be in (0, {MAX_RATIO}], got {o.max_ratio}")
    if o.runtime not in RUNTIME_FORMATS:
        raise UsageError(
            f"unknown runtime {o.runtime!r}", hint=f"choose {', '.join(RUNTIME_FORMATS)}"
        )
    if o.importance not in IMPORTANCES:
        raise UsageError(
            f"unknown importance {o.importance!r}", hint=f"choose {', '.join(IMPORTANCES)}"
        )
    if o.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {o.steps}")
    check_budget(o.minutes, o.iters, what="recovery")
    if o.round_to is not None and o.round_to < 1:
        raise UsageError(f"--round-to must be >= 1, got {o.round_to}")
    if o.max_drop is not None and o.eval_data is None:
        raise UsageError("--max-drop needs --eval-data (labelled data to measure the drop on)")
    if o.int8 is not None and o.int8 not in ("openvino", "onnxruntime"):
        raise UsageError(f"--int8 must be openvino or onnxruntime, got {o.int8!r}")
    av = RUNTIMES.availability(RUNTIME_FORMATS[o.runtime])
    if not av.available:
        raise UsageError(f"the {o.runtime} runtime is {av.reason}")
    check_out(out, o.overwrite)


def _schedule(final: float, steps: int) -> list[float]:
    """Cumulative channel ratio after each step (linear)."""
    return [final * (i + 1) / steps for i in range(steps)]


def _step_ratio(done: float, target: float) -> float:
    """The fraction of the current channels to remove to go from ``done`` to ``target``."""
    return 1 - (1 - target) / (1 - done)


def _refuse_onnx(source: str) -> NoReturn:
    raise UsageError(
        f"{source} is an imported ONNX model: pruning needs the model's own torch code (an "
        "ONNX graph run as torch has fixed reshapes and functional layers that channel "
        "pruning cannot follow)",
        hint=f"`cvdeploy qat {source} --data IMAGES` trains it as INT8; or prune the model "
        "its training code builds (module:factory)",
    )


def prune_model(
    source: str,
    data: Path,
    out: Path,
    *,
    options: PruneOptions | None = None,
    spec_file: Path | None = None,
    log: Log | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> CompressReport:
    """Prune ``source`` on the images in ``data`` and write the result as a bundle at ``out``.

    Args:
        source: A zoo model, a checkpoint, ``module:factory`` (with ``spec_file``), or a
            bundle with a torch artifact.
        data: The images to recover on (a folder, or a dataset whose train split is used).
        out: The bundle written (a torch artifact and its gated ONNX / OpenVINO exports).
        options: See :class:`PruneOptions`.
        spec_file: Spec of a ``module:factory`` source.
        log: Receives progress lines.
        on_step: Called after every optimizer step with ``(step, loss)``.

    Returns:
        The report (also recorded in the bundle's history).

    Raises:
        UsageError: Bad options, a ratio that would break the head, a bad source.
        DatasetError: Missing, empty or too small data.
        CheckFailed: No step kept within ``max_drop``, or the gate refused an export.
        TrainingInterrupted: Ctrl-C; the state is saved for ``resume``.
    """
    o = options or PruneOptions()
    say = log or (lambda _m: None)
    out = Path(out)
    _validate(o, out)
    t_start = time.perf_counter()
    if names_onnx_model(source):
        _refuse_onnx(source)
    src = resolve_source(source, spec_file=spec_file)
    if src.from_onnx:
        _refuse_onnx(source)
    final = o.ratio if o.ratio is not None else (o.max_ratio if o.target_latency else 0.3)
    notes: list[str] = []
    images = load_train_images(
        data, task=src.spec.task, names=src.spec.names, imgsz=src.imgsz, labels=o.labels,
        warnings=notes, preprocess=src.spec.preprocess,
    )  # fmt: skip
    for n in notes:
        say(f"note: {n}")
    x_example = torch.zeros(1, 3, src.imgsz, src.imgsz)
    model = make_prunable(copy.deepcopy(src.module)).eval()
    with torch.no_grad():
        diff = float((_first(model(x_example)) - _first(src.module(x_example))).abs().max())
    if diff > 1e-4:
        raise CheckFailed(f"rewriting the model for pruning changed its output ({diff:.3g})")
    check_ratio(model, x_example, ratio=final, round_to=o.round_to)
    command = {
        "source": source, "data": str(data), "ratio": final, "target": o.target_latency,
        "steps": o.steps, "importance": o.importance, "round_to": o.round_to,
        "runtime": o.runtime, "minutes": o.minutes, "iters": o.iters,
    }  # fmt: skip
    work, state = WorkDir.open(
        o.work_dir or out.with_name(out.name + ".work"),
        command=command,
        resume=o.resume,
        overwrite=o.overwrite,
    )
    gate = gate_images(data, [], limit=16)
    fmt_art = artifact_for(o.runtime)
    src_bundle = _source_bundle(src, work.path / "source", o, gate, data, say)
    src_macs, src_params = count_macs(src.module, x_example)
    src_row = ModelRow(
        name="source",
        artifact=fmt_art,
        params=src_params,
        macs=src_macs,
        size_mb=src_bundle.artifact(fmt_art).size_bytes / 1e6,
        ratio=0.0,
    )
    if o.eval_data is not None:
        src_row.metric, src_row.value = accuracy(src_bundle, fmt_art, o.eval_data)
    teacher = TorchTeacher(src.module, task=src.spec.task)
    loss_fn = DistillLoss(task=src.spec.task, num_classes=src.spec.num_classes, model=model)
    zoo_like = hasattr(model, "forward_raw")
    rows: list[dict[str, Any]] = []
    training: list[dict[str, Any]] = []
    done_ratio, start, loop_state = 0.0, 0, None
    src_p50s: list[float] = []
    if state is not None:
        rows, training = list(state["rows"]), list(state["training"])
        src_p50s = list(state["src_p50s"])
        start, done_ratio = int(state["step"]), float(state["done_ratio"])
        conform_to_state_dict(model, state["model"])
        model.load_state_dict(state["model"])
        loop_state = state.get("loop")
        say(f"resuming after step {start} of {o.steps} (ratio {done_ratio:.2f})")
    schedule = _schedule(final, o.steps)
    budget = None if o.minutes is None else o.minutes * 60 / o.steps
    stop_reason = "ratio reached"
    for k in range(start, o.steps):
        target = schedule[k]
        if loop_state is None:
            r = _step_ratio(done_ratio, target)
            changed = prune_step(
                model, x_example, ratio=r, importance=o.importance, round_to=o.round_to,
                gradient=_taylor_gradient(teacher, images, loss_fn, o),
            )  # fmt: skip
            say(f"step {k + 1}/{o.steps}: pruned to ratio {target:.2f} ({len(changed)} layers)")
            if zoo_like:
                recalibrate_bn(model, images, seed=o.seed + k)

        def save_loop(s: dict[str, Any], k: int = k, done: float = done_ratio) -> None:
            work.save(
                {"rows": rows, "training": training, "src_p50s": src_p50s, "step": k,
                 "done_ratio": done, "model": s["model"], "loop": s}
            )  # fmt: skip

        if loop_state is not None:
            conform_to_state_dict(model, loop_state["model"])
        res = distill_loop(
            model, teacher, images, loss_fn,
            options=LoopOptions(
                budget_s=budget, max_steps=o.iters, batch=o.batch, lr=o.lr, seed=o.seed + k,
                threads=o.threads, train_mode=zoo_like, progress=o.progress,
                title=f"recover {k + 1}/{o.steps}",
            ),
            save=save_loop, resume=loop_state, on_step=on_step,
        )  # fmt: skip
        loop_state = None
        training.append(
            {"step": k + 1, "iterations": res.steps, "seconds": round(res.elapsed_s, 1),
             "loss_first": res.mean_loss(first=True), "loss_last": res.mean_loss(first=False),
             "resumed_from": res.resumed_from}
        )  # fmt: skip
        done_ratio = target
        step_bundle = write_torch_bundle(
            model, out=work.path / f"step-{k + 1}", name=f"{src.name}-pruned", spec=src.spec,
            builder=f"pruned:{src.builder}", samples=gate[:8] or src_bundle.sample_images(),
            tool="prune", options={"ratio": target, "importance": o.importance,
                                   "round_to": o.round_to, "source": source},
            pruned=True,
        )  # fmt: skip
        step_bundle = export_candidate(step_bundle, runtime=o.runtime, gate_data=data)
        lat = interleaved_latency(
            {"source": (src_bundle, fmt_art), "pruned": (step_bundle, fmt_art)},
            _latency_images(gate, src_bundle), rounds=o.latency_rounds, threads=o.threads,
        )  # fmt: skip
        src_p50s.append(lat["source"].p50_ms)
        macs, params = count_macs(model, x_example)
        row = ModelRow(
            name=f"step {k + 1}", artifact=fmt_art, params=params, macs=macs,
            size_mb=step_bundle.artifact(fmt_art).size_bytes / 1e6,
            p50_ms=lat["pruned"].p50_ms, inference_p50_ms=lat["pruned"].inference_p50_ms,
            ratio=target,
        )  # fmt: skip
        speedup = lat["source"].p50_ms / lat["pruned"].p50_ms
        row.speedup = speedup
        row.note = speed_note(row.speedup, o.runtime)
        if o.eval_data is not None:
            row.metric, row.value = accuracy(step_bundle, fmt_art, o.eval_data)
        say(
            f"step {k + 1}: {row.p50_ms:.2f} ms vs {lat['source'].p50_ms:.2f} ms "
            f"({1 / speedup:.2f}x latency)"
            + ("" if row.value is None else f", {row.metric} {row.value:.4f}")
        )
        over = (
            o.max_drop is not None
            and src_row.value is not None
            and row.value is not None
            and src_row.value - row.value > o.max_drop
        )
        if over:
            row.note = (row.note + "; " if row.note else "") + f"over --max-drop {o.max_drop}"
            rows.append(row.to_dict() | {"accepted": False})
            stop_reason = f"step {k + 1} lost more than --max-drop {o.max_drop}"
            break
        rows.append(row.to_dict() | {"accepted": True})
        work.save(
            {"rows": rows, "training": training, "src_p50s": src_p50s, "step": k + 1,
             "done_ratio": done_ratio, "model": copy.deepcopy(model.state_dict()), "loop": None}
        )  # fmt: skip
        if o.target_latency is not None and 1 / speedup <= o.target_latency:
            stop_reason = f"target latency {o.target_latency}x reached"
            break
    else:
        if o.target_latency is not None:
            stop_reason = (
                f"target latency {o.target_latency}x not reached at ratio {final} "
                "(the largest tried: raise --max-ratio)"
            )
    accepted = [r for r in rows if r["accepted"]]
    if not accepted:
        raise CheckFailed(
            f"even the first pruning step lost more than --max-drop {o.max_drop}: "
            "nothing was saved",
            hint="use a smaller --ratio, more --steps or a longer --minutes",
        )
    best = accepted[-1]
    best_dir = work.path / f"step-{best['name'].split()[-1]}"
    if src_p50s:
        src_row.p50_ms = float(sorted(src_p50s)[len(src_p50s) // 2])
        src_row.speedup = 1.0
    table = [src_row] + [ModelRow(**{k: v for k, v in r.items() if k != "accepted"}) for r in rows]
    for t in table:
        if t.name == best["name"]:
            t.note = (t.note + "; " if t.note else "") + "selected"
    report = CompressReport(
        command="prune", bundle=out, source=source, runtime=o.runtime, rows=table,
        target={"kind": "latency" if o.target_latency else "ratio",
                "value": o.target_latency or final, "stop": stop_reason,
                "met": o.target_latency is None or 1 / best["speedup"] <= o.target_latency},
        training=training, notes=notes, cpu=str(fingerprint().get("cpu", {}).get("model", "")),
    )  # fmt: skip
    final_bundle = _finish(Bundle.load(best_dir), out, report, o, src_bundle, data, say)
    report.seconds = time.perf_counter() - t_start
    _record(final_bundle, report)
    if not o.keep_work:
        work.remove()
    return report


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, list | tuple) else out


def _latency_images(gate: list[Path], src_bundle: Bundle) -> list[Path]:
    return gate or src_bundle.sample_images()


def _taylor_gradient(
    teacher: TorchTeacher, images: TrainImages, loss_fn: DistillLoss, o: PruneOptions
) -> Callable[[torch.nn.Module], None] | None:
    if o.importance != "taylor":
        return None

    def grad(model: torch.nn.Module) -> None:
        gen = __import__("numpy").random.default_rng(o.seed)
        idx = gen.integers(0, images.n, min(16, images.n)).tolist()
        x, labels = images.batch(idx, rng=gen, augment=False)
        model.eval()
        out = student_output(model, x, task=images.task)
        loss, _ = loss_fn(out, teacher.targets(x), labels)
        loss.backward()

    return grad


def _source_bundle(
    src: Source, path: Path, o: PruneOptions, gate: list[Path], data: Path, say: Log
) -> Bundle:
    if (path / "bundle.json").is_file():
        b = Bundle.load(path)
        if any(a.id == artifact_for(o.runtime) for a in b.manifest.artifacts):
            return b
    say("exporting the unpruned model (the reference for latency and accuracy)")
    b = write_torch_bundle(
        src.module, out=path, name=src.name, spec=src.spec, builder=src.builder,
        samples=gate[:8], tool="prune-source", options={"source": src.described}, pruned=src.pruned,
    )  # fmt: skip
    return export_candidate(b, runtime=o.runtime, gate_data=data)


def _finish(
    best: Bundle,
    out: Path,
    report: CompressReport,
    o: PruneOptions,
    src_bundle: Bundle,
    data: Path,
    say: Log,
) -> Bundle:
    with Bundle.create(
        out,
        name=best.name,
        spec=best.spec,
        overwrite=o.overwrite,
        action="copy",
        details={"from": "prune"},
        copy_of=best,
    ):
        pass
    bundle = Bundle.load(out)
    if o.int8 is None:
        return bundle
    from cvdeploy.optimize import QuantizeOptions, quantize_bundle

    say(f"quantizing the pruned model to INT8 ({o.int8})")
    q = quantize_bundle(
        bundle,
        o.calib or data,
        options=QuantizeOptions(
            backend=o.int8,
            eval_data=o.eval_data,
            force=True,
            measure=False,
            progress=o.progress,
            threads=o.threads,
        ),
        log=say,
    )
    bundle = Bundle.load(out)
    fmt_art = artifact_for(o.runtime)
    lat = interleaved_latency(
        {
            "source": (src_bundle, fmt_art),
            "pruned": (bundle, fmt_art),
            "int8": (bundle, q.artifact),
        },
        _latency_images([], src_bundle),
        rounds=o.latency_rounds,
        threads=o.threads,
    )
    base = lat["source"].p50_ms
    src_row = report.rows[0]
    pruned_row = next(r for r in report.rows if "selected" in r.note)
    row = ModelRow(
        name="pruned + INT8",
        artifact=q.artifact,
        params=pruned_row.params,
        macs=pruned_row.macs,
        size_mb=bundle.artifact(q.artifact).size_bytes / 1e6,
        metric=src_row.metric,
        p50_ms=lat["int8"].p50_ms,
        inference_p50_ms=lat["int8"].inference_p50_ms,
        speedup=base / lat["int8"].p50_ms,
        ratio=pruned_row.ratio,
        note=f"same round: source {base:.2f} ms, pruned {lat['pruned'].p50_ms:.2f} ms",
    )
    row.value = next(
        (v.map50_95 for v in q.rows if v.artifact == q.artifact and v.map50_95 is not None),
        None,
    )
    report.rows.append(row)
    return bundle


def _record(bundle: Bundle, report: CompressReport) -> None:
    with bundle.edit(action="prune" if report.command == "prune" else report.command,
                     details=report.to_dict()):  # fmt: skip
        pass
