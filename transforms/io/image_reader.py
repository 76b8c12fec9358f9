"""ImageReaderStage: FileGroupTask -> ImageBatch, decoding WebDataset shards with a per-worker DALI pipeline."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import NamedTuple

import apache_beam as beam
from apache_beam.utils import shared
from apache_beam.utils.windowed_value import WindowedValue

from beam_curator import storage
from beam_curator.formats.decoding import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DaliImageDecoder,
    ImageDecodeError,
    cuda_device_count,
)
from beam_curator.formats.isolated_decoding import IsolatedDecoder
from beam_curator.formats.sample_rules import SampleRules, is_shard_damage
from beam_curator.formats.webdataset import DEFAULT_MAX_MEMBER_BYTES, SkippedMember, iter_samples, split_member_name
from beam_curator.records import FailureRecord
from beam_curator.tasks import BatchOrigin, FileGroupTask, ImageBatch, ImageObject
from beam_curator.transforms.coders import ImageBatchCoder  # noqa: F401 - registers the ImageBatch coder
from beam_curator.transforms.metrics import counter

__all__ = ["FAILURES_TAG", "FailureThresholdExceeded", "ImageReaderStage", "ReadResult", "is_shard_damage"]

_LOG = logging.getLogger(__name__)
_PROGRESS_EVERY_S = 2.0
FAILURES_TAG = "failures"


class ReadResult(NamedTuple):
    """What ImageReaderStage.with_exception_handling() returns: ImageBatches and FailureRecords."""

    batches: object
    failures: object


@dataclass
class _SubmittedBatch:
    """A batch's images handed to DALI (`future` is None for an empty batch), and its task's window."""

    task: FileGroupTask
    objects: list[ImageObject]
    future: Future | None
    index: int
    last: bool
    started: float
    timestamp: object
    window: object
    counts: Counter = field(default_factory=Counter)  # what the reader counted for this batch
    failures: list[FailureRecord] = field(default_factory=list)  # the reader's records that go with it


class _DecoderHandle:
    """What a process shares between its DoFn threads: the decoder, and who built it."""

    def __init__(self, decoder: DaliImageDecoder):
        self.decoder = decoder
        self.label = f"{os.uname().nodename}:{os.getpid()}:{id(decoder):x}"


class _ReadImagesFn(beam.DoFn):
    emits_partitions_in_order = True  # all of a partition's batches, in order, from one process() call
    def __init__(self, stage: ImageReaderStage, shared_handle: shared.Shared):
        self._stage_name = stage.stage_name
        self._batch_size = stage.dali_batch_size
        self._num_threads = stage.num_threads
        self._num_gpus = stage.num_gpus_per_worker
        self._verbose = stage.verbose
        self._progress_dir = stage.progress_dir
        self._max_member_bytes = stage.max_member_bytes
        self._rules = SampleRules(stage=stage.stage_name, max_image_pixels=stage.max_image_pixels,
                                  max_member_bytes=stage.max_member_bytes)
        self._emit_failures = stage._with_failures
        self._isolate_decoder = stage.isolate_decoder
        self._shared_handle = shared_handle
        self._built_here = False
        self._reported_build = False

    def setup(self):
        def build() -> _DecoderHandle:
            use_gpu = self._num_gpus > 0 and cuda_device_count() > 0
            isolate = use_gpu if self._isolate_decoder is None else self._isolate_decoder
            self._built_here = True
            decoder_class = IsolatedDecoder if isolate else DaliImageDecoder
            return _DecoderHandle(
                decoder_class(batch_size=self._batch_size, num_threads=self._num_threads, use_gpu=use_gpu)
            )

        tag = (self._batch_size, self._num_threads, self._num_gpus > 0, self._isolate_decoder)
        # Holding the handle keeps the shared pipeline alive for as long as this DoFn lives.
        self._handle = self._shared_handle.acquire(build, tag=tag)
        self._progress = _ProgressFile(self._progress_dir) if self._progress_dir else None

    def start_bundle(self):
        # The batch DALI decodes while this thread reads on and the writer writes; it may belong to
        # the previous element, so the decoder never waits between partitions.
        self._in_flight: _SubmittedBatch | None = None
        self._counts = Counter()  # counted since the last batch was submitted; goes with the next one
        self._failures: list[FailureRecord] = []  # recorded since then; go with it too (batch.read_failures)

    def process(self, task: FileGroupTask, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        # FileGroupTask -> ImageBatch, one per at most dali_batch_size decoded images, streamed;
        # FailureRecord (tagged 'failures') for what could not be used.
        if self._built_here and not self._reported_build:
            # Counted here, not in setup(): counters from setup() are dropped by the FnApiRunner.
            counter("dali_pipelines_built").inc()
            self._reported_build = True
        sources = task._metadata.get("source_files", task.data)
        source_ids = task._metadata.get("source_ids", sources)
        batch_index = 0
        pending: list[ImageObject] = []
        started = time.perf_counter()
        items = self._images_and_failures(sources, source_ids)
        upcoming = next(items, None)
        while upcoming is not None or batch_index == 0:
            if isinstance(upcoming, FailureRecord):
                yield from self._fail(upcoming, self._counts, self._failures)
            elif upcoming is not None:
                pending.append(upcoming)
            upcoming = next(items, None)
            if len(pending) == self._batch_size or upcoming is None:
                # A partition with nothing in it still sends one empty batch: the writer learns it is complete.
                yield from self._submit(_SubmittedBatch(task, pending, None, batch_index, upcoming is None, started,
                                                        timestamp, window, self._counts, self._failures))
                self._counts, self._failures = Counter(), []
                batch_index += 1
                pending = []
                started = time.perf_counter()

    def finish_bundle(self):
        if self._in_flight is not None:
            yield from self._emit_batch(self._in_flight)
            self._in_flight = None

    def _submit(self, submitted: _SubmittedBatch) -> Iterator:
        """Queue a batch on DALI, then send the one queued before it downstream: they overlap."""
        if submitted.objects:
            submitted.future = self._handle.decoder.submit([obj.image_bytes for obj in submitted.objects])
        previous, self._in_flight = self._in_flight, submitted
        if previous is not None:
            yield from self._emit_batch(previous)

    def _emit_batch(self, submitted: _SubmittedBatch) -> Iterator:
        # Outputs carry the window of their own task: the batch may go out during the next element.
        def windowed(value):
            return WindowedValue(value, submitted.timestamp, [submitted.window])

        results = submitted.future.result() if submitted.future is not None else []
        by_pillow = getattr(results, "pillow", 0)  # this batch's own (DecodedImages)
        if by_pillow:
            counter("images_decoded_by_pillow").inc(by_pillow)
            submitted.counts["decoded_by_pillow"] += by_pillow
        batch, failures = self._decoded_batch(submitted, results)
        for failure in failures:
            for output in self._fail(failure, submitted.counts, submitted.failures):
                yield beam.pvalue.TaggedOutput(output.tag, windowed(output.value))
        batch.read_failures = submitted.failures
        yield windowed(batch)

    def _fail(self, record: FailureRecord, counts: Counter, carried: list[FailureRecord]) -> Iterator:
        counter(f"{record.scope}s_failed").inc()
        counts[f"{record.scope}s_failed"] += 1
        carried.append(record)
        _LOG.warning("%s %s %s: %s: %s", record.scope, record.source, record.member, record.error_class, record.message)
        if self._emit_failures:
            yield beam.pvalue.TaggedOutput(FAILURES_TAG, record)

    def _images_and_failures(self, sources, source_ids) -> Iterator[ImageObject | FailureRecord]:
        log = _LOG.info if self._verbose else _LOG.debug
        for url, source_id in zip(sources, source_ids):
            shard_start = time.perf_counter()
            images = samples = 0
            seen_keys: dict[str, int] = {}
            try:
                with storage.open_read(url) as stream:
                    for item in iter_samples(stream, max_member_bytes=self._max_member_bytes):
                        if isinstance(item, SkippedMember):
                            yield self._rules.record(url, item.name, split_member_name(item.name)[0], "member",
                                                     "UnsupportedMember", item.reason)
                            continue
                        samples += 1
                        counter("samples_read").inc()
                        self._counts["samples_read"] += 1
                        for result in self._rules.to_image(url, source_id, item, seen_keys):
                            if isinstance(result, ImageObject):
                                images += 1
                                if self._progress:
                                    self._progress.add_images(1)
                            yield result
            except Exception as error:
                if not is_shard_damage(error):
                    raise  # a transient storage error or a bug: Beam retries the bundle, then fails loudly
                # the shard itself is damaged or missing: keep what was read before the damage
                yield self._rules.record(url, "", "", "shard", type(error).__name__,
                                         f"{error or 'unreadable'} (after {samples} sample(s) read)")
            counter("shards_read").inc()
            self._counts["shards_read"] += 1
            if self._progress:
                self._progress.add_shard()
            log("read %d image(s) from %s in %.2fs", images, url, time.perf_counter() - shard_start)

    def _decoded_batch(self, submitted: _SubmittedBatch, results: list):
        task, index = submitted.task, submitted.index
        decoded, failures = [], []
        for obj, pixels in zip(submitted.objects, results):
            if isinstance(pixels, ImageDecodeError):
                source, _, member = obj.image_path.partition("#")
                failures.append(self._rules.record(source, member, obj.key, "sample", "ImageDecodeError", pixels))
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
            _metadata={**task._metadata, "batch_index": index, "last_batch": submitted.last,
                       "dali_pipeline": self._handle.label},
            _stage_perf=list(task._stage_perf),
            origin=BatchOrigin(partition=int(task._metadata.get("partition_index", 0)), batch_index=index,
                               last=submitted.last,
                               source_files=tuple(task._metadata.get("source_files", task.data))),
        )
        submitted.counts["decoded"] = len(decoded)
        batch.add_stage_perf(self._stage_name, time.perf_counter() - submitted.started, len(decoded),
                             counts=submitted.counts)
        return batch, failures

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
        storage.write_atomically(self._path, json.dumps({"shards": self._shards, "images": self._images}).encode())
        self._written_at = time.monotonic()


class FailureThresholdExceeded(RuntimeError):
    """More samples failed than with_exception_handling(threshold=...) allows."""


def _check_failure_ratio(decoded: int, failed: int, threshold: float) -> None:
    total = decoded + failed
    if total and failed / total > threshold:
        raise FailureThresholdExceeded(
            f"{failed} of {total} samples failed ({failed / total:.1%}), over the threshold of {threshold:.1%} "
            "set with with_exception_handling(threshold=...); the failure records say why")


class ImageReaderStage(beam.PTransform):
    """Read WebDataset shards and decode their images with NVIDIA DALI.

    Args:
      dali_batch_size: images per DALI batch and the most per emitted ImageBatch.
      verbose: log one line per shard at INFO (else at DEBUG).
      num_threads: DALI's decoding threads per worker process.
      num_gpus_per_worker: 0 decodes on the CPU always; above 0 decodes on the GPU ('mixed') on a
        worker that sees a CUDA device, and on the CPU on one that does not. Beam has no fractional
        GPU scheduling: GPUs are attached per worker VM (see docs/DEPLOYMENT.md).
      max_image_pixels: a sample whose header claims more pixels fails before any pixel is allocated
        (default: Pillow's decompression-bomb limit, 89,478,485).
      max_member_bytes: a member larger than this is not read: an image fails its sample, a companion
        is left out (default 256 MiB).
      progress_dir: a local directory where each worker writes running totals (the CLI's progress).
      isolate_decoder: decode in a child process of each worker, so that a native crash of DALI fails
        one image instead of killing the worker (see beam_curator.formats.isolated_decoding). None (default)
        isolates on the GPU, where a crash was seen past the structural check, and not on the CPU,
        where the check alone survived the crash-fuzz campaign (docs/ROBUSTNESS.md).

    What cannot be used becomes a FailureRecord (see beam_curator.records): a sample that cannot be
    decoded or breaks a limit, a companion that is not valid (UTF-8 `txt`, parseable `json`), a link
    or device entry, and a damaged shard (after the samples read before the damage). By default each
    is logged at WARNING and counted in the `beam_curator` metrics (`samples_failed`,
    `companions_failed`, `members_failed`, `shards_failed`), and the job goes on;
    `.with_exception_handling()` makes the stage return `(batches, failures)` to keep the records.
    """

    def __init__(
        self,
        dali_batch_size: int = 100,
        verbose: bool = True,
        num_threads: int = 8,
        num_gpus_per_worker: float = 0.25,
        *,
        name: str = "image_reader",
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
        progress_dir: str | None = None,
        isolate_decoder: bool | None = None,
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
        for option, value in (("max_image_pixels", max_image_pixels), ("max_member_bytes", max_member_bytes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{option} must be a positive integer, got {value!r}")
        self.stage_name = name
        self.max_image_pixels = max_image_pixels
        self.max_member_bytes = max_member_bytes
        self.progress_dir = progress_dir
        if isolate_decoder not in (None, True, False):
            raise ValueError(f"isolate_decoder must be None (on the GPU only), True or False, got {isolate_decoder!r}")
        self.isolate_decoder = isolate_decoder
        self._with_failures = False
        self._threshold = 1.0
        self._shared_handle = shared.Shared()

    def with_exception_handling(self, *, threshold: float = 1.0) -> ImageReaderStage:
        """Make the stage return ReadResult(batches, failures): ImageBatches and FailureRecords.

        threshold: as Beam's own with_exception_handling, the highest fraction of samples that may
        fail; above it the job fails once everything is read (FailureThresholdExceeded). 1.0, the
        default, never fails the job.
        """
        if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be a fraction from 0 to 1, got {threshold!r}")
        self._with_failures = True
        self._threshold = float(threshold)
        return self

    def expand(self, tasks):
        # FileGroupTask -> ImageBatch (+ FailureRecord, tagged 'failures')
        read = beam.ParDo(_ReadImagesFn(self, self._shared_handle)).with_output_types(ImageBatch)
        if not self._with_failures:
            return tasks | "ReadAndDecode" >> read
        # FileGroupTask -> ReadResult(batches, failures)
        outputs = tasks | "ReadAndDecode" >> read.with_outputs(FAILURES_TAG, main="batches")
        batches, failures = outputs.batches, outputs[FAILURES_TAG]
        if self._threshold < 1.0:
            failed = (failures | "FailedSamples" >> beam.Filter(lambda record: record.scope == "sample")
                      | "CountFailed" >> beam.combiners.Count.Globally())
            (batches
             | "DecodedImages" >> beam.Map(lambda batch: batch.num_items)
             | "CountDecoded" >> beam.CombineGlobally(sum)
             | "CheckFailureRatio" >> beam.Map(_check_failure_ratio, failed=beam.pvalue.AsSingleton(failed),
                                               threshold=self._threshold))
        return ReadResult(batches, failures)

    def display_data(self):
        return {
            "dali_batch_size": self.dali_batch_size,
            "num_threads": self.num_threads,
            "num_gpus_per_worker": self.num_gpus_per_worker,
            "verbose": self.verbose,
            "max_image_pixels": self.max_image_pixels,
            "max_member_bytes": self.max_member_bytes,
            "isolate_decoder": {None: "on the GPU", True: "always", False: "never"}[self.isolate_decoder],
        }
