"""The export stage: artifacts from a source, each through the parity gate.

Public API (other stages and workflows use these, never the modules behind them):

- :func:`export_model` with :class:`ExportOptions` -> :class:`ExportReport`;
  :func:`create_torch_bundle` (a bundle holding the torch source only);
- :func:`import_model` with :class:`ImportOverrides`: wrap an external ONNX file or
  OpenVINO IR into a bundle;
- :func:`obfuscate_bundle`: an obfuscated ONNX artifact, gated like an export;
- :func:`resolve_torch_source` -> :class:`TorchSource`: the torch module a SOURCE names (a
  zoo model, a checkpoint, ``module:factory``), with its spec; :func:`zoo_spec`;
  :func:`read_spec_file` (a spec written as yaml or json);
- the vocabulary: :data:`EXPORTERS` (targets by format), :data:`PRECISIONS`,
  :data:`GPU_FORMATS`, :func:`parse_targets`, :func:`gate_images`.

Heavy imports (torch, onnx, openvino, onnx2tf, tensorrt) happen inside the target modules.
"""

from cvdeploy.export.base import (
    EXPORTERS,
    GPU_FORMATS,
    PRECISIONS,
    ExportContext,
    ExportOptions,
    ExportOutcome,
    ExportReport,
    Produced,
    artifact_id_for,
    parse_targets,
)
from cvdeploy.export.gate import GATE_IMAGES, gate_images
from cvdeploy.export.importer import (
    ImportOverrides,
    import_model,
    read_model_facts,
    read_names_file,
)
from cvdeploy.export.obfuscate import ObfuscateReport, obfuscate_bundle, obfuscate_model
from cvdeploy.export.run import create_torch_bundle, export_model
from cvdeploy.export.sources import TorchSource, read_spec_file, resolve_torch_source, zoo_spec

__all__ = [
    "EXPORTERS",
    "GATE_IMAGES",
    "GPU_FORMATS",
    "PRECISIONS",
    "ExportContext",
    "ExportOptions",
    "ExportOutcome",
    "ExportReport",
    "ImportOverrides",
    "ObfuscateReport",
    "Produced",
    "TorchSource",
    "artifact_id_for",
    "create_torch_bundle",
    "export_model",
    "gate_images",
    "import_model",
    "obfuscate_bundle",
    "obfuscate_model",
    "parse_targets",
    "read_model_facts",
    "read_names_file",
    "read_spec_file",
    "resolve_torch_source",
    "zoo_spec",
]
