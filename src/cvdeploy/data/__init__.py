"""Datasets: YOLO folders, COCO json, plain image folders, synthetic data.

Readers return plain typed objects: :class:`DetectionDataset` (images, class names in model
order, COCO category ids, pixel ground truth) and :class:`ClassificationDataset`. Images are
read as ``(H, W, 3)`` ``uint8`` BGR arrays by :func:`read_image`.
"""

from cvdeploy.data.base import (
    BoxAnnotation,
    ClassificationDataset,
    ClassificationItem,
    DetectionDataset,
    ImageItem,
    align_to_model,
)
from cvdeploy.data.coco import load_coco_dataset
from cvdeploy.data.folder import (
    align_classification,
    list_images,
    load_classification_dataset,
)
from cvdeploy.data.io import (
    IMAGE_SUFFIXES,
    decode_image_bytes,
    image_size,
    is_image_file,
    read_image,
)
from cvdeploy.data.load import image_paths, load_detection_dataset
from cvdeploy.data.yolo import label_path_for, load_yolo_dataset

__all__ = [
    "IMAGE_SUFFIXES",
    "BoxAnnotation",
    "ClassificationDataset",
    "ClassificationItem",
    "DetectionDataset",
    "ImageItem",
    "align_classification",
    "align_to_model",
    "decode_image_bytes",
    "image_paths",
    "image_size",
    "is_image_file",
    "label_path_for",
    "list_images",
    "load_classification_dataset",
    "load_coco_dataset",
    "load_detection_dataset",
    "load_yolo_dataset",
    "read_image",
]
