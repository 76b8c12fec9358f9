"""A model's input made where the images are decoded: CLIP's preprocessing as DALI operators.

When a model stage runs after the reader, the reader's DALI pipeline (CPU or GPU) also produces each
image's model input: shortest side to `shortest_edge` (the long side int()-ed, as Hugging Face's
CLIPImageProcessor does), centre crop, rescale, mean/std, CHW, in the model's dtype. Only the crop
window is resampled (antialiased, the manifest's filter), at the sample positions the resize-then-crop
of Hugging Face would use. DALI's resampling is not Pillow's: the drift is measured in
tests/unit/test_model_input.py and docs/PERFORMANCE.md (about one pixel level on 13% of the values,
embedding cosine above 0.9999).

`clip_pixels` is the reference: Hugging Face's processor, exactly, with Pillow. It serves the images
DALI does not decode (Pillow decodes them) and a model stage whose reader made no model input.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil
from typing import Any

import numpy as np

__all__ = ["ModelInput", "clip_pixels"]

_DTYPES = ("float32", "float16")
_RESAMPLING = ("bicubic", "bilinear")


@dataclass(frozen=True)
class ModelInput:
    """CLIP's preprocessing of one model (its manifest's `preprocessing`), and the dtype its image
    tower takes. Hashable: it names a per-process decoder."""

    shortest_edge: int
    crop_height: int
    crop_width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    rescale_factor: float = 1 / 255
    resample: str = "bicubic"
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("shortest_edge", "crop_height", "crop_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(s > 0 for s in self.std):
            raise ValueError(f"mean and std must have 3 values (std > 0), got {self.mean!r} and {self.std!r}")
        if self.resample not in _RESAMPLING:
            raise ValueError(f"resample must be one of {', '.join(_RESAMPLING)}, got {self.resample!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")

    @classmethod
    def of(cls, preprocessing: dict[str, Any], dtype: str = "float32") -> ModelInput:
        """From a model manifest's `preprocessing` (beam_curator.models.export writes it)."""
        return cls(shortest_edge=int(preprocessing["shortest_edge"]), crop_height=int(preprocessing["crop_height"]),
                   crop_width=int(preprocessing["crop_width"]), mean=tuple(map(float, preprocessing["mean"])),
                   std=tuple(map(float, preprocessing["std"])),
                   rescale_factor=float(preprocessing.get("rescale_factor", 1 / 255)),
                   resample=str(preprocessing.get("resample", "bicubic")), dtype=dtype)

    @property
    def numpy_dtype(self) -> type:
        return np.float16 if self.dtype == "float16" else np.float32

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, self.crop_height, self.crop_width)

    def on_host(self, pixels: np.ndarray) -> np.ndarray:
        """The reference (Hugging Face's processor, with Pillow) of one HxWx3 uint8 image."""
        return clip_pixels(pixels, self).astype(self.numpy_dtype, copy=False)

    def dali(self, decoded):
        """The model input of a DALI DataNode of decoded HxWx3 uint8 RGB images (CPU or GPU): a DataNode
        of 3 x crop_height x crop_width images in the model's dtype, on the decoded images' device."""
        from nvidia.dali import fn, types

        scale = self.rescale_factor
        normalise = {"mean": [m / scale for m in self.mean], "std": [s / scale for s in self.std],
                     "output_layout": "CHW", "dtype": types.FLOAT16 if self.dtype == "float16" else types.FLOAT}
        interpolation = types.INTERP_CUBIC if self.resample == "bicubic" else types.INTERP_LINEAR
        height, width = _resized_size(decoded, self.shortest_edge)
        if self.crop_height <= self.shortest_edge and self.crop_width <= self.shortest_edge:
            # Resample only the crop window: the same sample positions as resizing the whole image and
            # cropping it, a fraction of the work. Output uint8, as Pillow's (a float output would not
            # be clamped to 0-255 and doubles the error).
            shape = decoded.shape(dtype=types.INT64)
            per_row = fn.cast(shape[0], dtype=types.FLOAT) / fn.cast(height, dtype=types.FLOAT)
            per_column = fn.cast(shape[1], dtype=types.FLOAT) / fn.cast(width, dtype=types.FLOAT)
            top = fn.cast((height - self.crop_height) // 2, dtype=types.FLOAT) * per_row  # all terms >= 0
            left = fn.cast((width - self.crop_width) // 2, dtype=types.FLOAT) * per_column
            window = fn.resize(decoded, size=[self.crop_height, self.crop_width], roi_start=fn.stack(top, left),
                               roi_end=fn.stack(top + self.crop_height * per_row, left + self.crop_width * per_column),
                               subpixel_scale=False, interp_type=interpolation, antialias=True)
            return fn.crop_mirror_normalize(window, **normalise)
        # A crop larger than the resized image (no CLIP does this): resize all, crop with zero pixels around.
        resized = fn.resize(decoded, size=fn.cast(fn.stack(height, width), dtype=types.FLOAT), subpixel_scale=False,
                            interp_type=interpolation, antialias=True)
        return fn.crop_mirror_normalize(
            resized, crop=(self.crop_height, self.crop_width), crop_pos_y=_centre(height, self.crop_height),
            crop_pos_x=_centre(width, self.crop_width), rounding="round", out_of_bounds_policy="pad",
            fill_values=[-m / s for m, s in zip(normalise["mean"], normalise["std"])],  # a zero pixel, normalised
            **normalise)


def _resized_size(decoded, shortest_edge: int):
    """Hugging Face's size after `shortest_edge` (int64 DataNodes): the short side becomes shortest_edge,
    the long side int(shortest_edge * long / short), which is the integer division for positive ints."""
    import nvidia.dali.math as dmath
    from nvidia.dali import types

    shape = decoded.shape(dtype=types.INT64)  # a CPU node, also for images on the GPU
    height, width = shape[0], shape[1]
    short = dmath.min(height, width)
    return (height * shortest_edge) // short, (width * shortest_edge) // short


def _centre(extent, crop: int):
    """crop_pos putting the window at floor((extent - crop) / 2), Hugging Face's offset, with rounding
    "round", also when extent < crop (DALI's // truncates toward zero: floor on floats instead)."""
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    difference = fn.cast(extent, dtype=types.FLOAT) - float(crop)
    return dmath.floor(difference / 2.0) / (difference + fn.cast(difference == 0.0, dtype=types.FLOAT))


_PIL_RESAMPLING = {"bicubic": 3, "bilinear": 2}  # PIL.Image.Resampling.BICUBIC, BILINEAR


def clip_pixels(image: np.ndarray, preprocessing: ModelInput | dict[str, Any]) -> np.ndarray:
    """CLIP's preprocessing of one HxWx3 uint8 RGB image -> 3xHxW float32, as Hugging Face's
    CLIPImageProcessor does it with Pillow: shortest side to `shortest_edge` (the long side int()-ed),
    resampled with Pillow (bicubic), centre crop (zero-padded if the image is smaller), times
    rescale_factor, minus mean, over std."""
    from PIL import Image

    spec = preprocessing if isinstance(preprocessing, ModelInput) else ModelInput.of(preprocessing)
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 image, got {getattr(image, 'shape', type(image))}")
    height, width = image.shape[:2]
    size = spec.shortest_edge
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_width, new_height = (size, new_long) if width <= height else (new_long, size)
    if (new_width, new_height) != (width, height):
        image = np.asarray(Image.fromarray(image).resize((new_width, new_height),
                                                         resample=_PIL_RESAMPLING[spec.resample]))
    image = _centre_crop(image, spec.crop_height, spec.crop_width)
    scaled = image.astype(np.float32) * np.float32(spec.rescale_factor)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return ((scaled - mean) / std).transpose(2, 0, 1)


def _centre_crop(image: np.ndarray, crop_height: int, crop_width: int) -> np.ndarray:
    height, width = image.shape[:2]
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    if top >= 0 and left >= 0:
        return image[top:top + crop_height, left:left + crop_width]
    # Smaller than the crop: centred on a black canvas first, as transformers' center_crop pads.
    canvas_height, canvas_width = max(crop_height, height), max(crop_width, width)
    canvas = np.zeros((canvas_height, canvas_width, 3), dtype=image.dtype)
    top_pad, left_pad = ceil((canvas_height - height) / 2), ceil((canvas_width - width) / 2)
    canvas[top_pad:top_pad + height, left_pad:left_pad + width] = image
    return _centre_crop(canvas, crop_height, crop_width)


class DeviceRows:
    """A batch of model inputs in GPU memory (a DALI TensorListGPU), shared by its images' DeviceRows.
    DALI's buffer lives as long as this object (its dynamic executor never reuses a buffer still
    referenced); the pipeline's outputs are synchronised with the host, so the rows are ready."""

    def __init__(self, tensors):
        self.tensors = tensors
        self.device_id = int(tensors.device_id())
        self.pointers = [int(tensors[index].data_ptr()) for index in range(len(tensors))]
        first = tensors[0] if len(tensors) else None
        self.shape = tuple(first.shape()) if first is not None else ()
        self.dtype = np.dtype(np.float16 if "FLOAT16" in str(tensors.dtype) else np.float32)
        self.row_bytes = int(np.prod(self.shape)) * self.dtype.itemsize if self.shape else 0

    def __len__(self) -> int:
        return len(self.pointers)


@dataclass(frozen=True, eq=False)
class DeviceRow:
    """One image's model input, a row of DeviceRows on the GPU. Pickles (and so crosses a process) as
    the host array it copies."""

    rows: DeviceRows
    index: int

    @property
    def nbytes(self) -> int:
        return self.rows.row_bytes

    @property
    def pointer(self) -> int:
        return self.rows.pointers[self.index]

    def to_host(self) -> np.ndarray:
        return np.asarray(self.rows.tensors[self.index].as_cpu())

    def copy_to(self, pointer: int) -> None:
        """Copy the row to GPU memory at `pointer` (device to device; returns when done)."""
        import ctypes

        self.rows.tensors[self.index].copy_to_external(ctypes.c_void_p(pointer))

    def __reduce__(self):
        return (np.asarray, (self.to_host(),))
