"""Reading images from files and bytes, the same way everywhere.

Every reader returns an ``(H, W, 3)`` ``uint8`` array in **BGR** order (OpenCV's order):
grayscale images are expanded to three channels, an alpha channel is dropped and 16-bit
images are scaled down to 8 bits. The EXIF orientation tag is applied (OpenCV's
``IMREAD_COLOR`` does so), so a photograph taken in portrait mode comes back upright, and
:func:`image_size` reports the size of that upright image: the width and height the
ground truth boxes and the model's predictions are expressed in.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cvdeploy.errors import ImageDecodeError, InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "decode_image_bytes",
    "image_size",
    "is_image_file",
    "read_image",
]

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
)
"""File suffixes treated as images (compared in lower case)."""

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
# EXIF orientations 5..8 rotate by 90 degrees: width and height swap.
_ROTATING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION_TAG = 0x0112


def is_image_file(path: Path | str) -> bool:
    """Return whether ``path`` has an image suffix (see :data:`IMAGE_SUFFIXES`).

    Args:
        path: A file path; only its suffix is looked at.
    """
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_image(path: Path | str) -> np.ndarray:
    """Read an image file into an ``(H, W, 3)`` ``uint8`` BGR array.

    Works with non-ASCII paths (the bytes are read with numpy and decoded in memory).

    Args:
        path: The image file.

    Returns:
        The decoded image, upright according to its EXIF orientation.

    Raises:
        InputError: The file does not exist or cannot be read.
        ImageDecodeError: The file is empty, truncated or not an image OpenCV can decode.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not an image file" if path.is_dir() else "does not exist"
        raise InputError(f"image {path} {what}", hint="check the path")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise InputError(
            f"cannot read image {path}: {exc}", hint="check the file's permissions"
        ) from exc
    return _decode(data, source=str(path))


def decode_image_bytes(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) into an ``(H, W, 3)`` ``uint8`` BGR array.

    Args:
        data: The encoded image, e.g. the body of an HTTP upload.
        source: What to call the data in error messages.

    Returns:
        The decoded image, same rules as :func:`read_image`.

    Raises:
        ImageDecodeError: The bytes are empty, truncated or not a decodable image.
    """
    return _decode(np.frombuffer(data, dtype=np.uint8), source=source)


def image_size(path: Path | str) -> tuple[int, int]:
    """Return ``(width, height)`` of an image without decoding its pixels when possible.

    The size is that of the array :func:`read_image` returns, i.e. after the EXIF
    orientation is applied. Pillow reads the header when it is installed; an image whose
    EXIF orientation rotates it by 90 degrees, an image Pillow cannot open, or a machine
    without Pillow falls back to decoding the whole image with OpenCV, so the answer
    always agrees with :func:`read_image`.

    Args:
        path: The image file.

    Returns:
        ``(width, height)`` in pixels.

    Raises:
        InputError: The file does not exist.
        ImageDecodeError: The file is not a decodable image (only in the fallback path).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist", hint="check the path")
    size = _header_size(path)
    if size is not None:
        return size
    image = read_image(path)
    return int(image.shape[1]), int(image.shape[0])


def _header_size(path: Path) -> tuple[int, int] | None:
    """Size from Pillow's header parse, or ``None`` when it cannot be trusted or read."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        return None
    try:
        with Image.open(path) as img:
            orientation = img.getexif().get(_EXIF_ORIENTATION_TAG)
            width, height = img.size
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None
    if orientation in _ROTATING_ORIENTATIONS:
        # Rare; Pillow's handling differs between formats (TIFF already swaps), so ask
        # OpenCV, whose answer is by definition the one read_image gives.
        return None
    return int(width), int(height)


def _decode(data: np.ndarray, *, source: str) -> np.ndarray:
    """Decode a ``uint8`` buffer with OpenCV and normalise it to 3-channel ``uint8`` BGR."""
    if data.size == 0:
        raise ImageDecodeError(
            f"image {source} is empty (0 bytes)", hint="re-create or remove the file"
        )
    raw = data.tobytes()
    if raw.startswith(_JPEG_SOI) and not _jpeg_is_complete(raw):
        raise ImageDecodeError(
            f"image {source} is a truncated JPEG (the end-of-image marker is missing)",
            hint="the file was cut short (interrupted download or copy); fetch it again",
        )
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageDecodeError(
            f"image {source} cannot be decoded: {exc}",
            hint="check that it is a valid image file",
        ) from exc
    if image is None:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ImageDecodeError(
            f"image {source} cannot be decoded (corrupted, truncated or not an image)",
            hint=f"open it in an image viewer; supported formats: {suffixes}",
        )
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.dtype == np.uint16:  # IMREAD_COLOR already gives 8 bits; kept as a guard
        image = (image // 256).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageDecodeError(
            f"image {source} decodes to {image.dtype} pixels, not 8 or 16-bit integers",
            hint="convert it to an 8-bit PNG or JPEG",
        )
    return np.ascontiguousarray(image)


def _jpeg_is_complete(data: bytes) -> bool:
    """Return whether a JPEG stream reaches its end-of-image marker.

    OpenCV 4 decodes a truncated JPEG into a partly grey image with only a warning, so the
    stream is checked here. Fast path: the data ends with EOI (allowing padding). Otherwise
    the marker segments are walked (which skips an embedded EXIF thumbnail and its own EOI)
    to find the EOI that closes the main image, so data appended after it (some cameras
    add trailers) is accepted.
    """
    if data.rstrip(b"\x00\r\n ")[-2:] == _JPEG_EOI:
        return True
    pos, end = 2, len(data)
    while pos + 2 <= end:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            return True
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # standalone markers
            pos += 2
            continue
        if pos + 4 > end:
            return False
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        pos += 2 + length
        if marker == 0xDA:  # start of scan: skip the entropy-coded data
            pos = _skip_entropy_data(data, pos)
            if pos < 0:
                return False
    return False


def _skip_entropy_data(data: bytes, pos: int) -> int:
    """Return the position of the first real marker after entropy-coded data, or -1."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return -1
        nxt = data[pos + 1]
        if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
            pos += 1 if nxt == 0xFF else 2
            continue
        return pos
