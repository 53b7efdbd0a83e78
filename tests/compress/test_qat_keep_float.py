"""QAT's --keep-float: the one activation quantizer that carries the output error stays float."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from cvdeploy.compress.qdq import (
    dominant_quantizers,
    export_qdq_onnx,
    freeze_ranges,
    keep_float,
    prepare_qat,
    qdq_structure,
)
from cvdeploy.errors import UsageError


class _Net(nn.Module):
    """Three convolutions and a classifier. ``stretched``: the first convolution's channel 0
    is 1000x larger and the second reads it 1000x smaller, so the float output is the same
    kind of function but one per-tensor range (the first activation's) spans two orders of
    magnitude more than the values the next layer relies on (YOLOX-Nano's 0..255 stem)."""

    def __init__(self, *, stretched: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5, bias=False)
        self.a1, self.a2, self.a3 = nn.SiLU(), nn.SiLU(), nn.SiLU()
        if stretched:
            with torch.no_grad():
                self.c1.weight[0] *= 1000
                self.c1.bias[0] *= 1000
                self.c2.weight[:, 0] /= 1000

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a3(self.c3(self.a2(self.c2(self.a1(self.c1(x))))))
        return self.fc(y.mean((2, 3)))


def _calibrated(model: nn.Module) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    prepared = prepare_qat(model, torch.rand(2, 3, 32, 32))
    with torch.no_grad():
        prepared(x)
        ref = model(x)
    freeze_ranges(prepared)
    return prepared, x, ref


def test_the_stretched_quantizer_is_found_and_kept_float(tmp_path: Path) -> None:
    model = _Net(stretched=True).eval()
    prepared, x, ref = _calibrated(model)
    found = dominant_quantizers(prepared, x, ref, task="classify")
    assert len(found) == 1, found
    f = found[0]
    assert any("c2" in w for w in f["feeds"]) and f["share"] >= 0.5
    assert f["range"][1] > 100  # the stretched range, recorded as the evidence
    with torch.no_grad():
        before = float((prepared(x) - ref).abs().mean())
    assert keep_float(prepared, [f["quantizer"]]) == 1
    with torch.no_grad():
        after = float((prepared(x) - ref).abs().mean())
    assert after < 0.5 * before
    export_qdq_onnx(prepared, tmp_path / "q.onnx", imgsz=32)
    st = qdq_structure(tmp_path / "q.onnx")
    # c2 reads float input (with int8 weights); c1, c3 and the classifier stay quantized
    assert st["convs"] == 4 and st["convs_quantized"] == 3 and st["decomposed"] == {}


def test_a_model_without_an_outlier_range_keeps_everything_quantized() -> None:
    model = _Net(stretched=False).eval()
    prepared, x, ref = _calibrated(model)
    assert dominant_quantizers(prepared, x, ref, task="classify") == []
    # the floor on the whole error is what keeps it so: of a negligible error (1 - cosine
    # about 4e-6 here) one quantizer can still hold the larger share
    assert dominant_quantizers(prepared, x, ref, task="classify", error_min=0) != []


def test_kept_quantizers_reload_from_a_saved_state_and_bad_names_are_refused() -> None:
    model = _Net(stretched=True).eval()
    prepared, x, _ = _calibrated(model)
    with pytest.raises(UsageError, match="not activation quantizers"):
        keep_float(prepared, ["activation_post_process_999"])
    acts = [
        n.target
        for n in prepared.graph.nodes  # type: ignore[union-attr]
        if n.op == "call_module" and getattr(n.args[0], "op", None) != "get_attr"
        and "activation_post_process" in str(n.target)
    ]  # fmt: skip
    assert len(acts) >= 2
    keep_float(prepared, [acts[1]])
    state = prepared.state_dict()
    # --resume: a fresh prepared model, the same quantizers removed, then the saved ranges
    again = prepare_qat(model, torch.rand(2, 3, 32, 32))
    keep_float(again, [acts[1]])
    again.load_state_dict(state)
    freeze_ranges(again)
    with torch.no_grad():
        assert torch.equal(again(x), prepared(x))
