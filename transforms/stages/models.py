"""Curation with models: CLIP embeddings, and the aesthetic, NSFW and caption-similarity filters.

NeMo Curator's stage names, parameters and defaults, on ONNX Runtime over a MODEL_DIR that
`beam-curator export-models` wrote (beam_curator.models.model_dir). Each stage is a CurationStage, so filtered
images become FilterRecords (stage, score, threshold) and counts reach `_stats.json`.

Why a stage over a model handler and not RunInference: Beam's RunInference batches elements itself,
and an ImageBatch must stay whole (its origin and records go to the writer). Its default BatchElements
glues dozens of ImageBatches into one model call, `with_no_batching()` splits each into single images,
and `max_batch_weight` fails at construction (Beam 2.77). Here a batch's images go to the model in
calls of at most model_inference_batch_size. The models are a handler of their own
(beam_curator.models.handler.OnnxModels: load, run, device), one per worker process (PerProcess),
serving every DoFn thread of that process: ONNX Runtime's run() is thread-safe.

Sessions are built on the worker, in setup(): constructing a stage reads the small manifest (so a
wrong MODEL_DIR fails before the job starts) and nothing else: no model, no CUDA.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import operator
import time

import numpy as np

from beam_curator.formats.model_input import ModelInput
from beam_curator.models.handler import ModelLoading, OnnxModels
from beam_curator.models.model_dir import ModelManifest, read_manifest
from beam_curator.tasks import ImageBatch, ImageObject
from beam_curator.transforms.per_process import PerProcess, use_gpu
from beam_curator.transforms.stages.kit import CurationStage, Dropped, Failed, StageOutcome

__all__ = ["ImageAestheticFilterStage", "ImageEmbeddingStage", "ImageNSFWFilterStage",
           "ImageTextSimilarityFilterStage"]

_LOG = logging.getLogger(__name__)
_KEEPS = {">=": operator.ge, "<": operator.lt}  # _ScoreFilterStage.comparison -> the test a kept score passes


def _check_options(num_gpus_per_worker, model_inference_batch_size) -> None:
    if not isinstance(num_gpus_per_worker, (int, float)) or isinstance(num_gpus_per_worker, bool) \
            or num_gpus_per_worker < 0:
        raise ValueError(f"num_gpus_per_worker must be a number >= 0 (0 runs the model on the CPU), "
                         f"got {num_gpus_per_worker!r}")
    if not isinstance(model_inference_batch_size, int) or isinstance(model_inference_batch_size, bool) \
            or model_inference_batch_size < 1:
        raise ValueError(f"model_inference_batch_size must be a positive integer, got {model_inference_batch_size!r}")


class _ModelStage(CurationStage):
    """A CurationStage that runs models of MODEL_DIR. Subclasses name the roles they need."""

    roles: tuple[str, ...] = ()

    def __init__(self, model_dir: str, num_gpus_per_worker: float, model_inference_batch_size: int,
                 verbose: bool, *, name: str):
        super().__init__(name=name)
        _check_options(num_gpus_per_worker, model_inference_batch_size)
        self.model_dir = model_dir
        self.num_gpus_per_worker = num_gpus_per_worker
        self.model_inference_batch_size = model_inference_batch_size
        self.verbose = verbose
        self.manifest: ModelManifest = read_manifest(model_dir)
        for role in self.roles:
            self.manifest.require(role, wanted_by=type(self).__name__)
        self._models: PerProcess[ModelLoading] = PerProcess(f"{name}_models_built")

    def setup(self) -> None:
        gpu = use_gpu(self.num_gpus_per_worker)
        self._held = self._models.acquire(
            lambda: ModelLoading(lambda: OnnxModels.load(self.manifest, self.roles, use_gpu=gpu, name=self.stage_name),
                                 self.stage_name),
            tag=(self.manifest.model_dir, self.roles, gpu))

    @property
    def models(self) -> OnnxModels:
        return self._held.value.get()

    def _count_build(self) -> None:
        # Counted on the first batch, not in setup(): counters from setup() are dropped by the FnApiRunner.
        self._held.report_build()

    def _embeddings(self, batch: ImageBatch) -> np.ndarray:
        """The batch's image embeddings, n x D; ValueError when a stage that computes them is missing."""
        missing = [obj.image_id for obj in batch.data if obj.embedding is None]
        if missing:
            raise ValueError(f"{type(self).__name__} ({self.stage_name}) needs image embeddings, and image "
                             f"{missing[0]} has none: add ImageEmbeddingStage(model_dir) before it")
        embeddings = np.stack([np.asarray(obj.embedding, dtype=np.float32).ravel() for obj in batch.data]) \
            if batch.data else np.zeros((0, self.manifest.embedding_dim), dtype=np.float32)
        if embeddings.shape[1] != self.manifest.embedding_dim:
            raise ValueError(f"{self.stage_name}: the images carry {embeddings.shape[1]}-dimensional embeddings, the "
                             f"models of {self.model_dir} want {self.manifest.embedding_dim}: embed with the same "
                             "MODEL_DIR")
        return embeddings

    def _log(self, batch: ImageBatch, seconds: float) -> None:
        if self.verbose:
            _LOG.info("%s: %d images of %s in %.2f s on the %s", self.stage_name, batch.num_items, batch.task_id,
                      seconds, self.models.device)

    def display_data(self):
        return {"name": self.stage_name, "model_dir": self.model_dir, "num_gpus_per_worker": self.num_gpus_per_worker,
                "model_inference_batch_size": self.model_inference_batch_size}


