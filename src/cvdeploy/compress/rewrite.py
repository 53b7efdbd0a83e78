"""Make a model prunable by torch-pruning's dependency graph, and rebuild one from a checkpoint.

torch-pruning (1.6) maps channel indices through a ``split``/``chunk`` by the position of
each consumer, and mis-indexes one whose output feeds two consumers: the zoo's C2f block
(``cv1(x).chunk(2)``, the second half feeding both the bottleneck and the concat) makes it
raise ``IndexError`` (the reason its YOLOv8 example asks users for a hand-written ``C2f_v2``).
:func:`make_prunable` does that rewrite automatically: each C2f becomes a :class:`SplitC2f`
whose two halves are two convolutions with the same weights (numerically identical, tested).

A pruned model's torch artifact names the builder ``pruned:<original builder>``
(:func:`build_prunable`, registered in :data:`cvdeploy.runtime.torch.BUILDERS`), and its layer
widths come from the stored weights (``shapes_from_weights``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from cvdeploy.zoo.models import C2f, Conv

__all__ = ["SplitC2f", "build_prunable", "make_prunable"]


def _slice_conv(conv: Conv, sl: slice) -> Conv:
    out = copy.deepcopy(conv)
    n = sl.stop - sl.start
    out.conv.weight = nn.Parameter(conv.conv.weight.data[sl].clone())
    out.conv.out_channels = n
    bn = out.bn
    assert bn.weight is not None and bn.bias is not None
    assert bn.running_mean is not None and bn.running_var is not None
    bn.weight = nn.Parameter(bn.weight.data[sl].clone())
    bn.bias = nn.Parameter(bn.bias.data[sl].clone())
    bn.running_mean = bn.running_mean[sl].clone()
    bn.running_var = bn.running_var[sl].clone()
    bn.num_features = n
    return out


class SplitC2f(nn.Module):
    """C2f with its split made explicit: ``cv1a`` and ``cv1b`` compute the two halves of
    C2f's ``cv1`` (the first goes to the concat only, the second also feeds the bottlenecks).

    Args:
        block: The C2f block to rewrite (its weights are copied).
    """

    def __init__(self, block: C2f) -> None:
        super().__init__()
        c = block.cv1.conv.out_channels // 2
        self.cv1a = _slice_conv(block.cv1, slice(0, c))
        self.cv1b = _slice_conv(block.cv1, slice(c, 2 * c))
        self.cv2 = block.cv2
        self.m = block.m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Both halves, the bottleneck chain on the second, concatenate, fuse."""
        y = [self.cv1a(x), self.cv1b(x)]
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


def make_prunable(module: nn.Module) -> nn.Module:
    """Rewrite, in place, every zoo C2f block of ``module`` as a :class:`SplitC2f`.

    Returns:
        ``module`` (the same object).
    """
    for name, child in list(module.named_children()):
        if isinstance(child, C2f):
            setattr(module, name, SplitC2f(child))
        else:
            make_prunable(child)
    return module


def build_prunable(builder: str, *, num_classes: int) -> nn.Module:
    """Build the architecture a ``pruned:`` torch artifact names, before its widths are set.

    Args:
        builder: The original builder (``zoo:detector-n``, ``factory:module:function``).
        num_classes: Number of classes.
    """
    from cvdeploy.runtime.torch import build_module

    return make_prunable(build_module(builder, num_classes=num_classes))
