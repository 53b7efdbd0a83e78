"""The C2f rewrite that makes the zoo models prunable, and loading pruned weights."""

from __future__ import annotations

import copy

import torch

from cvdeploy.compress.rewrite import SplitC2f, build_prunable, make_prunable
from cvdeploy.runtime.torch import conform_to_state_dict
from cvdeploy.zoo import build_model, load_zoo_model


def test_rewrite_is_numerically_identical() -> None:
    model, _ = load_zoo_model("detector-n")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        got = make_prunable(copy.deepcopy(model)).eval()(x)
    assert torch.equal(ref, got)
    rewritten = make_prunable(copy.deepcopy(model))
    assert any(isinstance(m, SplitC2f) for m in rewritten.modules())


def test_build_prunable_conforms_to_pruned_weights() -> None:
    from cvdeploy.compress.prune import prune_step

    model = make_prunable(build_model("classifier-n", num_classes=6)).eval()
    x = torch.rand(2, 3, 64, 64)
    prune_step(model, x, ratio=0.5, round_to=8)
    state = model.state_dict()
    fresh = build_prunable("zoo:classifier-n", num_classes=6)
    conform_to_state_dict(fresh, state)
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(model(x), fresh.eval()(x))
