"""Tests of cvdeploy.pipeline.preprocess: resize geometry, its inverse and to_tensor."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cvdeploy.errors import ShapeError, UsageError
from cvdeploy.pipeline.preprocess import ResizeMeta, resize_image, scale_boxes, to_tensor

PAD = 114
RED = (0, 0, 255)  # BGR
GREEN = (0, 255, 0)


def canvas(h: int, w: int, fill: tuple[int, int, int] = (10, 20, 30)) -> np.ndarray:
    """A BGR uint8 image filled with one colour."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = fill
    return img


# --------------------------------------------------------------------------------------
# Reference implementations, transcribed from the upstream code they stand for.


def ultralytics_letterbox(img: np.ndarray, new_shape: tuple[int, int]) -> np.ndarray:
    """Ultralytics ``LetterBox(auto=False, scaleup=True, center=True)``."""
    shape = img.shape[:2]
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    new_unpad = round(shape[1] * r), round(shape[0] * r)
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    dw /= 2
    dh /= 2
    if shape[::-1] != new_unpad:
        img = cv2.resize(img, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    return cv2.copyMakeBorder(
        img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114)
    )


def yolox_preproc(img: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """YOLOX ``preproc`` without its final transpose."""
    padded_img = np.ones((input_size[0], input_size[1], 3), dtype=np.uint8) * 114
    r = min(input_size[0] / img.shape[0], input_size[1] / img.shape[1])
    resized_img = cv2.resize(
        img, (int(img.shape[1] * r), int(img.shape[0] * r)), interpolation=cv2.INTER_LINEAR
    ).astype(np.uint8)
    padded_img[: int(img.shape[0] * r), : int(img.shape[1] * r)] = resized_img
    return padded_img


SIZES = [
    (1080, 810),
    (810, 1080),
    (480, 640),
    (640, 480),
    (100, 37),
    (37, 100),
    (103, 200),
    (640, 640),
    (333, 777),
    (1, 50),
    (720, 1280),
    (2000, 40),
]


@pytest.mark.parametrize("orig_hw", SIZES)
@pytest.mark.parametrize("target", [(640, 640), (384, 640), (64, 96)])
def test_center_letterbox_matches_ultralytics(
    orig_hw: tuple[int, int], target: tuple[int, int]
) -> None:
    rng = np.random.default_rng(sum(orig_hw))
    img = rng.integers(0, 256, size=(*orig_hw, 3), dtype=np.uint8)
    out, meta = resize_image(img, target, mode="letterbox", align="center")
    np.testing.assert_array_equal(out, ultralytics_letterbox(img, target))
    assert out.flags.c_contiguous and meta.input_hw == target


@pytest.mark.parametrize("orig_hw", SIZES)
@pytest.mark.parametrize("target", [(640, 640), (416, 416), (64, 96)])
def test_top_left_letterbox_matches_yolox(
    orig_hw: tuple[int, int], target: tuple[int, int]
) -> None:
    rng = np.random.default_rng(sum(orig_hw) + 1)
    img = rng.integers(0, 256, size=(*orig_hw, 3), dtype=np.uint8)
    out, _ = resize_image(img, target, mode="letterbox", align="top-left")
    np.testing.assert_array_equal(out, yolox_preproc(img, target))


# --------------------------------------------------------------------------------------
# Hand-computed geometry.


def test_center_letterbox_landscape_downscale() -> None:
    # 100x200 -> 64x64: r = min(64/100, 64/200) = 0.32, content 64x32, dh = 16.
    img = canvas(100, 200)
    img[40:60, 100:140] = RED
    out, meta = resize_image(img, (64, 64), mode="letterbox")
    assert meta == ResizeMeta((100, 200), (64, 64), (0.32, 0.32), (0, 16), "letterbox")
    assert (out[:16] == PAD).all() and (out[48:] == PAD).all()
    assert (out[16:48] != PAD).any(axis=2).all()  # no padding inside the content
    # Original pixel (x=120, y=50) -> input (120*0.32, 50*0.32 + 16) = (38.4, 32).
    assert tuple(out[32, 38]) == RED
    assert tuple(out[20, 5]) == (10, 20, 30)


def test_center_letterbox_odd_padding() -> None:
    # 103x200 -> 64x64: r = 0.32, content round(32.96) = 33 rows, dh = 15.5 -> 15 top, 16 bottom.
    out, meta = resize_image(canvas(103, 200), (64, 64), mode="letterbox", pad_value=0)
    assert meta.pad == (0, 15)
    assert (out[:15] == 0).all() and (out[48:] == 0).all()
    assert (out[15:48] == (10, 20, 30)).all()


def test_center_letterbox_portrait_upscale() -> None:
    # 40x20 -> 100x100: r = min(2.5, 5) = 2.5, content 50x100, dw = 25 each side.
    img = canvas(40, 20)
    img[10:20, 4:8] = GREEN
    out, meta = resize_image(img, (100, 100), mode="letterbox")
    assert meta.scale == (2.5, 2.5) and meta.pad == (25, 0)
    assert (out[:, :25] == PAD).all() and (out[:, 75:] == PAD).all()
    # Original (x=6, y=15) -> input (6*2.5 + 25, 15*2.5) = (40, 37.5).
    assert tuple(out[37, 40]) == GREEN
    assert tuple(out[90, 30]) == (10, 20, 30)


def test_letterbox_same_size_is_a_copy() -> None:
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out, meta = resize_image(img, (64, 64), mode="letterbox")
    np.testing.assert_array_equal(out, img)
    assert meta.scale == (1.0, 1.0) and meta.pad == (0, 0)


def test_top_left_letterbox_landscape_downscale() -> None:
    # 103x200 -> 64x64: r = 0.32, content int(64.0) x int(32.96) = 64x32 at the top-left.
    img = canvas(103, 200)
    img[40:60, 100:140] = RED
    out, meta = resize_image(img, (64, 64), mode="letterbox", align="top-left")
    assert meta == ResizeMeta((103, 200), (64, 64), (0.32, 0.32), (0, 0), "letterbox")
    assert (out[32:] == PAD).all()
    assert (out[:32] != PAD).any(axis=2).all()
    assert tuple(out[16, 38]) == RED  # (120*0.32, 50*0.32) = (38.4, 16)


def test_top_left_letterbox_portrait_upscale() -> None:
    # 40x20 -> 100x100: r = 2.5, content 50x100 in columns 0..49.
    img = canvas(40, 20)
    img[10:20, 4:8] = GREEN
    out, meta = resize_image(img, (100, 100), mode="letterbox", align="top-left")
    assert meta.pad == (0, 0) and meta.scale == (2.5, 2.5)
    assert (out[:, 50:] == PAD).all()
    assert tuple(out[37, 15]) == GREEN  # (6*2.5, 15*2.5)


def test_stretch() -> None:
    # 100x200 -> 64x64: rx = 0.32, ry = 0.64, no padding.
    img = canvas(100, 200)
    img[40:60, 100:140] = RED
    out, meta = resize_image(img, (64, 64), mode="stretch")
    assert meta == ResizeMeta((100, 200), (64, 64), (0.32, 0.64), (0, 0), "stretch")
    assert out.shape == (64, 64, 3) and not (out == PAD).all(axis=2).any()
    assert tuple(out[32, 38]) == RED  # (120*0.32, 50*0.64) = (38.4, 32)


def test_crop_landscape() -> None:
    # 100x200 -> 64x64: height binds, resized to 64x128, then columns 32..95 are kept.
    img = canvas(100, 200)
    img[:, :50] = RED  # x < 50 -> resized x < 32: cut away
    img[40:60, 100:140] = GREEN
    out, meta = resize_image(img, (64, 64), mode="crop")
    assert meta == ResizeMeta((100, 200), (64, 64), (0.64, 0.64), (-32, 0), "crop")
    assert not (out == RED).all(axis=2).any()
    assert tuple(out[32, 44]) == GREEN  # (120*0.64 - 32, 50*0.64) = (44.8, 32)


def test_crop_portrait_with_crop_fraction() -> None:
    # 400x300 (portrait) -> 224x224 at 0.875: width binds, resized to 256 x (400*256//300 = 341),
    # top = round((341 - 224) / 2) = round(58.5) = 58, left = 16.
    out, meta = resize_image(canvas(400, 300), (224, 224), mode="crop", crop_fraction=0.875)
    assert out.shape == (224, 224, 3)
    assert meta.pad == (-16, -58)
    assert meta.scale == (256 / 300, 341 / 400)


@pytest.mark.parametrize("align", ["center", "top-left"])
def test_extreme_aspect_ratio_keeps_one_pixel(align: str) -> None:
    # 2000x3 -> 64x96: the content would round to 0 columns (the references crash).
    out, _ = resize_image(canvas(2000, 3), (64, 96), mode="letterbox", align=align)  # type: ignore[arg-type]
    assert out.shape == (64, 96, 3)
    assert (out == (10, 20, 30)).all(axis=2).sum() == 64


def test_grayscale_images_keep_their_layout() -> None:
    gray = np.full((40, 20), 7, np.uint8)
    assert resize_image(gray, (100, 100), mode="letterbox")[0].shape == (100, 100)
    for mode in ("letterbox", "stretch", "crop"):
        out, _ = resize_image(gray[..., None], (100, 100), mode=mode)  # type: ignore[arg-type]
        assert out.shape == (100, 100, 1)
    out, _ = resize_image(gray[..., None], (100, 100), mode="letterbox", align="top-left")
    assert out.shape == (100, 100, 1) and out[0, 99, 0] == PAD and out[0, 0, 0] == 7


@pytest.mark.parametrize(
    ("mode", "align"),
    [("letterbox", "center"), ("letterbox", "top-left"), ("stretch", "center")],
)
@pytest.mark.parametrize("orig_hw", [(100, 200), (103, 200), (40, 20), (1080, 810)])
def test_scale_boxes_round_trip(mode: str, align: str, orig_hw: tuple[int, int]) -> None:
    _, meta = resize_image(canvas(*orig_hw), (64, 96), mode=mode, align=align)  # type: ignore[arg-type]
    h, w = orig_hw
    orig = np.array([[0, 0, w, h], [w * 0.1, h * 0.2, w * 0.5, h * 0.9]], np.float32)
    rx, ry = meta.scale
    left, top = meta.pad
    forward = orig * np.array([rx, ry, rx, ry], np.float32) + np.array([left, top] * 2)
    back = scale_boxes(forward, meta)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, orig, rtol=1e-5, atol=1e-3)


