"""Zoo training: assigner/loss units (fast) and short end-to-end runs (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cvdeploy.data.synthetic import make_classification_dataset, make_detection_dataset
from cvdeploy.errors import ModelLoadError, UsageError
from cvdeploy.zoo.assigner import TaskAlignedAssigner, bbox_iou
from cvdeploy.zoo.loss import DetectionLoss
from cvdeploy.zoo.models import Detector, build_model
from cvdeploy.zoo.registry import list_zoo, load_zoo_model
from cvdeploy.zoo.train import train_classifier, train_detector
from cvdeploy.zoo.trainset import AugmentConfig, YoloTrainSet, read_data_yaml
from cvdeploy.zoo.trainutil import Schedule, flush_denormals


def test_ciou_matches_iou_for_identical_and_disjoint_boxes() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert float(bbox_iou(a, a)) == pytest.approx(1.0, abs=1e-5)
    b = torch.tensor([[20.0, 20.0, 30.0, 30.0]])
    assert float(bbox_iou(a, b, ciou=False)) == 0.0
    assert float(bbox_iou(a, b)) < 0.0


def test_assigner_picks_anchors_inside_the_box() -> None:
    anchors = (
        torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="xy"), -1).view(
            -1, 2
        )
        * 8
        + 4
    )
    gt = torch.tensor([[[8.0, 8.0, 32.0, 32.0]]])
    pred = torch.cat((anchors - 12, anchors + 12), -1)[None]
    scores = torch.full((1, 64, 3), 0.5)
    labels, _, target_scores, fg = TaskAlignedAssigner(topk=4)(
        scores, pred, anchors, torch.tensor([[2]]), gt, torch.tensor([[True]])
    )
    assert int(fg.sum()) == 4
    pos = anchors[fg[0]]
    assert bool(((pos > 8) & (pos < 32)).all())
    assert bool((labels[fg] == 2).all())
    assert bool((target_scores[fg][:, 2] > 0).all()) and float(target_scores[~fg].sum()) == 0.0


def test_loss_is_finite_with_and_without_targets() -> None:
    torch.manual_seed(0)
    model = build_model("detector-n", num_classes=3).train()
    assert isinstance(model, Detector)
    crit = DetectionLoss(num_classes=3, reg_max=16, strides=(8, 16, 32))
    feats = model.forward_raw(torch.rand(2, 3, 64, 64))
    targets = torch.tensor([[[1, 4.0, 4.0, 40.0, 30.0]], [[-1, 0.0, 0.0, 0.0, 0.0]]])
    loss, parts = crit(feats, targets)
    assert torch.isfinite(loss) and parts.shape == (3,)
    loss.backward()
    empty, parts_empty = crit([f.detach() for f in feats], torch.zeros(2, 0, 5))
    assert torch.isfinite(empty) and float(parts_empty[0]) == 0.0


def test_schedule_follows_time_budget() -> None:
    sched = Schedule(total_iters=None, budget_s=100.0, warmup=0.1, final_ratio=0.0)
    assert sched.progress(5, 50.0) == pytest.approx(0.5)
    assert sched.lr_factor(0.05) == pytest.approx(0.5)
    assert sched.lr_factor(0.1) == pytest.approx(1.0)
    assert sched.lr_factor(1.0) == pytest.approx(0.0, abs=1e-9)
    both = Schedule(total_iters=10, budget_s=100.0)
    assert both.progress(5, 80.0) == pytest.approx(0.8)


def test_trainset_augmentation_keeps_boxes_inside(tmp_path: Path) -> None:
    make_detection_dataset(tmp_path, n_train=6, n_val=0, imgsz=64, seed=0)
    splits, names = read_data_yaml(tmp_path / "data.yaml")
    ds = YoloTrainSet(splits["train"], names=names, imgsz=64)
    x, targets = ds.batch(
        list(range(6)), rng=np.random.default_rng(0), aug=AugmentConfig(), mosaic=True
    )
    assert x.shape == (6, 3, 64, 64) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    real = targets[targets[..., 0] >= 0]
    assert bool(((real[:, 1:] >= 0) & (real[:, 1:] <= 64)).all())
    assert bool((real[:, 3] > real[:, 1]).all() and (real[:, 4] > real[:, 2]).all())


def test_train_rejects_bad_options(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        train_detector(data=tmp_path, out_dir=tmp_path)
    with pytest.raises(UsageError):
        train_detector(model="classifier-n", data=tmp_path, out_dir=tmp_path, epochs=1)


def test_load_zoo_model_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="available"):
        load_zoo_model("detector-xxl")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError):
        load_zoo_model(bad)
    wrong = tmp_path / "wrong.pt"
    torch.save(
        {
            "model": "detector-n",
            "num_classes": 2,
            "names": ["a", "b"],
            "imgsz": 64,
            "state_dict": {},
        },
        wrong,
    )
    with pytest.raises(ModelLoadError):
        load_zoo_model(wrong)


def test_shipped_weights_load_and_match_metadata() -> None:
    entries = list_zoo()
    if not entries:
        pytest.skip("no shipped weights")
    for entry in entries:
        model, loaded = load_zoo_model(entry.name)
        assert not model.training
        assert loaded.names == entry.names and loaded.params == entry.params
        meta = json.loads(entry.weights.with_suffix(".json").read_text())
        assert meta["params"] == sum(p.numel() for p in model.parameters())
        size = entry.imgsz
        with torch.no_grad():
            out = model(torch.rand(1, 3, size, size))
        assert out.shape[1] == (
            4 + len(entry.names) if entry.task == "detect" else len(entry.names)
        )


@pytest.mark.slow
def test_train_detector_smoke(tmp_path: Path) -> None:
    data = make_detection_dataset(tmp_path / "data", n_train=32, n_val=8, imgsz=64, seed=0)
    calls: list[torch.nn.Module] = []

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        calls.append(model)
        return {"dummy": 1.0}

    result = train_detector(
        data=data, out_dir=tmp_path / "run", epochs=6, imgsz=64, batch=8, seed=0,
        progress=False, evaluate=evaluate, lr=0.004,
    )  # fmt: skip
    assert result.iterations == 24 and result.epochs == 6
    # the training loss of 4 tiny batches is noise; the EMA model's val loss must improve
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    assert len(calls) == 1 and not calls[0].training
    assert result.metrics["dummy"] == 1.0 and "val_loss" in result.metrics
    model, entry = load_zoo_model(result.best)
    assert entry.task == "detect" and entry.imgsz == 64 and len(entry.names) == 6
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 10, 84)
    ckpt = torch.load(result.last, weights_only=True)
    assert ckpt["metrics"]["dummy"] == 1.0 and ckpt["train_args"]["epochs"] == 6


@pytest.mark.slow
def test_train_classifier_smoke(tmp_path: Path) -> None:
    root = make_classification_dataset(
        tmp_path / "data", n_per_class_train=16, n_per_class_val=4, imgsz=32
    )
    result = train_classifier(
        data=root, out_dir=tmp_path / "run", epochs=3, imgsz=32, batch=16, progress=False
    )
    assert 0.0 <= result.metrics["top1"] <= 1.0
    model, entry = load_zoo_model(result.last)
    assert entry.task == "classify"
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 6)


def test_shipped_classifier_has_learnt_the_shapes(tmp_path: Path) -> None:
    """The shipped classifier-n weights classify freshly generated shapes (a seed its training
    and validation never saw) far above chance (1/6): the classification path is not an
    untrained architecture."""
    from cvdeploy.zoo.classify_train import _top1, load_image_folder

    root = make_classification_dataset(
        tmp_path / "data", n_per_class_train=0, n_per_class_val=20, imgsz=64, seed=12345
    )
    model, entry = load_zoo_model("classifier-n")
    x, y, names = load_image_folder(root / "val", imgsz=64, names=list(entry.names))
    assert len(y) == 120 and list(names) == list(entry.names)
    top1 = _top1(model.eval(), x, y)
    assert top1 >= 0.9, f"shipped classifier-n top-1 {top1:.3f} on fresh shapes"


def test_flush_denormals_is_scoped() -> None:
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # a denormal float32
    with flush_denormals():
        assert float(tiny * 1.0) == 0.0
    assert float(tiny * 1.0) > 0.0  # the default is back


def test_bad_warm_scale(tmp_path: Path) -> None:
    data = make_detection_dataset(tmp_path / "data", n_train=4, n_val=2, imgsz=64, seed=0)
    with pytest.raises(UsageError, match="warm_scale"):
        train_detector(data=data, out_dir=tmp_path / "run", epochs=1, imgsz=64, warm_scale=1.5)


def test_resized_trainset_matches_one_read_at_that_size(tmp_path: Path) -> None:
    data = make_detection_dataset(tmp_path / "data", n_train=6, n_val=2, imgsz=64, seed=1)
    splits, names = read_data_yaml(data)
    full = YoloTrainSet(splits["train"], names=names, imgsz=64)
    direct = YoloTrainSet(splits["train"], names=names, imgsz=32)
    derived = full.resized(32)
    assert derived.imgsz == 32 and len(derived) == len(direct)
    for a, b, la, lb in zip(
        derived.images, direct.images, derived.labels, direct.labels, strict=True
    ):
        assert a.shape == b.shape
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0
        np.testing.assert_allclose(la, lb, atol=1e-3)
    x, _ = derived.batch([0, 1])
    assert tuple(x.shape) == (2, 3, 32, 32)


@pytest.mark.parametrize(("align", "pad"), [("center", 114), ("top-left", 0)])
def test_trainset_letterboxes_with_the_spec_alignment_and_pad(
    tmp_path: Path, align: str, pad: int
) -> None:
    import cv2

    folder = tmp_path / "images"
    folder.mkdir()
    wide = np.full((32, 64, 3), 200, np.uint8)  # a 2:1 image: 32 rows of padding at 64 px
    cv2.imwrite(str(folder / "a.png"), wide)
    lab = tmp_path / "labels"
    lab.mkdir()
    (lab / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")  # box 16..48 x 8..24 in the image
    ts = YoloTrainSet([folder], names=["x"], imgsz=64, align=align, pad_value=pad)
    img, labels = ts.sample(0, rng=None, aug=None)
    top = 16 if align == "center" else 0
    rows = np.nonzero((img == 200).all(axis=(1, 2)))[0]
    assert (rows.min(), rows.max()) == (top, top + 31)  # the image band
    band = np.zeros(64, bool)
    band[top : top + 32] = True
    assert (img[~band] == pad).all()  # the spec's pad value elsewhere
    np.testing.assert_allclose(labels[0, 1:], [16, 8 + top, 48, 24 + top], atol=1e-4)
    small = ts.resized(32)  # the warm-up size keeps both
    assert (small.align, small.pad_value) == (align, pad)
    with pytest.raises(ValueError, match="align"):
        YoloTrainSet([folder], names=["x"], imgsz=64, align="bottom")


def test_trainset_stretches_for_a_stretch_spec(tmp_path: Path) -> None:
    import cv2

    from cvdeploy.compress.data import load_train_images
    from cvdeploy.spec import Preprocess

    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((32, 64, 3), 200, np.uint8))
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    ts = YoloTrainSet([folder], names=["x"], imgsz=64, resize="stretch")
    img, labels = ts.sample(0, rng=None, aug=None)
    assert (img == 200).all()  # the whole input is the image: no padding
    np.testing.assert_allclose(labels[0, 1:], [16, 16, 48, 48], atol=1e-4)  # y doubled
    # a crop spec's detection images are letterboxed, with a warning
    for i in range(7):
        cv2.imwrite(str(folder / f"b{i}.png"), np.full((32, 64, 3), 200, np.uint8))
    warns: list[str] = []
    t = load_train_images(folder, task="detect", names=("x",), imgsz=64, labels=False,
                          preprocess=Preprocess(resize="crop"), warnings=warns)  # fmt: skip
    assert t.detect is not None and t.detect.sample(0, rng=None, aug=None)[0].shape == (64, 64, 3)
    assert not (t.detect.sample(0, rng=None, aug=None)[0] == 200).all()  # padded
    assert any("crops" in w for w in warns)
    with pytest.raises(ValueError, match="resize"):
        YoloTrainSet([folder], names=["x"], imgsz=64, resize="crop")
