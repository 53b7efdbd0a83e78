"""Resolve an export SOURCE: a zoo name, a training checkpoint, or ``module:factory``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cvdeploy.errors import InputError, SpecError, UsageError
from cvdeploy.jsonsafe import loads as json_loads
from cvdeploy.spec import PRESETS, Decoder, ModelSpec, Preprocess


@dataclass(slots=True)
class TorchSource:
    """A torch module ready to export, with its spec and how to rebuild it."""

    module: Any
    builder: str
    num_classes: int
    spec: ModelSpec
    name: str
    facts: dict[str, Any]


def zoo_spec(task: str, names: tuple[str, ...], imgsz: tuple[int, int]) -> ModelSpec:
    """The spec of a zoo model (the preprocessing it was trained with)."""
    if task == "classify":
        pp = Preprocess(resize="stretch", color="rgb", scale=1 / 255)
        dec = Decoder(kind="logits")
        return ModelSpec(
            task="classify", names=names, imgsz=imgsz, preprocess=pp, decoder=dec, stride=32
        )
    pp = PRESETS["ultralytics"].preprocess
    dec = PRESETS["ultralytics"].decoder
    return ModelSpec(
        task="detect",
        names=names,
        imgsz=imgsz,
        preprocess=pp,  # type: ignore[arg-type]
        decoder=dec,
        stride=32,
    )  # type: ignore[arg-type]


def read_spec_file(path: Path) -> ModelSpec:
    """Read a ModelSpec from a yaml or json file."""
    if not path.is_file():
        raise InputError(f"spec file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        data = json_loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        return ModelSpec.model_validate(data)
    except (ValueError, RecursionError, yaml.YAMLError) as exc:  # JSON, UTF-8, too deep
        raise SpecError(f"spec file {path} is not valid: {str(exc)[:300]}") from None
    except ValidationError as exc:
        raise SpecError(
            f"spec file {path} is not a valid model spec:\n{exc}",
            hint="see `cvdeploy info --json BUNDLE` of any bundle for the fields",
        ) from exc


def resolve_torch_source(
    source: str, *, spec_file: Path | None = None, imgsz: tuple[int, int] | None = None
) -> TorchSource:
    """Load the torch module named by ``source``.

    Args:
        source: A zoo name (``detector-n``), a checkpoint written by ``cvdeploy zoo train``,
            or ``module:factory`` (a function returning a ``torch.nn.Module``).
        spec_file: The spec of a ``module:factory`` model (required for it).
        imgsz: Input size override.
    """
    from cvdeploy.zoo.registry import list_zoo, load_zoo_model

    zoo_names = {e.name for e in list_zoo()}
    path = Path(source)
    if source in zoo_names or (path.suffix in (".pt", ".pth") and path.is_file()):
        module, entry = load_zoo_model(source)
        spec = (
            read_spec_file(spec_file)
            if spec_file
            else zoo_spec(entry.task, tuple(entry.names), _hw(entry.imgsz))
        )
        if imgsz is not None:
            spec = spec.model_copy(update={"imgsz": imgsz})
        builder_name = entry.architecture
        return TorchSource(
            module=module,
            builder=f"zoo:{builder_name}",
            num_classes=len(entry.names),
            spec=spec,
            name=entry.name if source in zoo_names else path.stem,
            facts={"source": source, "zoo": entry.name},
        )
    if ":" in source and not path.exists():
        if spec_file is None:
            raise UsageError(
                f"{source!r} is a module:factory source and needs --spec FILE",
                hint="write the spec (task, names, imgsz, preprocess, decoder) as "
                "yaml; `cvdeploy info --json` shows one",
            )
        from cvdeploy.runtime.torch import build_module

        spec = read_spec_file(spec_file)
        if imgsz is not None:
            spec = spec.model_copy(update={"imgsz": imgsz})
        module = build_module(f"factory:{source}", num_classes=spec.num_classes).eval()
        return TorchSource(
            module=module,
            builder=f"factory:{source}",
            num_classes=spec.num_classes,
            spec=spec,
            name=source.rsplit(":", 1)[-1],
            facts={"source": source},
        )
    raise UsageError(
        f"cannot export {source!r}: it is not a zoo model, a checkpoint file, a "
        "bundle, an .onnx file or a module:factory path",
        hint=f"zoo models: {', '.join(sorted(zoo_names)) or 'none'}",
    )


def _hw(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))
