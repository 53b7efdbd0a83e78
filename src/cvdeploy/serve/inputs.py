"""Reading images out of HTTP requests, with limits checked before any decoding.

Accepted bodies: ``multipart/form-data`` (one file part per image), a raw image
(``image/*`` or ``application/octet-stream``), or JSON ``{"images": [BASE64, ...]}`` /
``{"image": BASE64}`` (a ``data:image/...;base64,`` prefix is allowed). Every problem is an
:class:`ApiError` with the HTTP status to answer and a message saying what to fix.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message

from cvdeploy.data.io import decode_image_bytes
from cvdeploy.errors import ImageDecodeError

__all__ = ["ApiError", "DecodedImage", "decode_checked", "read_body", "split_images"]


class ApiError(Exception):
    """An error answered to the client as JSON ``{"error": {"code", "message"}}``.

    Args:
        status: HTTP status code.
        code: A short machine-readable code.
        message: What went wrong and what to do.
        headers: Extra response headers (e.g. ``Retry-After``).
    """

    def __init__(
        self, status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


@dataclass(slots=True)
class DecodedImage:
    """One request image: where it came from, its bytes and its pixels (BGR)."""

    source: str
    data: bytes = field(repr=False)
    image: np.ndarray = field(repr=False)

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return int(self.image.shape[1]), int(self.image.shape[0])


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
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_json", f"the JSON body cannot be parsed: {exc}") from None
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


def decode_checked(source: str, data: bytes, *, max_pixels: int) -> DecodedImage:
    """Check the image size from its header (413), then decode it (400 / 415).

    Runs in a worker thread: PIL reads only the header, OpenCV decodes.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
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
    try:
        image = decode_image_bytes(data, source=source)
    except ImageDecodeError as exc:
        raise ApiError(
            400, "bad_image", exc.message + (f" ({exc.hint})" if exc.hint else "")
        ) from None
    return DecodedImage(source, data, image)
