"""Encoding pixels back to image bytes, for images whose pixels a stage changed."""

from __future__ import annotations

import io

import numpy as np

__all__ = ["encode_jpeg"]


def encode_jpeg(pixels: np.ndarray, *, quality: int) -> bytes:
    """Encode HxWx3 uint8 RGB pixels as a baseline JPEG (4:2:0) at `quality`."""
    from PIL import Image

    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"image_data must be HxWx3 uint8 RGB, got shape {pixels.shape} dtype {pixels.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="JPEG", quality=quality, subsampling="4:2:0")
    return buffer.getvalue()
