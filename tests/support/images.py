"""Generated test images, in a module that imports no Beam (the decoder's fuzz workers use it)."""

from __future__ import annotations

import io

import numpy as np


def make_image(seed: int, width: int = 96, height: int = 64, noise: float = 6) -> np.ndarray:
    """A smooth gradient with noise: compresses like a photo, different for every seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.uniform(0, 255, 3)
    slope = rng.uniform(-1.5, 1.5, (2, 3))
    image = base + xx[..., None] * slope[0] + yy[..., None] * slope[1] + rng.normal(0, noise, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray, fmt: str = "JPEG", **options) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()
