"""Preprocessing audit: a planted spec fault is named from labelled data, and every planted
production-pipeline fault is read back from the inputs it fed."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cvdeploy.bundle import Bundle
from cvdeploy.diagnose import fault_tensors, infer_fed_pipeline, score_variants
from cvdeploy.diagnose.features import IMAGE_FEATURES, image_features
from cvdeploy.diagnose.labels import load_labelled
from cvdeploy.diagnose.preprocess_audit import apply_changes, single_changes
from cvdeploy.pipeline import Predictor
from tests.diagnose.conftest import colour_images, edit_manifest

pytest.importorskip("scipy")

FAULTS = [
    [("color", "bgr")],
    [("scale", 1.0)],
    [("mean_std", "imagenet")],
    [("resize", "stretch")],
    [("align", "top-left")],
    [("pad_value", 0)],
]


@pytest.fixture(scope="module")
def cast(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """32 production images and the reference statistics of 60 others (same camera)."""
    root = tmp_path_factory.mktemp("cast")
    ref = [cv2.imread(str(p)) for p in colour_images(root / "ref", 60, seed=10)]
    prod = [cv2.imread(str(p)) for p in colour_images(root / "prod", 32, seed=11)]
    i = IMAGE_FEATURES.index
    means = np.array([image_features(im)[[i("mean_b"), i("mean_g"), i("mean_r")]] for im in ref])
    aspects = np.array([im.shape[1] / im.shape[0] for im in ref])
    return prod, means, aspects


def test_the_variants_tried_cover_the_usual_slips(stack: Path) -> None:
    pp = Bundle.load(stack).spec.preprocess
    fields = {k for k, _ in single_changes(pp, task="detect")}
    assert fields == {"color", "scale", "mean_std", "resize", "align", "pad_value", "interp"}
    new, interp = apply_changes(pp, [("mean_std", "imagenet"), ("interp", "area")])
    assert new.mean == pytest.approx((0.485, 0.456, 0.406)) and interp == "area"
    assert apply_changes(pp, [("scale", 1.0)])[0].scale == 1.0


def test_clean_inputs_show_the_spec(stack: Path, cast: tuple) -> None:  # type: ignore[type-arg]
    prod, means, aspects = cast
    spec = Bundle.load(stack).spec
    rep = infer_fed_pipeline(
        fault_tensors(prod, spec, []),
        spec,
        kind="tensor",
        reference_means=means,
        reference_aspects=aspects,
    )
    assert rep.differences == [], rep.fields
    assert {f.field: f.fed for f in rep.fields}["pad_value"] == 114


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f[0][0])
def test_each_planted_fault_is_named_from_the_inputs_fed(
    stack: Path,
    cast: tuple,
    fault: list,  # type: ignore[type-arg]
) -> None:
    prod, means, aspects = cast
    spec = Bundle.load(stack).spec
    rep = infer_fed_pipeline(
        fault_tensors(prod, spec, fault),
        spec,
        kind="tensor",
        reference_means=means,
        reference_aspects=aspects,
    )
    assert [d.field for d in rep.differences] == [fault[0][0]], rep.fields
    if fault[0][0] == "pad_value":
        assert rep.differences[0].fed == 0


def test_swapped_and_pre_letterboxed_images_are_recognised(stack: Path, cast: tuple) -> None:  # type: ignore[type-arg]
    prod, means, aspects = cast
    spec = Bundle.load(stack).spec
    clean = infer_fed_pipeline(
        prod, spec, kind="image", reference_means=means, reference_aspects=aspects
    )
    assert clean.differences == [], clean.fields
    swapped = [np.ascontiguousarray(im[:, :, ::-1]) for im in prod]
    rep = infer_fed_pipeline(
        swapped, spec, kind="image", reference_means=means, reference_aspects=aspects
    )
    assert [(d.field, d.fed) for d in rep.differences] == [("color", "swapped")]
    boxed = [
        cv2.copyMakeBorder(im, 0, 40, 0, 40, cv2.BORDER_CONSTANT, value=(0, 0, 0)) for im in prod
    ]
    rep = infer_fed_pipeline(
        boxed, spec, kind="image", reference_means=means, reference_aspects=aspects
    )
    fed = {d.field: d.fed for d in rep.differences}
    assert fed["resize"] == "letterboxed" and fed["pad_value"] == 0 and fed["align"] == "top-left"


@pytest.mark.parametrize(
    ("planted", "expect"),
    [({"color": "bgr"}, ("color", "rgb")), ({"scale": 1.0}, ("scale", 1 / 255))],
)
def test_a_wrong_spec_is_named_from_labelled_data(
    stack: Path,
    stack_root: Path,
    planted: dict,
    expect: tuple,  # type: ignore[type-arg]
) -> None:
    def plant(d: dict) -> None:
        d["spec"]["preprocess"].update(planted)

    edit_manifest(stack, plant)
    b = Bundle.load(stack)
    lab = load_labelled(b, stack_root / "data" / "data.yaml")
    idx = list(range(0, 48, 3))
    from cvdeploy.data.io import read_image

    with Predictor.from_bundle(b, batch=1) as pred:
        rep = score_variants(
            pred, [read_image(lab.paths[i]) for i in idx], labels=lab, label_index=idx
        )
    assert rep.winner and rep.winner[0][0] == expect[0]
    assert (
        rep.winner[0][1] == pytest.approx(expect[1])
        if isinstance(expect[1], float)
        else rep.winner[0][1] == expect[1]
    )
    assert rep.best_score > rep.spec_score + 0.1


def test_the_right_spec_has_no_clearly_better_variant(stack: Path, stack_root: Path) -> None:
    b = Bundle.load(stack)
    lab = load_labelled(b, stack_root / "data" / "data.yaml")
    idx = list(range(0, 48, 3))
    from cvdeploy.data.io import read_image

    with Predictor.from_bundle(b, batch=1) as pred:
        rep = score_variants(
            pred, [read_image(lab.paths[i]) for i in idx], labels=lab, label_index=idx
        )
    assert rep.winner == []  # (an untrained model's confidence means nothing: not tested)