def test_scale_boxes_clips_to_the_image() -> None:
    _, meta = resize_image(canvas(100, 200), (64, 64), mode="letterbox")
    back = scale_boxes(np.array([[-10, 0, 70, 70]], np.float32), meta)
    # x: (-10 - 0)/0.32 -> clipped to 0, 70/0.32 = 218.75 -> 200; y: (0-16)/0.32 -> 0, 54/0.32.
    np.testing.assert_allclose(back, [[0, 0, 200, 100]])
    assert scale_boxes(np.zeros((0, 4), np.float32), meta).shape == (0, 4)


def test_scale_boxes_refuses_crop_and_bad_shapes() -> None:
    _, meta = resize_image(canvas(100, 200), (64, 64), mode="crop")
    with pytest.raises(UsageError):
        scale_boxes(np.zeros((1, 4), np.float32), meta)
    _, meta = resize_image(canvas(100, 200), (64, 64), mode="letterbox")
    with pytest.raises(ShapeError):
        scale_boxes(np.zeros((4,), np.float32), meta)


def test_resize_bad_input() -> None:
    with pytest.raises(ShapeError):
        resize_image(np.zeros((0, 10, 3), np.uint8), (64, 64), mode="letterbox")
    with pytest.raises(ShapeError):
        resize_image(np.zeros((10, 10, 2), np.uint8), (64, 64), mode="letterbox")
    with pytest.raises(UsageError):
        resize_image(canvas(10, 10), (0, 64), mode="letterbox")
    with pytest.raises(UsageError):
        resize_image(canvas(10, 10), (64, 64), mode="fit")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        resize_image(canvas(10, 10), (64, 64), mode="letterbox", align="bottom")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        resize_image(canvas(10, 10), (64, 64), mode="crop", crop_fraction=1.5)