class ImageEmbeddingStage(_ModelStage):
    """CLIP image embeddings (float32, L2-normalised) into `embedding`, with CLIP's own preprocessing.

    The preprocessed input comes from the reader's DALI pipeline when the reader was asked for it
    (`ImageReaderStage(...).for_stages(stages)`, which the curate job does; `model_input` says what to
    make); otherwise it is made here from the decoded pixels with Pillow, on a thread per core.
    remove_image_data: drop the decoded pixels once embedded (the writer then writes the original
    bytes); kept when a stage before changed them, since nothing else holds those pixels.
    An image that cannot be preprocessed, or whose embedding is not finite, fails alone.
    """

    roles = ("image_encoder",)
    needs = ("model_input",)
    provides = ("embedding",)

    def __init__(self, model_dir: str, num_gpus_per_worker: float = 0.25, model_inference_batch_size: int = 32,
                 verbose: bool = False, remove_image_data: bool = False, *, name: str = "image_embedding"):
        super().__init__(model_dir, num_gpus_per_worker, model_inference_batch_size, verbose, name=name)
        self.remove_image_data = remove_image_data

    @property
    def model_input(self) -> ModelInput:
        """The input its image tower takes (the manifest's preprocessing, in the tower's dtype): what a
        reader makes for it in the decoding pipeline."""
        return ModelInput.of(self.manifest.preprocessing, self.manifest.dtype)

    def process_batch(self, batch: ImageBatch) -> StageOutcome:
        self._count_build()
        started = time.perf_counter()
        outcome = StageOutcome(kept=[])
        size = self.model_inference_batch_size
        # Chunks are prepared on the handle's threads (only images without a model input need work)
        # while the model runs on the chunks before them.
        preprocessing = self._held.value.preprocessing
        spec = self.model_input
        chunks = [preprocessing.submit(_prepare, batch.data[start:start + size], spec)
                  for start in range(0, batch.num_items, size)]
        for chunk in chunks:
            ready, failed = chunk.result()
            outcome.failed += failed
            if not ready:
                continue
            embeddings = self.models.embed_images([model_input for _, model_input in ready])
            for (obj, _), embedding in zip(ready, embeddings):
                if not np.all(np.isfinite(embedding)):
                    outcome.failed.append(Failed(obj, ValueError("the model gave a non-finite embedding")))
                    continue
                changes: dict = {"embedding": embedding, "model_input": None}  # used up: frees its memory
                if self.remove_image_data and obj.pixels_unchanged:
                    changes.update(image_data=None, decoded_pixels=None)
                outcome.kept.append(dataclasses.replace(obj, **changes))
        self._log(batch, time.perf_counter() - started)
        return outcome

    def display_data(self):
        return {**super().display_data(), "remove_image_data": self.remove_image_data}


def _prepare(objects: list[ImageObject], spec: ModelInput) -> tuple[list[tuple[ImageObject, object]], list[Failed]]:
    """((image, its model input) for the images ready, the images that failed): the reader's model input,
    or one made from the pixels; an image that cannot be preprocessed fails alone."""
    ready, failed = [], []
    for obj in objects:
        try:
            if obj.model_input is not None:
                ready.append((obj, obj.model_input))
            elif obj.image_data is None:
                raise ValueError("the image has neither a model input nor decoded pixels (image_data is None)")
            else:
                ready.append((obj, spec.on_host(obj.image_data)))
        except Exception as error:  # the image fails alone
            failed.append(Failed(obj, error))
    return ready, failed


