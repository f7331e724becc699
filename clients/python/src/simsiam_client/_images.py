"""Images as the caller has them: paths, bytes, file objects or PIL images."""
from __future__ import annotations

import io
import os
from typing import Any, Union

ImageLike = Union[str, "os.PathLike[str]", bytes, bytearray, Any]


def to_bytes(image: ImageLike) -> bytes:
    """The encoded bytes of an image (a PIL image is sent as PNG, which loses nothing)."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            return f.read()
    if hasattr(image, "save") and hasattr(image, "mode"):  # a PIL image
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
        return buf.getvalue()
    if hasattr(image, "read"):
        return image.read()
    raise TypeError(
        f"an image must be a path, bytes, a file object or a PIL image, not {type(image).__name__}"
    )
