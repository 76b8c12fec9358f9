"""Running the exported models: ONNX Runtime sessions, CLIP's preprocessing, caption tokens.

Everything here runs on the worker, from a stage's setup() or process_batch(); nothing imports
onnxruntime or tokenizers at module import, so building a pipeline loads no model and touches no GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from math import ceil
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["CaptionTokenizer", "OnnxModel", "clip_pixels", "l2_normalise"]

_LOG = logging.getLogger(__name__)
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


class OnnxModel:
    """One ONNX Runtime session. InferenceSession.run is thread-safe, so the DoFn threads of a worker
    process share one (the stages hold it through apache_beam.utils.shared.Shared).

    use_gpu: run on CUDA (device_id) when this onnxruntime has the CUDA provider; else the CPU, with a
    warning naming the package to install.
    """

    def __init__(self, path: str, *, use_gpu: bool, device_id: int = 0):
        import onnxruntime as ort

        providers: list[Any] = ["CPUExecutionProvider"]
        if use_gpu:
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
            else:
                _LOG.warning("this worker has a GPU but its onnxruntime has no CUDA provider (install "
                             "onnxruntime-gpu instead of onnxruntime: pip install 'beam-curator[gpu]'); "
                             "%s runs on the CPU", path)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise here
        self.session = ort.InferenceSession(path, options, providers=providers)
        self.path = path
        self.provider = self.session.get_providers()[0]
        self.inputs = {arg.name: arg for arg in self.session.get_inputs()}
        first = next(iter(self.inputs.values()))
        self.input_dtype = np.float16 if first.type == "tensor(float16)" else np.float32

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The model's first output for one call, as float32."""
        return np.asarray(self.session.run(None, feeds)[0], dtype=np.float32)

    def run_in_chunks(self, array: np.ndarray, batch_size: int) -> np.ndarray:
        """The model's output over `array` (its single input), at most batch_size rows per call."""
        (name,) = self.inputs
        outputs = [self.run({name: array[start:start + batch_size].astype(self.input_dtype, copy=False)})
                   for start in range(0, len(array), batch_size)]
        return np.concatenate(outputs) if outputs else np.zeros((0,), dtype=np.float32)


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def clip_pixels(image: np.ndarray, preprocessing: dict[str, Any]) -> np.ndarray:
    """CLIP's preprocessing of one HxWx3 uint8 RGB image -> 3xHxW float32, as Hugging Face's
    CLIPImageProcessor does it with Pillow: shortest side to `shortest_edge` (the long side int()-ed),
    resampled with Pillow (bicubic), centre crop (zero-padded if the image is smaller), times
    rescale_factor, minus mean, over std."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 image, got {getattr(image, 'shape', type(image))}")
    height, width = image.shape[:2]
    size = int(preprocessing["shortest_edge"])
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_width, new_height = (size, new_long) if width <= height else (new_long, size)
    if (new_width, new_height) != (width, height):
        resample = _RESAMPLE[preprocessing.get("resample", "bicubic")]
        image = np.asarray(Image.fromarray(image).resize((new_width, new_height), resample=resample))
    image = _centre_crop(image, int(preprocessing["crop_height"]), int(preprocessing["crop_width"]))
    scaled = image.astype(np.float32) * np.float32(preprocessing.get("rescale_factor", 1 / 255))
    mean = np.asarray(preprocessing["mean"], dtype=np.float32)
    std = np.asarray(preprocessing["std"], dtype=np.float32)
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


class CaptionTokenizer:
    """CLIP's tokenizer from the tokenizer.json export-models saved (the `tokenizers` library: no
    transformers), truncated to the text model's context length, padded to the longest caption."""

    def __init__(self, path: str, *, context_length: int, pad_token_id: int):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(path)
        self._tokenizer.enable_truncation(max_length=int(context_length))  # special tokens kept at the ends
        pad_token = self._tokenizer.id_to_token(int(pad_token_id))
        if pad_token is None:
            raise ValueError(f"{path} has no token of id {pad_token_id} (the manifest's pad_token_id)")
        self._tokenizer.enable_padding(pad_id=int(pad_token_id), pad_token=pad_token)

    def __call__(self, captions: Sequence[str]) -> dict[str, np.ndarray]:
        encodings = self._tokenizer.encode_batch(list(captions))
        return {"input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64)}