class _ScoreFilterStage(_ModelStage):
    """Score every image from its embedding; keep it when `score <comparison> score_threshold`
    (score_threshold=None: score only). An image whose score is not finite fails alone. NeMo Curator's
    parameters and defaults; subclasses name their model role, column, comparison and default name."""

    needs = ("embedding",)
    column = ""  # the ImageObject attribute (or parquet score column) the score goes to
    comparison = ">="  # how a kept image's score compares to the threshold (also the records' reasons)
    default_name = ""

    def __init__(self, model_dir: str, num_gpus_per_worker: float = 0.25, model_inference_batch_size: int = 32,
                 score_threshold: float | None = 0.5, verbose: bool = False, *, name: str | None = None):
        super().__init__(model_dir, num_gpus_per_worker, model_inference_batch_size, verbose,
                         name=name or self.default_name)
        if score_threshold is not None and (isinstance(score_threshold, bool) or not isinstance(
                score_threshold, (int, float)) or not math.isfinite(score_threshold)):
            raise ValueError(f"score_threshold must be a number, or None to score without filtering, "
                             f"got {score_threshold!r}")
        self.score_threshold = None if score_threshold is None else float(score_threshold)

    def keeps(self, score: float) -> bool:
        """Whether an image of this score is kept (always without a threshold)."""
        return self.score_threshold is None or _KEEPS[self.comparison](score, self.score_threshold)

    def scores(self, batch: ImageBatch) -> list[float | None]:
        return self.models.head(self.roles[0], self._embeddings(batch), self.model_inference_batch_size).tolist()

    def process_batch(self, batch: ImageBatch) -> StageOutcome:
        self._count_build()
        started = time.perf_counter()
        outcome = StageOutcome(kept=[])
        for obj, score in zip(batch.data, self.scores(batch)):
            if score is not None and not math.isfinite(score):
                outcome.failed.append(Failed(obj, ValueError(f"the model gave a non-finite {self.column}: {score}")))
                continue
            scored = self.with_score(obj, score)
            if self.score_threshold is None or score is None or self.keeps(score):
                outcome.kept.append(scored)
            else:
                outcome.dropped.append(Dropped(scored, reason=f"{self.column} {score:.6g} is not {self.comparison} "
                                                              f"{self.score_threshold:g}",
                                               score=score, threshold=self.score_threshold))
        self._log(batch, time.perf_counter() - started)
        return outcome

    def with_score(self, obj: ImageObject, score: float | None) -> ImageObject:
        return obj.with_score(self.column, score)

    def display_data(self):
        return {**super().display_data(), "score_threshold": str(self.score_threshold)}


class ImageAestheticFilterStage(_ScoreFilterStage):
    """LAION's improved aesthetic predictor on the CLIP embedding -> `aesthetic_score` (about 1-10);
    keeps images with aesthetic_score >= score_threshold. Needs ImageEmbeddingStage before it."""

    roles = ("aesthetic",)
    column = "aesthetic_score"
    provides = ("aesthetic_score",)
    comparison = ">="
    default_name = "aesthetic_filter"


class ImageNSFWFilterStage(_ScoreFilterStage):
    """LAION's CLIP-based NSFW detector on the CLIP embedding -> `nsfw_score` (a probability);
    keeps images with nsfw_score < score_threshold. Needs ImageEmbeddingStage before it."""

    roles = ("nsfw",)
    column = "nsfw_score"
    provides = ("nsfw_score",)
    comparison = "<"
    default_name = "nsfw_filter"


class ImageTextSimilarityFilterStage(_ScoreFilterStage):
    """CLIP score: the cosine between the image embedding and the embedding of the sample's `.txt`
    caption -> the parquet's `clip_score`; keeps images with clip_score >= score_threshold (DataComp's
    CLIP score filter). A sample without a caption gets no score and is kept, or dropped with
    drop_without_caption=True. Needs ImageEmbeddingStage before it."""

    roles = ("text_encoder", "tokenizer")
    column = "clip_score"
    provides = ("clip_score",)
    comparison = ">="

    def __init__(self, model_dir: str, num_gpus_per_worker: float = 0.25, model_inference_batch_size: int = 32,
                 score_threshold: float | None = None, verbose: bool = False, *, name: str = "clip_score_filter",
                 drop_without_caption: bool = False):
        super().__init__(model_dir, num_gpus_per_worker, model_inference_batch_size, score_threshold, verbose,
                         name=name)
        self.drop_without_caption = drop_without_caption

    def scores(self, batch: ImageBatch) -> list[float | None]:
        from beam_curator.models.inference import l2_normalise

        images = l2_normalise(self._embeddings(batch))
        captions = {index: obj.caption for index, obj in enumerate(batch.data) if obj.caption is not None}
        captioned = list(captions)
        scores: list[float | None] = [None] * batch.num_items
        texts = self.models.embed_texts(list(captions.values()), self.model_inference_batch_size)
        for index, text in zip(captioned, texts):
            scores[index] = float(np.dot(images[index], text))
        return scores

    def process_batch(self, batch: ImageBatch) -> StageOutcome:
        outcome = super().process_batch(batch)
        if self.drop_without_caption:
            uncaptioned = [obj for obj in outcome.kept if obj.caption is None]
            outcome.kept = [obj for obj in outcome.kept if obj.caption is not None]
            outcome.dropped += [Dropped(obj, reason="the sample has no caption (.txt)") for obj in uncaptioned]
        return outcome

    def display_data(self):
        return {**super().display_data(), "drop_without_caption": self.drop_without_caption}
