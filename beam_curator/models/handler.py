"""The model handler: what one worker process holds to run a stage's models, apart from the stage (as
Beam's ModelHandler is apart from RunInference).

OnnxModels loads the ONNX Runtime sessions of some roles of a MODEL_DIR (and the tokenizer) on the CPU
or on CUDA, and runs them: CLIP's image tower on preprocessed pixels, a head on embeddings, the text
tower on captions, each in calls of at most `batch_size` rows. ModelLoading builds it on a thread of
its own, so that a worker lists, reads and decodes its first batch meanwhile (a ViT session takes ~0.7 s
to build), and builds it again at the next use after a failure (a transient read error must not stick
to the worker). No Beam here.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from beam_curator.models.model_dir import ModelManifest, fetch_model_files

__all__ = ["ModelLoading", "OnnxModels"]

_LOG = logging.getLogger(__name__)


# The score heads are small MLPs over one embedding (microseconds a call): run on the calling thread.
# Measured with a pool (ONNX Runtime's default): its threads spun after every call and took CPU from
# DALI's decoding in the same process (docs/PERFORMANCE.md, the model path's own cost).
_HEADS = ("aesthetic", "nsfw")
_HEAD_THREADS = 1


class OnnxModels:
    """The sessions of `roles` of a MODEL_DIR (role -> OnnxModel), its tokenizer when a role needs
    it, and where they run ("gpu" or "cpu")."""

    def __init__(self, sessions: dict, tokenizer, device: str, manifest: ModelManifest):
        self.sessions, self.tokenizer, self.device, self.manifest = sessions, tokenizer, device, manifest

    @classmethod
    def load(cls, manifest: ModelManifest, roles: Sequence[str], *, use_gpu: bool, name: str = "") -> OnnxModels:
        from beam_curator.models.inference import CaptionTokenizer, OnnxModel

        started = time.perf_counter()
        paths = fetch_model_files(manifest, tuple(roles))
        sessions = {role: OnnxModel(path, use_gpu=use_gpu, threads=_HEAD_THREADS if role in _HEADS else None)
                    for role, path in paths.items() if role != "tokenizer"}
        tokenizer = None
        if "tokenizer" in paths:
            tokenizer = CaptionTokenizer(paths["tokenizer"], context_length=manifest.text["context_length"],
                                         pad_token_id=manifest.text["pad_token_id"])
        device = "gpu" if any(s.provider == "CUDAExecutionProvider" for s in sessions.values()) else "cpu"
        _LOG.info("%s: loaded %s on the %s in pid %d (%.1f s)", name or "models", ", ".join(sessions), device,
                  os.getpid(), time.perf_counter() - started)
        return cls(sessions, tokenizer, device, manifest)

    def embed_images(self, inputs: Sequence) -> np.ndarray:
        """CLIP image embeddings (n x D, L2-normalised by the exported tower) of n images' model inputs
        (host arrays or DeviceRows on the GPU; see OnnxModel.run_rows), in one call."""
        return self.sessions["image_encoder"].run_rows(inputs)

    def head(self, role: str, embeddings: np.ndarray, batch_size: int) -> np.ndarray:
        """A head's scores (n) of n embeddings."""
        return self.sessions[role].run_in_chunks(embeddings, batch_size).reshape(len(embeddings))

    def embed_texts(self, captions: Sequence[str], batch_size: int) -> np.ndarray:
        """CLIP text embeddings (n x D, L2-normalised) of n captions."""
        from beam_curator.models.inference import l2_normalise

        model, parts = self.sessions["text_encoder"], []
        for start in range(0, len(captions), batch_size):
            parts.append(l2_normalise(model.run(self.tokenizer(list(captions[start:start + batch_size])))))
        return np.concatenate(parts) if parts else np.zeros((0, self.manifest.embedding_dim), np.float32)


class ModelLoading:
    """A process's models, being loaded on a thread of their own (see the module), and the threads that
    prepare images for them while they run, when the reader did not (Pillow releases the GIL: one
    thread per core)."""

    def __init__(self, load: Callable[[], OnnxModels], name: str):
        self.preprocessing = ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix=f"{name}-preprocess")
        self._load, self._name = load, name
        self._lock = threading.Lock()
        self._loaded = self._start()

    def _start(self) -> Future:
        loader = ThreadPoolExecutor(1, thread_name_prefix=f"{self._name}-load")
        future = loader.submit(self._load)
        loader.shutdown(wait=False)
        return future

    def get(self) -> OnnxModels:
        """The models, once loaded. A load that failed raises here, in the stage's process(), and the
        next call loads again."""
        future = self._loaded
        try:
            return future.result()
        except Exception:
            with self._lock:
                if self._loaded is future:
                    self._loaded = self._start()
            raise
