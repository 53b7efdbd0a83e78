"""Distillation from an ONNX Runtime teacher bundle: the loss, resume, bad input, the command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from cvdeploy.bundle import Bundle
from cvdeploy.cli.main import app
from cvdeploy.compress import DistillOptions, TrainingInterrupted, distill_model
from cvdeploy.compress.data import load_train_images
from cvdeploy.compress.loop import LoopOptions, distill_loop
from cvdeploy.compress.loss import DistillLoss
from cvdeploy.compress.teacher import BundleTeacher
from cvdeploy.errors import UsageError
from cvdeploy.zoo import build_model


def _images(det64: Path) -> Path:
    return det64.parent / "images" / "train"


def test_loss_decreases_with_an_onnx_runtime_teacher(onnx_teacher: Path, det64: Path) -> None:
    teacher_bundle = Bundle.load(onnx_teacher)
    assert {a.format for a in teacher_bundle.manifest.artifacts} >= {"onnx"}
    teacher = BundleTeacher(teacher_bundle, artifact="onnx-fp32", student_imgsz=64)
    assert teacher.dense_ok  # same layout, size and preprocessing: dense targets
    names = teacher_bundle.spec.names
    images = load_train_images(_images(det64), task="detect", names=names, imgsz=64, labels=False)
    assert not images.labelled
    student = build_model("detector-p", num_classes=len(names))
    loss = DistillLoss(task="detect", num_classes=len(names), model=student)
    res = distill_loop(
        student, teacher, images, loss,
        options=LoopOptions(max_steps=40, batch=8, lr=0.005, progress=False, ema_decay=0),
    )  # fmt: skip
    teacher.close()
    assert res.steps == 40
    assert res.mean_loss(first=False) < 0.95 * res.mean_loss(first=True)
    assert set(res.parts) == {"kd_cls", "kd_box"}  # no labels were used


def test_pseudo_labels_when_the_teacher_does_not_line_up(onnx_teacher: Path, det64: Path) -> None:
    teacher = BundleTeacher(Bundle.load(onnx_teacher), student_imgsz=96, pseudo_conf=0.2)
    assert not teacher.dense_ok
    images = load_train_images(_images(det64), task="detect", names=teacher.spec.names, imgsz=96)
    x, _ = images.batch([0, 1, 2, 3], rng=None, augment=False)
    t = teacher.targets(x)
    teacher.close()
    assert t.dense is None and t.boxes is not None and t.boxes.shape[0] == 4
    found = t.boxes[t.boxes[..., 0] >= 0]
    assert len(found) and float(found[:, 1:].max()) <= 96.5


@pytest.mark.parametrize("flip", [False, True])
def test_offline_pseudo_labels_replace_the_sets_labels_once(
    onnx_teacher: Path, det64: Path, flip: bool
) -> None:
    teacher = BundleTeacher(Bundle.load(onnx_teacher), student_imgsz=64, pseudo_conf=0.05)
    images = load_train_images(
        _images(det64), task="detect", names=teacher.spec.names, imgsz=64, labels=False
    )
    assert images.detect is not None
    assert not any(len(lab) for lab in images.detect.labels)  # labels=False: not read
    labelled = load_train_images(
        _images(det64), task="detect", names=teacher.spec.names, imgsz=64
    ).detect
    assert labelled is not None
    real = [lab.copy() for lab in labelled.labels]
    # batches that do not divide the set; flip: the mirrored views fused in
    boxes = teacher.label_set(images.detect, batch=5, flip=flip)
    teacher.close()
    got = images.detect.labels
    assert boxes == sum(len(lab) for lab in got) > 0
    assert len(got) == len(real) and all(lab.shape[1] == 5 for lab in got)
    assert not all(np.array_equal(a, b) for a, b in zip(got, real, strict=True))
    allb = np.concatenate([lab for lab in got if len(lab)])
    assert set(np.unique(allb[:, 0]).astype(int)) <= set(range(len(teacher.spec.names)))
    assert allb[:, 1:].min() >= -0.5 and allb[:, 1:].max() <= 64.5
    # the pseudo-labels line up with the objects: most overlap a real box of the same image
    hits = 0
    for lab, ref in zip(got, real, strict=True):
        for b in lab:
            ix = np.clip(np.minimum(b[3], ref[:, 3]) - np.maximum(b[1], ref[:, 1]), 0, None)
            iy = np.clip(np.minimum(b[4], ref[:, 4]) - np.maximum(b[2], ref[:, 2]), 0, None)
            hits += bool(len(ref) and (ix * iy).max() > 0)
    assert hits >= 0.5 * boxes


def test_offline_distillation_learns_the_pseudo_labels(
    tmp_path: Path, onnx_teacher: Path, det64: Path
) -> None:
    rep = distill_model(
        onnx_teacher, _images(det64), tmp_path / "s",
        options=DistillOptions(
            student="zoo:detector-p", minutes=None, iters=6, labels=False, progress=False,
            threads=None, pseudo_conf=0.05,
        ),
    )  # fmt: skip
    tr = rep.training[0]
    assert tr["targets"] == "offline" and tr["labels"] is False and tr["iterations"] == 6
    assert "computed once" in tr["teacher"]
    with pytest.raises(UsageError, match="replaces the labels"):
        distill_model(
            onnx_teacher, det64, tmp_path / "l",
            options=DistillOptions(targets="offline", labels=True, iters=1, progress=False),
        )  # fmt: skip


def test_resume_after_interruption(tmp_path: Path, onnx_teacher: Path, det64: Path) -> None:
    out = tmp_path / "student"
    opts = DistillOptions(
        student="zoo:detector-p", minutes=None, iters=12, labels=False, progress=False,
        threads=None,
    )  # fmt: skip

    def interrupt(step: int, _loss: float) -> None:
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="step 5"):
        distill_model(onnx_teacher, _images(det64), out, options=opts, on_step=interrupt)
    assert (tmp_path / "student.work" / "state.pt").is_file()
    assert not out.exists()
    # the same command without --resume refuses to clobber the saved state
    with pytest.raises(UsageError, match="--resume"):
        distill_model(onnx_teacher, _images(det64), out, options=opts)
    seen: list[int] = []
    rep = distill_model(
        onnx_teacher, _images(det64), out,
        options=DistillOptions(**{**opts.__dict__, "resume": True}),
        on_step=lambda s, _l: seen.append(s),
    )  # fmt: skip
    assert seen[0] == 6 and seen[-1] == 12  # continued after step 5, to 12 in all
    tr = rep.training[0]
    assert tr["resumed_from"] == 5 and tr["iterations"] == 12
    b = Bundle.load(out)
    assert b.spec.names == Bundle.load(onnx_teacher).spec.names
    assert b.artifact("onnx-fp32").latest("parity").passed  # type: ignore[union-attr]
    assert b.manifest.history[-1].action == "distill"
    assert not (tmp_path / "student.work").exists()


def _run(args: list[str]) -> tuple[int, str]:
    r = CliRunner().invoke(app, args)
    return r.exit_code, r.output


def test_bad_teacher_student_or_data_exit_2(
    tmp_path: Path, onnx_teacher: Path, det64: Path
) -> None:
    base = ["distill", "--out", str(tmp_path / "o"), "--iters", "1"]
    code, out = _run([*base, "--teacher", str(tmp_path), "--data", str(_images(det64))])
    assert code == 2 and "not a bundle" in out
    code, out = _run(
        [*base, "--teacher", str(onnx_teacher), "--data", str(_images(det64)),
         "--student", "zoo:classifier-n"]
    )  # fmt: skip
    assert code == 2 and "classify" in out
    code, out = _run(
        [*base, "--teacher", str(onnx_teacher), "--data", str(_images(det64)),
         "--targets", "sometimes"]
    )  # fmt: skip
    assert code == 2 and "unknown --targets" in out and "offline" in out
    (tmp_path / "empty").mkdir()
    code, out = _run([*base, "--teacher", str(onnx_teacher), "--data", str(tmp_path / "empty")])
    assert code == 2 and "no usable images" in out and "Traceback" not in out


@pytest.mark.slow
def test_distill_command_json(tmp_path: Path, onnx_teacher: Path, det64: Path) -> None:
    code, text = _run(
        ["distill", "--teacher", str(onnx_teacher), "--data", str(_images(det64)),
         "--out", str(tmp_path / "s"), "--iters", "4", "--eval-data", str(det64), "--json"]
    )  # fmt: skip
    assert code == 0, text
    rep = json.loads(text[text.index("{") :])
    assert [r["name"] for r in rep["rows"]] == ["teacher", "student"]
    assert rep["rows"][1]["macs"] > 0 and rep["rows"][0]["value"] is not None


def test_offline_schedule_follows_the_zoo_training(det256: Path, monkeypatch: Any) -> None:
    """Offline distillation trains like the labelled zoo training it is compared with:
    192 px until 60% of the schedule, 256 px after, mosaic off after 85%."""
    from cvdeploy.zoo.train import CLOSE_MOSAIC, WARM_UNTIL

    images = load_train_images(
        _images(det256), task="detect", names=("a",) * 3, imgsz=256, labels=False
    )
    assert images.detect is not None
    rng = np.random.default_rng(0)
    x, _ = images.batch([0, 1], rng=rng, progress=0.1)
    assert x.shape[-1] == 256  # no schedule: always the full size
    images.use_zoo_schedule()
    assert images.warm is not None and images.warm.imgsz == 192
    seen: list[tuple[int, bool]] = []
    for ts in (images.warm, images.detect):
        orig = ts.batch

        def spy(idx: Any, *, _orig: Any = orig, _ts: Any = ts, **kw: Any) -> Any:
            seen.append((_ts.imgsz, kw["mosaic"]))
            return _orig(idx, **kw)

        monkeypatch.setattr(ts, "batch", spy)
    shapes = [
        images.batch([0, 1], rng=rng, progress=p)[0].shape[-1]
        for p in (0.0, WARM_UNTIL - 0.01, WARM_UNTIL, CLOSE_MOSAIC - 0.01, CLOSE_MOSAIC)
    ]
    assert shapes == [192, 192, 256, 256, 256]
    assert [m for _, m in seen] == [True, True, True, True, False]
    assert images.batch([0], rng=None, augment=False, progress=0.0)[0].shape[-1] == 192


def test_channels_last_training_returns_a_default_format_student(
    onnx_teacher: Path, det64: Path
) -> None:
    teacher = BundleTeacher(Bundle.load(onnx_teacher), artifact="onnx-fp32", student_imgsz=64)
    names = teacher.spec.names
    images = load_train_images(_images(det64), task="detect", names=names, imgsz=64, labels=False)
    student = build_model("detector-p", num_classes=len(names))
    loss = DistillLoss(task="detect", num_classes=len(names), model=student)
    res = distill_loop(
        student, teacher, images, loss,
        options=LoopOptions(max_steps=3, batch=4, progress=False, channels_last=True),
    )  # fmt: skip
    teacher.close()
    assert res.steps == 3 and np.isfinite(res.losses).all()
    convs = [p for p in student.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous() for p in convs)


def test_labels_of_other_classes_are_not_read_when_unused(det64: Path) -> None:
    """A folder whose labels/ name classes the model does not have: ignored (with a
    warning) unless labels are required; never a failure when they are not wanted."""
    from cvdeploy.errors import DatasetError

    one_class = ("thing",)  # the synthetic labels use class ids 0..2
    notes: list[str] = []
    got = load_train_images(
        _images(det64), task="detect", names=one_class, imgsz=64, warnings=notes
    )
    assert not got.labelled and any("class id out of range" in n for n in notes)
    assert load_train_images(_images(det64), task="detect", names=one_class, imgsz=64,
                             labels=False).n == got.n  # fmt: skip
    with pytest.raises(DatasetError, match="class id out of range"):
        load_train_images(_images(det64), task="detect", names=one_class, imgsz=64, labels=True)


def test_fuse_views_averages_matches_and_scores_misses_as_zero() -> None:
    from cvdeploy.compress.teacher import _unflip, fuse_views

    a = np.array([[0, 10, 10, 50, 50], [1, 60, 60, 90, 90], [2, 0, 0, 5, 5]], np.float32)
    sa = np.array([0.9, 0.8, 0.5], np.float32)
    # the mirrored view (width 100) sees the first box shifted by 2 px, the second as
    # another class, misses the third
    b = _unflip(np.array([[0, 48, 10, 88, 50], [2, 10, 60, 40, 90]], np.float32), 100)
    assert b[0].tolist() == [0, 12, 10, 52, 50]
    sb = np.array([0.3, 0.7], np.float32)
    got = fuse_views([a, b], [sa, sb], keep=0.3)
    # box 0: (0.9 * 10 + 0.3 * 12) / 1.2 = 10.5 etc., score 0.6; box 1 class 1: 0.4 alone;
    # class 2 from view b: 0.35; the small class-2 box of view a: 0.25 < 0.3, dropped
    assert got.shape == (3, 5)
    assert np.allclose(got[0], [0, 10.5, 10, 50.5, 50])
    assert got[1].tolist() == [1, 60, 60, 90, 90] and got[2].tolist() == [2, 60, 60, 90, 90]
    assert fuse_views([a, b], [sa, sb], keep=0.45).shape == (1, 5)
    assert fuse_views([], [], keep=0.3).shape == (0, 5)