@pytest.mark.realworld
def test_bus_letterbox(realworld: Path) -> None:
    img = cv2.imread(str(realworld / "images" / "bus.jpg"))
    assert img is not None and img.shape == (1080, 810, 3)
    out, meta = resize_image(img, (640, 640), mode="letterbox")
    # r = 640/1080, content round(810 * r) = 480 wide, 80 columns of padding each side.
    assert meta.pad == (80, 0)
    assert (out[:, :80] == PAD).all() and (out[:, 560:] == PAD).all()
    np.testing.assert_array_equal(out, ultralytics_letterbox(img, (640, 640)))


# --------------------------------------------------------------------------------------
# to_tensor


def test_to_tensor_channel_order_and_scale() -> None:
    img = canvas(4, 5, (10, 20, 30))  # B, G, R
    rgb = to_tensor([img])
    assert rgb.shape == (1, 3, 4, 5) and rgb.dtype == np.float32 and rgb.flags.c_contiguous
    np.testing.assert_array_equal(
        rgb[0, :, 0, 0], np.array([30, 20, 10], np.float32) / np.float32(255)
    )
    bgr = to_tensor([img], color="bgr", scale=1.0)
    np.testing.assert_array_equal(bgr[0, :, 2, 3], [10, 20, 30])
    half = to_tensor([img], scale=0.5)
    np.testing.assert_array_equal(half[0, :, 1, 1], [15, 10, 5])


