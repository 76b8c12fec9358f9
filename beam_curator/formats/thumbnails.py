"""Small JPEG thumbnails: what the run report shows of images that are not in the output tars.

A filter record carries one (a few KB), made from the pixels the stage saw, so that the report can
show what each filter dropped without keeping the image.
"""

from __future__ import annotations

import io

import numpy as np

__all__ = ["THUMBNAIL_SIZE", "thumbnail_from_bytes", "thumbnail_of"]

THUMBNAIL_SIZE = 96  # pixels on the longer side
_QUALITY = 70


def _encode(image) -> bytes:
    from PIL import Image

    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=_QUALITY)
    return buffer.getvalue()


def thumbnail_of(pixels: np.ndarray) -> bytes:
    """A JPEG thumbnail of HxWx3 uint8 pixels."""
    from PIL import Image

    return _encode(Image.fromarray(np.ascontiguousarray(pixels)))


def thumbnail_from_bytes(data: bytes) -> bytes | None:
    """A JPEG thumbnail of an encoded image (JPEGs decoded at reduced scale), or None when it cannot be
    decoded."""
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (THUMBNAIL_SIZE * 2, THUMBNAIL_SIZE * 2))
        return _encode(image)
    except Exception:  # no thumbnail is not an error: the record says what happened
        return None
