"""What a compression command starts from: a torch model with its spec."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cvdeploy.bundle import Bundle
from cvdeploy.errors import UsageError
from cvdeploy.export import resolve_torch_source
from cvdeploy.runtime.torch import load_checkpoint
from cvdeploy.spec import ModelSpec

__all__ = ["Source", "resolve_source"]


@dataclass
class Source:
    """A torch model to compress.

    Attributes:
        module: The model, in eval mode.
        builder: How its architecture is rebuilt (``zoo:NAME``, ``factory:module:fn``).
        spec: Its spec (input size, preprocessing, decoder, class names).
        name: A short name for the bundles made from it.
        described: What the user named (for the record).
    """

    module: torch.nn.Module
    builder: str
    spec: ModelSpec
    name: str
    described: str

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


def resolve_source(source: str, *, spec_file: Path | None = None) -> Source:
    """Load the torch model named by ``source``.

    Args:
        source: A zoo model (``detector-n``), a checkpoint written by ``cvdeploy zoo train``,
            ``module:factory`` (with ``spec_file``), or a bundle holding a torch artifact.
        spec_file: The spec of a ``module:factory`` source.

    Raises:
        UsageError: The source is none of these, or a bundle without a torch model.
        ModelLoadError: A checkpoint cannot be read.
    """
    path = Path(source)
    if path.is_dir() and (path / "bundle.json").is_file():
        bundle = Bundle.load(path)
        arts = [a for a in bundle.manifest.artifacts if a.format == "torch"]
        if not arts:
            raise UsageError(
                f"bundle {path} has no torch artifact: compression needs the torch model",
                hint="start from the zoo model, checkpoint or module:factory it was exported "
                "from (an imported ONNX model can be a --teacher of `cvdeploy distill`)",
            )
        module, ckpt = load_checkpoint(bundle.model_file(arts[0]))
        return Source(
            module=module.eval(),
            builder=str(ckpt["builder"]),
            spec=bundle.spec,
            name=bundle.name,
            described=source,
        )
    if path.suffix.lower() in (".onnx", ".xml"):
        raise UsageError(
            f"{source} is an exported model: pruning needs the torch model",
            hint="use it as the --teacher of `cvdeploy distill` (after `cvdeploy import`)",
        )
    ts = resolve_torch_source(source, spec_file=spec_file)
    factory: Any = ts.module
    return Source(
        module=factory.eval(), builder=ts.builder, spec=ts.spec, name=ts.name, described=source
    )
