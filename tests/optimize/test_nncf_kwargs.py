"""The NNCF keyword arguments fit both NNCF entry points we call."""

from __future__ import annotations

import inspect

import pytest

from cvdeploy.optimize.nncf_quant import NncfOptions, nncf_quantize_kwargs

nncf = pytest.importorskip("nncf")


def test_kwargs_bind_to_quantize_and_accuracy_control() -> None:
    kw = nncf_quantize_kwargs(NncfOptions(method="percentile", per_channel=False), 10)
    inspect.signature(nncf.quantize).bind(None, None, **kw)
    # quantize_with_accuracy_control calls the same parameters by another name
    acc = dict(kw)
    acc["advanced_quantization_parameters"] = acc.pop("advanced_parameters")
    inspect.signature(nncf.quantize_with_accuracy_control).bind(
        None, None, None, None, max_drop=0.01, **acc
    )
