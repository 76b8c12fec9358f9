"""Test oracles for the tiny models (beam_curator.models.tiny): Hugging Face's own CLIP image
processor, and the two heads in numpy, which the exported ONNX models are checked against."""

from __future__ import annotations

import numpy as np

from beam_curator.models.tiny import _processor_class


def reference_processor(directory: str):
    return _processor_class().from_pretrained(directory)


def aesthetic_numpy(state: dict, embeddings: np.ndarray) -> np.ndarray:
    """The aesthetic head in numpy: the reference the exported ONNX head is checked against."""
    x = embeddings.astype(np.float64)
    for index in (0, 2, 4, 6, 7):
        x = x @ np.asarray(state[f"layers.{index}.weight"], np.float64).T + np.asarray(state[f"layers.{index}.bias"])
    return x[:, 0]


def nsfw_numpy(state: dict, embeddings: np.ndarray) -> np.ndarray:
    x = (embeddings.astype(np.float64) - np.asarray(state["norm.mean"])) / np.sqrt(np.asarray(state["norm.variance"],
                                                                                              np.float64))
    for index in (1, 2, 3):
        x = np.maximum(x @ np.asarray(state[f"linear_{index}.weight"], np.float64).T
                       + np.asarray(state[f"linear_{index}.bias"]), 0)
    x = x @ np.asarray(state["linear_4.weight"], np.float64).T + np.asarray(state["linear_4.bias"])
    return 1 / (1 + np.exp(-x[:, 0]))
