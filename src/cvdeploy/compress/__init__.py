"""The compress stage: smaller models through pruning, distillation and quantization-aware
training, each learning from a teacher's outputs on unlabeled images.

Public API:

- :func:`prune_model` with :class:`PruneOptions`: iterative physical channel pruning
  (torch-pruning's DepGraph) judged by the exported artifact's measured latency, recovered
  by self-distillation;
- :func:`distill_model` with :class:`DistillOptions`: a zoo (or ``module:factory``) student
  learns from any runnable bundle;
- :func:`qat_model` with :class:`QatOptions`: quantization-aware training (torchao PT2E)
  from PTQ, exported as an explicit Q/DQ ONNX INT8 artifact;
- :class:`OnnxModule`: an ONNX graph run as a trainable torch module, for a
  ``module:factory`` source of a model that exists only as ONNX (QAT, distillation);
- :func:`onnx_source` -> :class:`OnnxSource`: an FP32 ONNX graph and its spec converted for
  compression (input convention folded into the first convolutions, a yolox/yolov5 head
  decoded to the YOLOv8 layout by :class:`YoloxAsYolov8` and co.): what ``cvdeploy qat``
  does with an imported model (a bundle whose model is ONNX);
- :class:`CompressReport` / :class:`ModelRow`: the result table;
- :class:`TrainingInterrupted`: raised on Ctrl-C after the state was saved (``--resume``).

Needs torch and torch-pruning (``pip install 'cvdeploy[compress]'``).
"""

from cvdeploy.compress.distill import DistillOptions, distill_model
from cvdeploy.compress.loop import LoopOptions, LoopResult, TrainingInterrupted
from cvdeploy.compress.measure import ModelRow
from cvdeploy.compress.onnx_module import OnnxModule
from cvdeploy.compress.onnx_source import OnnxSource, YoloxAsYolov8, onnx_source
from cvdeploy.compress.pruning import PruneOptions, prune_model
from cvdeploy.compress.qat import QatOptions, qat_model
from cvdeploy.compress.report import CompressReport

__all__ = [
    "CompressReport",
    "DistillOptions",
    "LoopOptions",
    "LoopResult",
    "ModelRow",
    "OnnxModule",
    "OnnxSource",
    "PruneOptions",
    "QatOptions",
    "TrainingInterrupted",
    "YoloxAsYolov8",
    "distill_model",
    "onnx_source",
    "prune_model",
    "qat_model",
]
