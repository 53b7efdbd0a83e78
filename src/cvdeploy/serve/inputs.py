"""Reading images out of HTTP requests, with limits checked before any decoding.

Accepted bodies: ``multipart/form-data`` (one file part per image), a raw image
(``image/*`` or ``application/octet-stream``), or JSON ``{"images": [BASE64, ...]}`` /
``{"image": BASE64}`` (a ``data:image/...;base64,`` prefix is allowed). Every problem is an
:class:`~cvdeploy.errors.ApiError` with the HTTP status to answer and a message saying what
to fix.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import io
import json
import warnings
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message

from cvdeploy.data.io import _jpeg_is_complete, decode_image_bytes
from cvdeploy.errors import ApiError, ImageDecodeError
from cvdeploy.jsonsafe import depth_ok
from cvdeploy.pipeline.results import Detections

__all__ = [
    "MAX_JSON_DEPTH",
    "ApiError",
    "DecodedImage",
    "PixelBudget",
    "decode_checked",
    "image_pixels",
    "jpeg_reduction",
    "json_depth_ok",
    "loads_bounded",
    "read_body",
    "split_images",
]

MAX_JSON_DEPTH = 32
"""Deepest nesting of a JSON body the server parses (checked before parsing: 400 beyond)."""


def json_depth_ok(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``body``'s brackets nest at most ``max_depth`` deep (strings skipped): a
    linear scan before ``json.loads`` (see :mod:`cvdeploy.jsonsafe`)."""
    return depth_ok(body, max_depth)


def loads_bounded(body: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for untrusted bodies: depth checked first, every failure a 400.

    Raises:
        ApiError: 400 ``bad_json`` (not JSON, nested too deeply, or a number too long to
            convert).
    """
    if not json_depth_ok(body, max_depth):
        raise ApiError(400, "bad_json", f"the JSON body is nested deeper than {max_depth} levels")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int digit limit
        raise ApiError(400, "bad_json", f"the JSON body cannot be parsed: {exc}") from None


class PixelBudget:
    """Bounds the pixels being decoded (and held) at once across requests.

    A request takes its pixel count before its images are decoded and gives it back when
    it is answered, so the decoded images in memory never exceed ``capacity`` pixels
    (about 3 bytes each) however many requests arrive; the others wait, first come first
    served, until their deadline (then 503).

    Args:
        capacity: Most pixels held at once.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    async def acquire(self, n: int, *, timeout: float) -> int:
        """Take ``min(n, capacity)`` pixels, waiting at most ``timeout`` s; returns them.

        Raises:
            ApiError: 503 ``decode_busy`` when the pixels were not free in time.
        """
        n = min(n, self.capacity)
        if not self._waiters and self.used + n <= self.capacity:
            self.used += n
            return n
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout=max(timeout, 0.0))
        except TimeoutError:
            if fut.done() and not fut.cancelled():  # granted just as the wait ended
                self.release(n)
            else:
                fut.cancel()
                self._remove(entry)
            raise ApiError(
                503,
                "decode_busy",
                "the server is decoding as many pixels as its memory allows; retry shortly",
                headers={"Retry-After": "1"},
            ) from None
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release(n)
            else:
                fut.cancel()
                self._remove(entry)
            raise
        return n

    def release(self, n: int) -> None:
        """Give ``n`` pixels back and wake the waiters that now fit (in order)."""
        self.used -= n
        while self._waiters:
            m, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if self.used + m > self.capacity:
                break
            self._waiters.popleft()
            self.used += m
            fut.set_result(None)

    def _remove(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(entry)
        self.release(0)


def image_pixels(source: str, data: bytes) -> int:
    """``width x height`` of an encoded image from its header (0 when it is not an image:
    :func:`decode_checked` then answers why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
    except Image.DecompressionBombError:
        return 2**62
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return 0
    return int(w) * int(h)


@dataclass(slots=True)
class DecodedImage:
    """One request image: where it came from, its bytes and its pixels (BGR).

    Attributes:
        reduced: ``image`` was decoded at ``1/reduced`` scale (a JPEG larger than the
            model needs, see :func:`jpeg_reduction`); 1 for a full decode.
        original_size: ``(width, height)`` of the full image when ``reduced`` > 1.
    """

    source: str
    data: bytes = field(repr=False)
    image: np.ndarray = field(repr=False)
    reduced: int = 1
    original_size: tuple[int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the image sent (not of a reduced decode)."""
        if self.original_size is not None:
            return self.original_size
        return int(self.image.shape[1]), int(self.image.shape[0])

    def to_original(self, result: Any) -> Any:
        """Map a result on ``image`` back to the image sent (boxes scaled by ``reduced``)."""
        if self.reduced == 1 or not isinstance(result, Detections):
            return result
        w, h = self.size
        boxes = np.clip(result.boxes * self.reduced, 0, np.array([w, h, w, h], np.float32))
        return Detections(boxes=boxes, scores=result.scores, class_ids=result.class_ids)


async def read_body(request: Request, *, limit: int) -> bytes:
    """Read the body, refusing more than ``limit`` bytes (413) before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413,
            "body_too_large",
            f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes; "
            "send smaller images or fewer per request",
        )
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise ApiError(
                413,
                "body_too_large",
                f"request body exceeds the limit of {limit} bytes; "
                "send smaller images or fewer per request",
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def split_images(
    request: Request, body: bytes, *, max_images: int
) -> list[tuple[str, bytes]]:
    """The encoded images of a request body, as ``(source, bytes)`` pairs."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    items: list[tuple[str, bytes]] = []
    if ctype == "multipart/form-data":

        async def replay() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        form = await Request(request.scope, replay).form(
            max_files=max_images, max_fields=max_images
        )
        try:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    items.append((value.filename or key, await value.read()))
        finally:
            await form.close()
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        items.append(("body", body))
    elif ctype == "application/json":
        items = _json_images(body)
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"content type {ctype or '(none)'!r} is not accepted; send multipart/form-data, "
            'image/* bytes, or JSON {"images": [base64, ...]}',
        )
    if not items:
        raise ApiError(400, "no_image", "the request holds no image")
    if len(items) > max_images:
        raise ApiError(
            413,
            "too_many_images",
            f"{len(items)} images in one request exceeds the limit of {max_images}",
        )
    return items