def test_to_tensor_equals_the_usual_numpy_expression() -> None:
    img = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    expected = np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1))[None].astype(
        np.float32
    ) / np.float32(255)
    np.testing.assert_array_equal(to_tensor([img]), expected)  # bit for bit


def test_to_tensor_mean_std() -> None:
    img = np.random.default_rng(1).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    got = to_tensor([img], mean=mean, std=std)
    x = img[..., ::-1].astype(np.float64) / 255
    expected = ((x - mean) / std).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # NHWC gives the same numbers, transposed.
    nhwc = to_tensor([img], mean=mean, std=std, layout="NHWC")
    assert nhwc.shape == (1, 8, 6, 3) and nhwc.flags.c_contiguous
    np.testing.assert_array_equal(nhwc, got.transpose(0, 2, 3, 1))
    # mean/std follow the OUTPUT channel order: for BGR output they apply to B, G, R.
    bgr = to_tensor([img], color="bgr", mean=mean, std=std)
    np.testing.assert_allclose(
        bgr[0, 0], (img[..., 0] / 255 - mean[0]) / std[0], rtol=1e-5, atol=1e-5
    )


def test_to_tensor_batch_and_layouts() -> None:
    rng = np.random.default_rng(2)
    imgs = [rng.integers(0, 256, (5, 7, 3), dtype=np.uint8) for _ in range(3)]
    nchw = to_tensor(imgs, scale=1.0, color="bgr")
    nhwc = to_tensor(imgs, scale=1.0, color="bgr", layout="NHWC")
    assert nchw.shape == (3, 3, 5, 7) and nhwc.shape == (3, 5, 7, 3)
    for i, img in enumerate(imgs):
        np.testing.assert_array_equal(nhwc[i], img)
        np.testing.assert_array_equal(nchw[i], img.transpose(2, 0, 1))
    np.testing.assert_array_equal(to_tensor(np.stack(imgs), scale=1.0, color="bgr"), nchw)


def test_to_tensor_dtypes() -> None:
    img = canvas(4, 4, (10, 20, 30))
    f16 = to_tensor([img], dtype=np.float16)
    assert f16.dtype == np.float16
    np.testing.assert_allclose(f16[0, :, 0, 0], [30 / 255, 20 / 255, 10 / 255], rtol=1e-3)
    f64 = to_tensor([img], dtype=np.float64)
    assert f64.dtype == np.float64 and f64[0, 0, 0, 0] == 30 / 255
    raw = to_tensor([img], dtype=np.uint8, scale=1.0, layout="NHWC")
    assert raw.dtype == np.uint8 and tuple(raw[0, 0, 0]) == (30, 20, 10)
    with pytest.raises(UsageError):
        to_tensor([img], dtype=np.uint8)  # scale 1/255 cannot be represented in uint8


def test_to_tensor_grayscale() -> None:
    img = np.random.default_rng(3).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    gray = to_tensor([img], grayscale=True)
    assert gray.shape == (1, 1, 6, 5)
    expected = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(gray[0, 0], expected)
    plane = img[..., 0]
    for x in (plane, plane[..., None]):  # HxW and HxWx1 are used as they are
        out = to_tensor([x], grayscale=True, mean=(0.5,), std=(0.25,), layout="NHWC")
        assert out.shape == (1, 6, 5, 1)
        np.testing.assert_allclose(out[0, ..., 0], (plane / 255 - 0.5) / 0.25, rtol=1e-5)


def test_to_tensor_bad_input() -> None:
    img = canvas(4, 4)
    with pytest.raises(ShapeError):
        to_tensor([])
    with pytest.raises(ShapeError):
        to_tensor([img, canvas(4, 5)])
    with pytest.raises(ShapeError):
        to_tensor([img[..., 0]])  # one channel without grayscale=True
    with pytest.raises(UsageError):
        to_tensor([img], mean=(0.1, 0.2))
    with pytest.raises(UsageError):
        to_tensor([img], std=(0, 1, 1))
    with pytest.raises(UsageError):
        to_tensor([img], layout="CHW")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        to_tensor([img], color="rgba")  # type: ignore[arg-type]
