"""The model zoo: small detector/classifier architectures, their training and shipped weights.

Needs torch (``pip install cvdeploy[torch]``); the runtime path never imports this package.

* :func:`build_model` builds ``detector-n``, ``detector-s`` or ``classifier-n``.
* :func:`train_detector` / :func:`train_classifier` train them on YOLO / image-folder data.
* :func:`list_zoo` / :func:`load_zoo_model` give the shipped, pre-trained weights.
"""

from cvdeploy.zoo.classify_train import ClassifierResult, train_classifier
from cvdeploy.zoo.models import (
    CLASSIFIER_CONFIGS,
    DETECTOR_CONFIGS,
    ClassifierConfig,
    DetectorConfig,
    available_models,
    build_model,
    model_task,
)
from cvdeploy.zoo.registry import ZooEntry, list_zoo, load_checkpoint, load_zoo_model, weights_dir
from cvdeploy.zoo.train import TrainResult, train_detector

__all__ = [
    "CLASSIFIER_CONFIGS",
    "DETECTOR_CONFIGS",
    "ClassifierConfig",
    "ClassifierResult",
    "DetectorConfig",
    "TrainResult",
    "ZooEntry",
    "available_models",
    "build_model",
    "list_zoo",
    "load_checkpoint",
    "load_zoo_model",
    "model_task",
    "train_classifier",
    "train_detector",
    "weights_dir",
]
