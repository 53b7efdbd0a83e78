"""What a compression command starts from: a torch model with its spec.

A zoo model, a checkpoint, ``module:factory``, a bundle holding a torch artifact, or an
imported model: a bundle whose model is an FP32 ONNX artifact (``cvdeploy import``), or an
``.onnx`` file with its spec, run as torch by :mod:`cvdeploy.compress.onnx_source`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cvdeploy.bundle import Artifact, Bundle
from cvdeploy.compress.onnx_source import BUILDER_PREFIX, onnx_graph_bytes, onnx_source
from cvdeploy.errors import InputError, UsageError
from cvdeploy.export import read_spec_file, resolve_torch_source
from cvdeploy.runtime.torch import load_checkpoint
from cvdeploy.spec import ModelSpec

__all__ = ["Source", "names_onnx_model", "resolve_source"]


@dataclass
class Source:
    """A torch model to compress.

    Attributes:
        module: The model, in eval mode.
        builder: How its architecture is rebuilt (``zoo:NAME``, ``factory:module:fn``,
            ``onnx:SHA256-PREFIX``).
        spec: Its spec (input size, preprocessing, decoder, class names).
        name: A short name for the bundles made from it.
        described: What the user named (for the record).
        builder_data: What the builder needs besides its name (an ``onnx:`` builder's graph
            and spec), stored with the torch checkpoints made from it.
        notes: What was converted to make it a torch source (an imported model's input
            fold and head decoding).
        pruned: Its layers are narrower than its builder makes them (a bundle written by
            ``cvdeploy prune``): checkpoints made from it must say so, or they do not load.
    """

    module: torch.nn.Module
    builder: str
    spec: ModelSpec
    name: str
    described: str
    builder_data: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    pruned: bool = False

    @property
    def from_onnx(self) -> bool:
        """Whether the model is an imported ONNX graph run as torch."""
        return self.builder.startswith(BUILDER_PREFIX)

    @property
    def imgsz(self) -> int:
        """The (square) input side."""
        h, w = self.spec.imgsz
        if h != w:
            raise UsageError(
                f"{self.described} has a non-square input ({h}x{w}); compression trains "
                "at a square size",
                hint="give a square --imgsz",
            )
        return int(h)


def names_onnx_model(source: str) -> bool:
    """Whether ``source`` names an imported model (a bundle without a torch artifact, or an
    ``.onnx`` file), without loading it."""
    path = Path(source)
    if path.is_dir() and (path / "bundle.json").is_file():
        return not any(a.format == "torch" for a in Bundle.load(path).manifest.artifacts)
    return path.suffix.lower() == ".onnx"


def _onnx_fp32(bundle: Bundle) -> Artifact:
    """The bundle's FP32 ONNX artifact (``onnx-fp32`` first), or a clear refusal."""
    arts = [a for a in bundle.manifest.artifacts if a.format == "onnx" and a.precision == "fp32"]
    arts.sort(key=lambda a: a.id != "onnx-fp32")
    if not arts:
        have = ", ".join(f"{a.id} ({a.format}, {a.precision})" for a in bundle.manifest.artifacts)
        raise UsageError(
            f"bundle {bundle.path} has neither a torch nor an FP32 ONNX artifact "
            f"({have or 'no artifacts'}): compression starts from a float model",
            hint="import the FP32 ONNX model (`cvdeploy import MODEL.onnx`), or start from "
            "the zoo model, checkpoint or module:factory it was made from",
        )
    return arts[0]


def _from_onnx(file: Path, spec: ModelSpec, *, name: str, described: str) -> Source:
    src = onnx_source(onnx_graph_bytes(file), spec)
    return Source(
        module=src.module,
        builder=src.builder,
        spec=src.spec,
        name=name,
        described=described,
        builder_data=src.builder_data,
        notes=src.notes,
    )


def resolve_source(source: str, *, spec_file: Path | None = None) -> Source:
    """Load the torch model named by ``source``.

    Args:
        source: A zoo model (``detector-n``), a checkpoint written by ``cvdeploy zoo train``,
            ``module:factory`` (with ``spec_file``), a bundle holding a torch artifact, a
            bundle whose model is FP32 ONNX (``cvdeploy import``), or an ``.onnx`` file
            (with ``spec_file``). An ONNX model runs as torch, converted to take RGB 0..1
            and return the YOLOv8 layout (detectors) or logits; the returned spec says so.
        spec_file: The spec of a ``module:factory`` source or an ``.onnx`` file.

    Raises:
        UsageError: The source is none of these, a bundle without a torch or FP32 ONNX
            model, or an ONNX model that cannot be converted (the reason named).
        ModelLoadError: A checkpoint cannot be read.
    """
    path = Path(source)
    if path.is_dir() and (path / "bundle.json").is_file():
        bundle = Bundle.load(path)
        arts = [a for a in bundle.manifest.artifacts if a.format == "torch"]
        if not arts:
            art = _onnx_fp32(bundle)
            return _from_onnx(
                bundle.model_file(art), bundle.spec, name=bundle.name, described=source
            )
        module, ckpt = load_checkpoint(bundle.model_file(arts[0]))
        return Source(
            module=module.eval(),
            builder=str(ckpt["builder"]),
            spec=bundle.spec,
            name=bundle.name,
            described=source,
            builder_data=ckpt.get("builder_data"),
            pruned=bool(ckpt.get("shapes_from_weights")),
        )
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise InputError(f"{source} does not exist")
        if spec_file is None:
            raise UsageError(
                f"{source} is an ONNX file: its spec (preprocessing, decoder, names) is needed",
                hint=f"import it first (`cvdeploy import {source} --out BUNDLE --preset ...`) "
                "and compress the bundle, or pass --spec FILE",
            )
        return _from_onnx(path, read_spec_file(spec_file), name=path.stem, described=source)
    if path.suffix.lower() == ".xml":
        raise UsageError(
            f"{source} is an OpenVINO model: compression starts from a torch model (`cvdeploy "
            "qat` also from an FP32 ONNX one)",
            hint="start from the model it was made from, or use it as the --teacher of "
            "`cvdeploy distill` (after `cvdeploy import`)",
        )
    ts = resolve_torch_source(source, spec_file=spec_file)
    factory: Any = ts.module
    return Source(
        module=factory.eval(), builder=ts.builder, spec=ts.spec, name=ts.name, described=source
    )
