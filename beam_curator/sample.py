"""A small sample WebDataset of generated landscape photos, so a newcomer can try the pipeline."""

from __future__ import annotations

import io
import json
import os

import numpy as np

from beam_curator.formats.webdataset import TarShardWriter

__all__ = ["make_sample_dataset", "render_landscape"]

_TIMES = ["at dawn", "at noon", "at dusk", "under a grey sky"]
_SKIES = {  # top colour, horizon colour
    "at dawn": ((70, 90, 160), (250, 180, 140)),
    "at noon": ((40, 110, 210), (170, 210, 240)),
    "at dusk": ((40, 30, 90), (240, 120, 60)),
    "under a grey sky": ((110, 115, 125), (190, 190, 195)),
}


def _ridge(rng: np.random.Generator, width: int, roughness: float) -> np.ndarray:
    """A mountain ridge line by midpoint displacement: self-similar, like real skylines."""
    size = 1
    while size < width:
        size *= 2
    line = np.zeros(size + 1)
    step, scale = size, 1.0
    while step > 1:
        half = step // 2
        for start in range(0, size, step):
            line[start + half] = (line[start] + line[start + step]) / 2 + rng.normal(0, scale)
        step, scale = half, scale * roughness
    return line[:width]


def render_landscape(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, str, dict]:
    """One landscape photo (HxWx3 uint8), its caption and its json metadata."""
    from PIL import Image, ImageFilter

    when = _TIMES[rng.integers(len(_TIMES))]
    top, horizon = (np.array(c, dtype=np.float64) for c in _SKIES[when])
    rows = np.linspace(0, 1, height)[:, None, None]
    image = top * (1 - rows) + horizon * rows
    image = np.repeat(image, width, axis=1)
    yy, xx = np.mgrid[0:height, 0:width]
    has_sun = when != "under a grey sky"
    if has_sun:
        cx, cy, radius = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.4) * height, rng.uniform(0.03, 0.07) * width
        glow = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (radius * 3) ** 2))[..., None]
        image = image * (1 - 0.5 * glow) + np.array([255, 240, 200]) * 0.5 * glow
        image[(xx - cx) ** 2 + (yy - cy) ** 2 < radius**2] = (255, 245, 220)
    layers = int(rng.integers(2, 5))
    for layer in range(layers):
        base = height * (0.35 + 0.15 * layer)
        ridge = base + _ridge(rng, width, 0.55) * height * 0.08
        shade = np.array([60, 80, 70]) * (0.5 + 0.5 * (layers - layer) / layers) + rng.normal(0, 8, 3)
        mask = yy > ridge[None, :]
        texture = rng.normal(0, 10, (height, width, 1))
        image = np.where(mask[..., None], shade + texture, image)
    noise = rng.normal(0, 3, image.shape)
    pixels = np.clip(image + noise, 0, 255).astype(np.uint8)
    pixels = np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(0.8)))
    caption = f"a landscape with {layers} mountain ridges {when}" + (" and the sun low over the hills" if has_sun else "")
    meta = {"width": width, "height": height, "ridges": layers, "light": when, "source": "beam-curator make-sample"}
    return pixels, caption, meta


def make_sample_dataset(directory: str, *, shards: int = 3, images_per_shard: int = 40, seed: int = 0) -> list[str]:
    """Write `shards` tars of `images_per_shard` samples (.jpg, .txt, .json) into directory."""
    from PIL import Image

    if shards < 1 or images_per_shard < 1:
        raise ValueError(f"shards and images_per_shard must be positive, got {shards} and {images_per_shard}")
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for shard in range(shards):
        path = os.path.join(directory, f"sample-{shard:06d}.tar")
        with open(path, "wb") as handle:
            writer = TarShardWriter(handle)
            for index in range(images_per_shard):
                width, height = int(rng.integers(320, 640)), int(rng.integers(240, 480))
                pixels, caption, meta = render_landscape(rng, width, height)
                encoded = io.BytesIO()
                Image.fromarray(pixels).save(encoded, format="JPEG", quality=90)
                writer.write_sample(
                    f"{shard:04d}{index:05d}",
                    [("jpg", encoded.getvalue()), ("txt", caption.encode()), ("json", json.dumps(meta).encode())],
                )
            writer.close()
        paths.append(path)
    return paths
