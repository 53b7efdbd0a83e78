"""ONNX Runtime Q/DQ options chosen for the CPU: 7-bit weights where U8S8 would saturate."""

from __future__ import annotations

from cvdeploy.optimize.ort_quant import OrtQuantOptions, needs_reduce_range


def test_reduce_range_on_x86_without_vnni() -> None:
    avx2 = {"arch": "x86_64", "flags": ["avx", "avx2", "fma"]}
    assert needs_reduce_range(avx2, symmetric=False)


def test_full_range_with_vnni_or_amx() -> None:
    for flag in ("avx512_vnni", "avx_vnni", "amx_int8"):
        cpu = {"arch": "x86_64", "flags": ["avx2", flag]}
        assert not needs_reduce_range(cpu, symmetric=False)


def test_full_range_off_x86_and_for_tensorrt() -> None:
    assert not needs_reduce_range({"arch": "aarch64", "flags": []}, symmetric=False)
    assert not needs_reduce_range({"arch": "x86_64", "flags": ["avx2"]}, symmetric=True)
    assert not needs_reduce_range({}, symmetric=False)


def test_reduce_range_is_recorded() -> None:
    assert OrtQuantOptions(reduce_range=True).record()["reduce_range"] is True
    assert OrtQuantOptions().record()["reduce_range"] is False
