"""ImageReaderStage: FileGroupTask -> ImageBatch, decoding WebDataset shards with a per-worker DALI pipeline."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.utils import shared

from beam_curator import storage
from beam_curator.decoding import DaliImageDecoder, ImageDecodeError, cuda_device_count
from beam_curator.tasks import FileGroupTask, ImageBatch, ImageObject
from beam_curator.webdataset import RawSample, iter_samples
from .metrics import counter

__all__ = ["ImageReaderStage"]

_LOG = logging.getLogger(__name__)
_PROGRESS_EVERY_S = 2.0


class _DecoderHandle:
    """What a process shares between its DoFn threads: the decoder, and who built it."""

    def __init__(self, decoder: DaliImageDecoder):
        self.decoder = decoder
        self.label = f"{os.uname().nodename}:{os.getpid()}:{id(decoder):x}"


class _ReadImagesFn(beam.DoFn):
    def __init__(self, stage: ImageReaderStage, shared_handle: shared.Shared):
        self._stage_name = stage.stage_name
        self._batch_size = stage.dali_batch_size
        self._num_threads = stage.num_threads
        self._num_gpus = stage.num_gpus_per_worker
        self._verbose = stage.verbose
        self._progress_dir = stage.progress_dir
        self._shared_handle = shared_handle
        self._built_here = False
        self._reported_build = False

    def setup(self):
        def build() -> _DecoderHandle:
            use_gpu = self._num_gpus > 0 and cuda_device_count() > 0
            self._built_here = True
            return _DecoderHandle(
                DaliImageDecoder(batch_size=self._batch_size, num_threads=self._num_threads, use_gpu=use_gpu)
            )

        tag = (self._batch_size, self._num_threads, self._num_gpus > 0)
        # Holding the handle keeps the shared pipeline alive for as long as this DoFn lives.
        self._handle = self._shared_handle.acquire(build, tag=tag)
        self._progress = _ProgressFile(self._progress_dir) if self._progress_dir else None

    def process(self, task: FileGroupTask) -> Iterator[ImageBatch]:
        # FileGroupTask -> ImageBatch, one per at most dali_batch_size decoded images, streamed.
        if self._built_here and not self._reported_build:
            # Counted here, not in setup(): counters from setup() are dropped by the FnApiRunner.
            counter("dali_pipelines_built").inc()
            self._reported_build = True
        sources = task._metadata.get("source_files", task.data)
        source_ids = task._metadata.get("source_ids", sources)
        batch_index = 0
        pending: list[tuple[ImageObject, bytes]] = []
        started = time.perf_counter()
        samples = self._samples(task, sources, source_ids)
        upcoming = next(samples, None)
        while upcoming is not None:
            pending.append(upcoming)
            upcoming = next(samples, None)
            if len(pending) == self._batch_size or upcoming is None:
                yield self._decode_batch(task, pending, batch_index, last=upcoming is None, started=started)
                batch_index += 1
                pending = []
                started = time.perf_counter()
        if batch_index == 0:
            # A partition with no image still tells the writer it is complete.
            yield self._decode_batch(task, [], 0, last=True, started=started)

    def _samples(self, task, sources, source_ids) -> Iterator[tuple[ImageObject, bytes]]:
        log = _LOG.info if self._verbose else _LOG.debug
        for url, source_id in zip(sources, source_ids):
            shard_start = time.perf_counter()
            count = 0
            seen_keys: dict[str, int] = {}
            with storage.open_read(url) as stream:
                for sample in iter_samples(stream):
                    counter("samples_read").inc()
                    obj = self._image_object(task, url, source_id, sample, seen_keys)
                    if obj is None:
                        continue
                    count += 1
                    if self._progress:
                        self._progress.add_images(1)
                    yield obj
            counter("shards_read").inc()
            if self._progress:
                self._progress.add_shard()
            log("read %d image(s) from %s in %.2fs", count, url, time.perf_counter() - shard_start)

    def _image_object(self, task, url, source_id, sample: RawSample, seen_keys) -> ImageObject | None:
        extension = sample.image_extension()
        if extension is None:
            counter("samples_without_image").inc()
            _LOG.warning("sample %r in %s has no image member (members: %s)", sample.key, url, sorted(sample.members))
            return None
        occurrence = seen_keys.get(sample.key, 0)
        seen_keys[sample.key] = occurrence + 1
        image_id = f"{source_id}/{sample.key}" + (f"~{occurrence}" if occurrence else "")
        image_bytes = sample.members.pop(extension)
        return ImageObject(
            image_path=f"{url}#{sample.member_names[extension]}",
            image_id=image_id,
            key=sample.key,
            image_bytes=image_bytes,
            image_format=extension,
            companions=sample.members,
            metadata={},
        )

    def _decode_batch(self, task, objects: list[ImageObject], index: int, *, last: bool, started: float) -> ImageBatch:
        results = self._handle.decoder.decode([obj.image_bytes for obj in objects]) if objects else []
        decoded = []
        for obj, pixels in zip(objects, results):
            if isinstance(pixels, ImageDecodeError):
                counter("images_failed").inc()
                _LOG.warning("could not decode %s: %s", obj.image_path, pixels)
                continue
            pixels.flags.writeable = False  # stages that change pixels build a new array
            obj.image_data = obj.decoded_pixels = pixels
            obj.height, obj.width = int(pixels.shape[0]), int(pixels.shape[1])
            decoded.append(obj)
        counter("images_decoded").inc(len(decoded))
        batch = ImageBatch(
            task_id=f"{task.task_id}_{index:06d}",
            dataset_name=task.dataset_name,
            data=decoded,
            # dali_pipeline names the decoder ("{host}:{pid}:{id}"), to see which process decoded what.
            _metadata={**task._metadata, "batch_index": index, "last_batch": last, "dali_pipeline": self._handle.label},
            _stage_perf=list(task._stage_perf),
        )
        batch.add_stage_perf(self._stage_name, time.perf_counter() - started, len(decoded))
        return batch

    def teardown(self):
        if getattr(self, "_progress", None):
            self._progress.flush()


class _ProgressFile:
    """Running totals of one DoFn instance, written to a local file that the CLI sums for progress."""

    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        self._path = os.path.join(directory, f"{os.getpid()}-{threading.get_ident()}-{id(self):x}.json")
        self._shards = 0
        self._images = 0
        self._written_at = 0.0

    def add_images(self, count: int) -> None:
        self._images += count
        if time.monotonic() - self._written_at > _PROGRESS_EVERY_S:
            self.flush()

    def add_shard(self) -> None:
        self._shards += 1
        self.flush()

    def flush(self) -> None:
        temporary = f"{self._path}.tmp"
        with open(temporary, "w") as handle:
            json.dump({"shards": self._shards, "images": self._images}, handle)
        os.replace(temporary, self._path)
        self._written_at = time.monotonic()


class ImageReaderStage(beam.PTransform):
    """Read WebDataset shards and decode their images with NVIDIA DALI.

    Args:
      dali_batch_size: images per DALI batch and the most per emitted ImageBatch.
      verbose: log one line per shard at INFO (else at DEBUG).
      num_threads: DALI's decoding threads per worker process.
      num_gpus_per_worker: 0 decodes on the CPU always; above 0 decodes on the GPU ('mixed') on a
        worker that sees a CUDA device, and on the CPU on one that does not. Beam has no fractional
        GPU scheduling: GPUs are attached per worker VM (see docs/DEPLOYMENT.md).
      progress_dir: a local directory where each worker writes running totals (the CLI's progress).
    """

    def __init__(
        self,
        dali_batch_size: int = 100,
        verbose: bool = True,
        num_threads: int = 8,
        num_gpus_per_worker: float = 0.25,
        *,
        name: str = "image_reader",
        progress_dir: str | None = None,
    ):
        super().__init__()
        if not isinstance(dali_batch_size, int) or dali_batch_size < 1:
            raise ValueError(f"dali_batch_size must be a positive integer, got {dali_batch_size!r}")
        if not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}")
        if not isinstance(num_gpus_per_worker, (int, float)) or num_gpus_per_worker < 0:
            raise ValueError(f"num_gpus_per_worker must be 0 (CPU) or more, got {num_gpus_per_worker!r}")
        self.dali_batch_size = dali_batch_size
        self.verbose = verbose
        self.num_threads = num_threads
        self.num_gpus_per_worker = float(num_gpus_per_worker)
        self.stage_name = name
        self.progress_dir = progress_dir
        self._shared_handle = shared.Shared()

    def expand(self, tasks):
        # FileGroupTask -> ImageBatch
        return tasks | "ReadAndDecode" >> beam.ParDo(_ReadImagesFn(self, self._shared_handle))

    def display_data(self):
        return {
            "dali_batch_size": self.dali_batch_size,
            "num_threads": self.num_threads,
            "num_gpus_per_worker": self.num_gpus_per_worker,
            "verbose": self.verbose,
        }