def _json_images(body: bytes) -> list[tuple[str, bytes]]:
    doc = loads_bounded(body)
    if isinstance(doc, dict) and isinstance(doc.get("image"), str):
        encoded = [doc["image"]]
    elif isinstance(doc, dict) and isinstance(doc.get("images"), list):
        encoded = doc["images"]
    else:
        raise ApiError(
            400, "bad_json", 'JSON bodies must be {"images": [base64, ...]} or {"image": base64}'
        )
    out = []
    for i, enc in enumerate(encoded):
        if not isinstance(enc, str):
            raise ApiError(400, "bad_base64", f"images[{i}] is not a base64 string")
        if enc.startswith("data:"):
            enc = enc.partition(",")[2]
        try:
            out.append((f"images[{i}]", base64.b64decode(enc, validate=True)))
        except (binascii.Error, ValueError):
            raise ApiError(400, "bad_base64", f"images[{i}] is not valid base64") from None
    return out


_REDUCED_FLAGS = {
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
DECODABLE_FORMATS = frozenset(
    {"JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF", "PPM", "JPEG2000", "GIF", "DIB"}
)
"""Formats (as Pillow names them) that OpenCV decodes: a failure there is a broken file."""

_ROTATED = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


def jpeg_reduction(size: tuple[int, int], fit: tuple[int, int]) -> int:
    """The largest JPEG decode scale ``1/f`` (f = 8, 4, 2) that still covers the model input.

    libjpeg decodes straight to 1/2, 1/4 or 1/8 of the size (DCT scaling) for a fraction
    of the work of a full decode; the image then still goes through the model's resize,
    only from fewer pixels. The rule is conservative: the reduced image's shorter side
    must be at least the model input's longer side, so the resize that follows never
    enlarges it, whatever the resize mode or the EXIF orientation.

    Args:
        size: ``(width, height)`` of the JPEG.
        fit: ``(height, width)`` of the model input.
    """
    need = max(fit)
    for f in (8, 4, 2):
        if min(size) // f >= need:
            return f
    return 1


def _orientation(im: Image.Image) -> int | None:
    """The EXIF orientation tag, ``None`` without one, -1 when the EXIF cannot be read."""
    try:
        value = im.getexif().get(0x0112)
    except Exception:  # a damaged EXIF block: decode in full, as before
        return -1
    return value if isinstance(value, int) else None


def decode_checked(
    source: str, data: bytes, *, max_pixels: int, fit: tuple[int, int] | None = None
) -> DecodedImage:
    """Check the image size from its header (413), then decode it (400 / 415).

    Runs in a worker thread: PIL reads only the header, OpenCV decodes.

    Args:
        source: What to call the image in messages.
        data: The encoded image.
        max_pixels: Most pixels (width x height) accepted.
        fit: ``(height, width)`` of the model input: a JPEG large enough is decoded at a
            reduced scale (:func:`jpeg_reduction`); ``None`` decodes in full.
    """
    orientation = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                fmt = str(im.format)
                jpeg = fmt == "JPEG"
                if jpeg and fit is not None:
                    orientation = _orientation(im)
    except Image.DecompressionBombError:
        raise ApiError(
            413, "too_many_pixels", f"image {source} has too many pixels (PIL's bomb limit)"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ApiError(
            415,
            "not_an_image",
            f"{source} is not an image in a supported format (JPEG, PNG, BMP, WebP, TIFF)",
        ) from None
    if width * height > max_pixels:
        raise ApiError(
            413,
            "too_many_pixels",
            f"image {source} is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels}; resize it before sending",
        )
    reducible = jpeg and fit is not None and orientation != -1
    f = jpeg_reduction((width, height), fit) if reducible and fit is not None else 1
    if f > 1 and _jpeg_is_complete(data):  # a truncated JPEG gets the full decode's error
        image = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED_FLAGS[f])
        if image is not None and image.ndim == 3 and image.dtype == np.uint8:
            size = (height, width) if orientation in _ROTATED else (width, height)
            return DecodedImage(source, data, image, reduced=f, original_size=size)
    try:
        image = decode_image_bytes(data, source=source)
    except ImageDecodeError as exc:
        if fmt not in DECODABLE_FORMATS:  # a valid image, in a format the decoder lacks
            raise ApiError(
                415,
                "unsupported_format",
                f"{source} is an image in {fmt} format, which the server does not decode; "
                "send JPEG, PNG, BMP, WebP or TIFF",
            ) from None
        raise ApiError(
            400, "bad_image", exc.message + (f" ({exc.hint})" if exc.hint else "")
        ) from None
    return DecodedImage(source, data, image)
