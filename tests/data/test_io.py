"""Tests for cvdeploy.data.io: one image reading convention everywhere."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from cvdeploy.data import io as image_io
from cvdeploy.data.io import (
    IMAGE_SUFFIXES,
    decode_image_bytes,
    image_size,
    is_image_file,
    read_image,
)
from cvdeploy.errors import ImageDecodeError, InputError


def _pattern(height: int = 24, width: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    image[:, :, 0] = 10  # distinct channels, to catch a BGR/RGB swap
    image[:, :, 2] = 250
    return image


def _write(path: Path, image: np.ndarray) -> Path:
    ok, buffer = cv2.imencode(path.suffix, image)
    assert ok
    path.write_bytes(buffer.tobytes())
    return path


def test_suffixes_are_case_insensitive() -> None:
    assert {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"} == IMAGE_SUFFIXES
    assert is_image_file("a/B.JPG")
    assert is_image_file(Path("x.TiFf"))
    assert not is_image_file("labels.txt")


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tiff"])
def test_lossless_roundtrip_keeps_bgr(tmp_path: Path, suffix: str) -> None:
    image = _pattern()
    out = read_image(_write(tmp_path / f"a{suffix}", image))
    assert out.dtype == np.uint8
    assert out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out, image)


def test_jpeg_and_webp_decode(tmp_path: Path) -> None:
    image = np.full((20, 30, 3), (10, 120, 250), dtype=np.uint8)
    for suffix in (".jpg", ".webp"):
        out = read_image(_write(tmp_path / f"a{suffix}", image))
        assert out.shape == (20, 30, 3)
        assert np.abs(out.astype(int) - image).max() <= 3


def test_grayscale_becomes_three_channels(tmp_path: Path) -> None:
    gray = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    out = read_image(_write(tmp_path / "g.png", gray))
    assert out.shape == (12, 16, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], gray)


def test_alpha_is_dropped(tmp_path: Path) -> None:
    image = _pattern()
    rgba = np.dstack([image, np.full(image.shape[:2], 7, np.uint8)])
    out = read_image(_write(tmp_path / "a.png", rgba))
    np.testing.assert_array_equal(out, image)


def test_16bit_becomes_8bit(tmp_path: Path) -> None:
    deep = (np.arange(10 * 12, dtype=np.uint16).reshape(10, 12) * 500).astype(np.uint16)
    out = read_image(_write(tmp_path / "d.png", deep))
    assert out.dtype == np.uint8
    assert out.shape == (10, 12, 3)
    np.testing.assert_array_equal(out[:, :, 1], (deep >> 8).astype(np.uint8))


def test_unicode_path(tmp_path: Path) -> None:
    folder = tmp_path / "données_图像"
    folder.mkdir()
    path = _write(folder / "été 1.png", _pattern())
    assert read_image(path).shape == (24, 32, 3)
    assert image_size(path) == (32, 24)


def test_missing_file_and_folder_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist") as info:
        read_image(tmp_path / "nope.jpg")
    assert not isinstance(info.value, ImageDecodeError)
    with pytest.raises(InputError, match="folder"):
        read_image(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        image_size(tmp_path / "nope.jpg")


def test_empty_and_garbage_files_name_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"empty\.jpg.*empty"):
        read_image(empty)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageDecodeError, match=r"garbage\.png") as info:
        read_image(garbage)
    assert info.value.hint


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_image_is_a_decode_error(tmp_path: Path, suffix: str) -> None:
    full = _write(tmp_path / f"full{suffix}", _pattern(64, 64)).read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(ImageDecodeError, match=r"cut"):
        read_image(cut)


def test_jpeg_completeness_check() -> None:
    ok, buffer = cv2.imencode(".jpg", _pattern(64, 64))
    assert ok
    data = buffer.tobytes()
    assert image_io._jpeg_is_complete(data)
    # Some cameras append data after the end-of-image marker: still complete.
    assert image_io._jpeg_is_complete(data + b"TRAILER-DATA\x01\x02")
    assert not image_io._jpeg_is_complete(data[:-2])
    assert not image_io._jpeg_is_complete(data[: len(data) // 2])
    # ... and such a file decodes.
    assert decode_image_bytes(data + b"TRAILER").shape == (64, 64, 3)


def test_decode_image_bytes(tmp_path: Path) -> None:
    image = _pattern()
    ok, buffer = cv2.imencode(".png", image)
    assert ok
    np.testing.assert_array_equal(decode_image_bytes(buffer.tobytes()), image)
    with pytest.raises(ImageDecodeError, match=r"upload\.bin"):
        decode_image_bytes(b"\x00\x01nope", source="upload.bin")
    with pytest.raises(ImageDecodeError, match="<bytes>"):
        decode_image_bytes(b"")


def test_image_size_matches_read_image(tmp_path: Path) -> None:
    for suffix in (".jpg", ".png", ".bmp", ".webp", ".tif"):
        path = _write(tmp_path / f"s{suffix}", _pattern(17, 29))
        image = read_image(path)
        assert image_size(path) == (image.shape[1], image.shape[0]) == (29, 17)


def test_image_size_follows_exif_rotation(tmp_path: Path) -> None:
    pil_image = pytest.importorskip("PIL.Image")
    image = pil_image.fromarray(np.zeros((20, 40, 3), np.uint8))  # 40 wide, 20 high
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = tmp_path / "portrait.jpg"
    image.save(path, exif=exif)
    decoded = read_image(path)
    assert image_size(path) == (decoded.shape[1], decoded.shape[0])
    assert decoded.shape[:2] == (40, 20)  # OpenCV applies the orientation


def test_image_size_without_pillow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "a.png", _pattern(11, 13))
    monkeypatch.setitem(sys.modules, "PIL", None)
    assert image_size(path) == (13, 11)
