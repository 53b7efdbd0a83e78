"""The model spec: what a model expects and emits.

The spec is the single source of truth for pre- and post-processing. Export, eval, bench,
serve and doctor all read it, so the pipeline that was measured is the pipeline that is
served. It is stored in the bundle manifest (``bundle.json``) and validated with pydantic.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Task = Literal["detect", "classify"]
ResizeMode = Literal["letterbox", "stretch", "crop"]
Align = Literal["center", "top-left"]
ColorOrder = Literal["rgb", "bgr", "gray"]
Layout = Literal["NCHW", "NHWC"]
DecoderKind = Literal["yolov8", "yolox", "yolov5", "logits"]
DType = Literal["float32", "float16", "uint8", "int8"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Preprocess(_Frozen):
    """How an image (BGR uint8, as OpenCV reads it) becomes the model input tensor."""

    resize: ResizeMode = "letterbox"
    align: Align = "center"
    pad_value: int = Field(default=114, ge=0, le=255)
    color: ColorOrder = "rgb"
    scale: float = Field(default=1.0 / 255.0, gt=0)
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    @field_validator("std")
    @classmethod
    def _std_nonzero(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(s == 0 for s in v):
            raise ValueError("std values must be non-zero")
        return v

    @model_validator(mode="after")
    def _channels_agree(self) -> Preprocess:
        channels = 1 if self.color == "gray" else 3
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"mean and std need {channels} value(s) for color={self.color!r}, "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        return self

    @property
    def channels(self) -> int:
        """Number of input channels the preprocessing produces."""
        return 1 if self.color == "gray" else 3


class Decoder(_Frozen):
    """How the raw model output becomes detections or class probabilities."""

    kind: DecoderKind
    strides: tuple[int, ...] = (8, 16, 32)
    conf: float = Field(default=0.25, ge=0, le=1)
    iou: float = Field(default=0.7, gt=0, le=1)
    max_det: int = Field(default=300, ge=1)
    agnostic: bool = False
    softmax: bool = True
    """For ``logits``: apply softmax (False when the model already emits probabilities)."""


class TensorSpec(_Frozen):
    """One input or output tensor of an artifact. ``-1`` marks a dynamic dimension."""

    name: str
    shape: tuple[int, ...]
    dtype: DType = "float32"

    @field_validator("shape")
    @classmethod
    def _dims(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(d == 0 or d < -1 for d in v):
            raise ValueError(f"dimensions must be positive or -1 (dynamic), got {v}")
        return v


class IOSpec(_Frozen):
    """What one artifact takes and returns (layout and dtypes may differ between formats)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    layout: Layout = "NCHW"

    @property
    def input(self) -> TensorSpec:
        """The (single) image input."""
        return self.inputs[0]

    @property
    def dynamic_batch(self) -> bool:
        """Whether the batch dimension is dynamic."""
        return self.inputs[0].shape[0] == -1

    @property
    def dynamic_size(self) -> bool:
        """Whether height and width are dynamic."""
        shape = self.inputs[0].shape
        hw = shape[2:4] if self.layout == "NCHW" else shape[1:3]
        return any(d == -1 for d in hw)

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the artifact requires, or ``None`` when it is dynamic."""
        b = self.inputs[0].shape[0]
        return None if b == -1 else b


class ModelSpec(_Frozen):
    """Everything needed to feed a model and read its output, shared by all artifacts."""

    task: Task
    names: tuple[str, ...]
    imgsz: tuple[int, int]
    """Input height and width the model was validated at."""
    preprocess: Preprocess
    decoder: Decoder
    stride: int = 32

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if not self.names:
            raise ValueError("names must list at least one class")
        if self.task == "classify" and self.decoder.kind != "logits":
            raise ValueError(f"a classifier needs decoder 'logits', got {self.decoder.kind!r}")
        if self.task == "detect" and self.decoder.kind == "logits":
            raise ValueError("a detector cannot use decoder 'logits'")
        if any(s <= 0 for s in self.imgsz):
            raise ValueError(f"imgsz must be positive, got {self.imgsz}")
        return self

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.names)

    def differences(self, other: ModelSpec) -> list[str]:
        """List the fields that differ from ``other`` (empty when equal).

        Args:
            other: The spec to compare with.

        Returns:
            Human-readable ``field: a != b`` lines.
        """
        out: list[str] = []
        mine, theirs = self.model_dump(), other.model_dump()
        for key in mine:
            if mine[key] == theirs[key]:
                continue
            if isinstance(mine[key], dict):
                for sub in mine[key]:
                    if mine[key][sub] != theirs[key][sub]:
                        out.append(f"{key}.{sub}: {mine[key][sub]!r} != {theirs[key][sub]!r}")
            elif key == "names":
                out.append(
                    f"names: {len(mine[key])} classes != {len(theirs[key])} classes"
                    if len(mine[key]) != len(theirs[key])
                    else "names: differ"
                )
            else:
                out.append(f"{key}: {mine[key]!r} != {theirs[key]!r}")
        return out


class Preset(NamedTuple):
    """Preprocessing and decoder that a model family's exports expect."""

    preprocess: Preprocess
    decoder: Decoder


# Presets for known model families.
PRESETS: dict[str, Preset] = {
    "ultralytics": Preset(
        Preprocess(resize="letterbox", align="center", pad_value=114, color="rgb", scale=1 / 255),
        Decoder(kind="yolov8", conf=0.25, iou=0.7, max_det=300),
    ),
    "yolov5": Preset(
        Preprocess(resize="letterbox", align="center", pad_value=114, color="rgb", scale=1 / 255),
        Decoder(kind="yolov5", conf=0.25, iou=0.45, max_det=300),
    ),
    "yolox": Preset(
        Preprocess(resize="letterbox", align="top-left", pad_value=114, color="bgr", scale=1.0),
        Decoder(kind="yolox", strides=(8, 16, 32), conf=0.25, iou=0.65, max_det=300),
    ),
}
