"""ImageReaderStage: FileGroupTask -> ImageBatch, decoding WebDataset shards with a per-worker DALI pipeline.

One loop reads shards for both readers: ImageReaderStage decodes what it reads; CuratedShardReader
(transforms/io/curated_reader.py, what prune runs on) is the same loop without decoding. A shard of a
beam_curator output (its partition names the parquet beside it) keeps the ids and columns of its
parquet rows; any other shard's samples get ids from their provenance (beam_curator.identity).
"""

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
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

from beam_curator import storage
from beam_curator.errors import FailureThresholdExceeded
from beam_curator.formats.decoding import DEFAULT_MAX_IMAGE_PIXELS, DaliImageDecoder, DecodeOutputs, ImageDecodeError
from beam_curator.formats.isolated_decoding import IsolatedDecoder
from beam_curator.formats.model_input import ModelInput
from beam_curator.formats.sample_rules import SampleRules, curated_rows, is_shard_damage, member_extension, with_row
from beam_curator.formats.webdataset import DEFAULT_MAX_MEMBER_BYTES, SkippedMember, iter_samples, split_member_name
from beam_curator.records import FailureRecord
from beam_curator.tasks import BatchOrigin, FileGroupTask, ImageBatch, ImageObject, PartitionInfo
from beam_curator.transforms.coders import ImageBatchCoder  # noqa: F401 - registers the ImageBatch coder
from beam_curator.transforms.metrics import counter
from beam_curator.transforms.per_process import PerProcess, use_gpu

__all__ = ["FAILURES_TAG", "FailureThresholdExceeded", "ImageReaderStage", "ReadResult", "is_shard_damage",
           "partition_of"]

_LOG = logging.getLogger(__name__)
_PROGRESS_EVERY_S = 2.0
FAILURES_TAG = "failures"


class ReadResult(NamedTuple):
    """What a reader returns: its ImageBatches and its FailureRecords. Piping it on continues with
    the batches, so `reader_output | stage` and `reader_output | ImageWriterStage(...)` read as with a
    PCollection; `batches, failures = reader_output` takes both."""

    batches: beam.PCollection
    failures: beam.PCollection

    def __or__(self, transform):
        return self.batches | transform


def partition_of(task: FileGroupTask) -> PartitionInfo:
    """The task's partition; a ValueError naming the fix for a task made without one."""
    if not isinstance(task, FileGroupTask) or task.partition is None:
        raise ValueError(
            f"the reader got {getattr(task, 'task_id', task)!r} without a partition (FileGroupTask.partition: its "
            "index and source files, which name the output): make the reader's tasks with "
            "FilePartitioningStage(file_paths), not by hand")
    return task.partition


@dataclass
class _Batch:
    """A batch being read, then decoded: its images and what the reader counted and recorded for it."""

    task: FileGroupTask
    index: int
    started: float
    objects: list[ImageObject] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    failures: list[FailureRecord] = field(default_factory=list)
    last: bool = False
    future: Future | None = None  # the decoding, once submitted (None without images or decoding)
    timestamp: Any = None
    window: Any = None


class _Count(NamedTuple):
    """An event of the shard loop: add `value` to the current batch's count `name`."""

    name: str
    value: int = 1


class _ReadShardsFn(beam.DoFn):
    """FileGroupTask -> ImageBatch per at most batch_size images, streamed, in order; FailureRecords
    (tagged 'failures') for what cannot be used. With a decoder handle, each batch is decoded on DALI
    while the next is read."""

    emits_partitions_in_order = True  # all of a partition's batches, in order, from one process() call

    def __init__(self, *, stage_name: str, batch_size: int, rules: SampleRules, verbose: bool = False,
                 progress_dir: str | None = None, decoder: _DecoderSpec | None = None):
        self._stage_name, self._batch_size, self._rules = stage_name, batch_size, rules
        self._verbose, self._progress_dir = verbose, progress_dir
        self._decoder_spec = decoder

    def setup(self):
        self._decoder = self._decoder_spec.acquire() if self._decoder_spec else None
        self._progress = _ProgressFile(self._progress_dir) if self._progress_dir else None

    def start_bundle(self):
        # The batch DALI decodes while this thread reads on and the writer writes; it may belong to
        # the previous element, so the decoder never waits between partitions.
        self._in_flight: _Batch | None = None

    def process(self, task: FileGroupTask, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        # FileGroupTask -> ImageBatch, one per at most batch_size images, streamed (a partition with
        # nothing in it still sends one empty batch: the writer learns it is complete);
        # FailureRecord (tagged 'failures') for what could not be used.
        partition = self._accept(partition_of(task))
        if self._decoder is not None:
            self._decoder.report_build()
        batch = _Batch(task, 0, time.perf_counter(), timestamp=timestamp, window=window)
        for event in self._events(partition):
            if isinstance(event, _Count):
                batch.counts[event.name] += event.value
            elif isinstance(event, FailureRecord):
                yield from self._fail(event, batch)
            else:
                batch.objects.append(event)
                if len(batch.objects) == self._batch_size:
                    yield from self._submit(batch)
                    batch = _Batch(task, batch.index + 1, time.perf_counter(), timestamp=timestamp, window=window)
        batch.last = True
        yield from self._submit(batch)

    def finish_bundle(self):
        if self._in_flight is not None:
            yield from self._emit(self._in_flight)
            self._in_flight = None

    def _accept(self, partition: PartitionInfo) -> PartitionInfo:
        """The partition, if this reader reads its sources (a variant's hook); ValueError otherwise."""
        return partition

    def _submit(self, batch: _Batch) -> Iterator:
        """Queue a batch on the decoder, then send the one queued before it downstream: they overlap."""
        if self._decoder is None:
            yield from self._emit(batch)
            return
        if batch.objects:
            batch.future = self._decoder.value.submit([obj.image_bytes for obj in batch.objects])
        previous, self._in_flight = self._in_flight, batch
        if previous is not None:
            yield from self._emit(previous)

    def _emit(self, batch: _Batch) -> Iterator:
        # Outputs carry the window of their own task: the batch may go out during the next element.
        def windowed(value):
            return WindowedValue(value, batch.timestamp, [batch.window])

        objects = batch.objects
        if self._decoder is not None:
            results = batch.future.result() if batch.future is not None else []
            by_pillow = getattr(results, "pillow", 0)  # this batch's own (DecodedImages)
            if by_pillow:
                counter("images_decoded_by_pillow").inc(by_pillow)
                batch.counts["images_decoded_by_pillow"] += by_pillow
            to_host = getattr(results, "pixels_to_host", 0)
            if to_host:
                counter("pixels_to_host").inc(to_host)
                batch.counts["pixels_to_host"] += to_host
            objects = []
            for obj, decoded in zip(batch.objects, results):
                if isinstance(decoded, ImageDecodeError):
                    source, _, member = obj.image_path.partition("#")
                    for output in self._fail(self._rules.record(source, member, obj.key, "sample", "ImageDecodeError",
                                                                decoded), batch):
                        yield beam.pvalue.TaggedOutput(output.tag, windowed(output.value))
                    continue
                if decoded.pixels is not None:
                    decoded.pixels.flags.writeable = False  # stages that change pixels build a new array
                obj.image_data = obj.decoded_pixels = decoded.pixels
                obj.model_input = decoded.model_input
                obj.height, obj.width = decoded.height, decoded.width
                objects.append(obj)
            counter("images_decoded").inc(len(objects))
            batch.counts["images_decoded"] += len(objects)
        partition = partition_of(batch.task)
        out = ImageBatch(
            task_id=f"{batch.task.task_id}_{batch.index:06d}",
            dataset_name=batch.task.dataset_name,
            data=objects,
            # The decoder that decoded it ("{host}:{pid}:{id}"), to see which process decoded what.
            _metadata={**batch.task._metadata,
                       **({"dali_pipeline": self._decoder.label} if self._decoder is not None else {})},
            _stage_perf=list(batch.task._stage_perf),
            origin=BatchOrigin(partition=partition.index, batch_index=batch.index, last=batch.last,
                               source_files=partition.source_files),
            read_failures=batch.failures,
        )
        out.add_stage_perf(self._stage_name, time.perf_counter() - batch.started, len(objects), counts=batch.counts)
        yield windowed(out)

    def _fail(self, record: FailureRecord, batch: _Batch) -> Iterator:
        name = f"{record.scope}s_failed"
        counter(name).inc()
        batch.counts[name] += 1
        batch.failures.append(record)  # goes with the batch to the writer (ImageBatch.read_failures)
        _LOG.warning("%s %s %s: %s: %s", record.scope, record.source, record.member, record.error_class, record.message)
        yield beam.pvalue.TaggedOutput(FAILURES_TAG, record)

    def _events(self, partition: PartitionInfo) -> Iterator[ImageObject | FailureRecord | _Count]:
        """Every shard's images, failures and counts, in order: a count comes before the image it counts."""
        log = _LOG.info if self._verbose else _LOG.debug
        for url, metadata in zip(partition.source_files, partition.metadata_files):
            shard_start = time.perf_counter()
            images = samples = 0
            seen_keys: dict[str, int] = {}
            rows = None
            try:
                rows = curated_rows(metadata) if metadata else None
                with storage.open_read(url) as stream:
                    for item in iter_samples(stream, max_member_bytes=self._rules.max_member_bytes):
                        if isinstance(item, SkippedMember):
                            yield self._rules.record(url, item.name, split_member_name(item.name)[0], "member",
                                                     "UnsupportedMember", item.reason)
                            continue
                        samples += 1
                        counter("samples_read").inc()
                        yield _Count("samples_read")
                        for result in self._rules.to_image(url, item, seen_keys):
                            if isinstance(result, ImageObject) and rows is not None:
                                result = self._carry(url, item.key, result, rows)
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
            for key, row in sorted((rows or {}).items()):  # rows whose sample the tar does not hold
                counter("samples_read").inc()
                yield _Count("samples_read")
                yield self._rules.record(url, row["member_name"], key, "sample", "MissingSample",
                                         f"the parquet beside the tar has a row for {row['image_id']} but the tar "
                                         "has no such sample")
            counter("shards_read").inc()
            yield _Count("shards_read")
            if self._progress:
                self._progress.add_shard()
            log("read %d image(s) from %s in %.2fs", images, url, time.perf_counter() - shard_start)

    def _carry(self, url: str, key: str, obj: ImageObject, rows: dict) -> ImageObject | FailureRecord:
        """A curated shard's sample with its parquet row's identity and columns, or its failure."""
        row = rows.pop(key, None)
        if row is None or member_extension(row) != obj.image_format:
            return self._rules.record(url, obj.image_path.partition("#")[2], key, "sample", "MissingMetadata",
                                      "the sample has no row in the parquet beside its tar")
        return with_row(obj, row)

    def teardown(self):
        if getattr(self, "_progress", None):
            self._progress.flush()


@dataclass(frozen=True)
class _DecoderSpec:
    """How to build the per-process decoder (the stage's options), and the PerProcess that holds it."""

    batch_size: int
    num_threads: int
    num_gpus_per_worker: float
    isolate: bool | None
    outputs: DecodeOutputs
    holder: PerProcess

    def acquire(self):
        def build():
            gpu = use_gpu(self.num_gpus_per_worker)
            isolate = gpu if self.isolate is None else self.isolate
            decoder_class = IsolatedDecoder if isolate else DaliImageDecoder
            return decoder_class(batch_size=self.batch_size, num_threads=self.num_threads, use_gpu=gpu,
                                 outputs=self.outputs)

        return self.holder.acquire(build, tag=(self.batch_size, self.num_threads, self.num_gpus_per_worker > 0,
                                               self.isolate, self.outputs))


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


def _check_failure_ratio(read: int, failed: int, threshold: float) -> None:
    if read and failed / read > threshold:
        raise FailureThresholdExceeded(
            f"{failed} of {read} samples failed ({failed / read:.1%}), over the threshold of {threshold:.1%}; the "
            "failure records say why")


class ShardReader(beam.PTransform):
    """The readers' common face: FileGroupTask -> ImageBatch, or ReadResult(batches, failures) with
    with_exception_handling(threshold=...). Subclasses make the DoFn."""

    def __init__(self, *, name: str):
        super().__init__()
        self.stage_name = name
        self._threshold = 1.0

    def _fn(self) -> _ReadShardsFn:
        raise NotImplementedError

    def with_exception_handling(self, *, threshold: float = 1.0):
        """Set the highest fraction of the samples read that may fail; above it the job fails once
        everything is read (FailureThresholdExceeded). 1.0, the default, never fails the job. (The
        stage always returns ReadResult(batches, failures); Beam's name for this is kept.)"""
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be a fraction from 0 to 1, got {threshold!r}")
        self._threshold = float(threshold)
        return self

    def expand(self, tasks) -> ReadResult:
        # FileGroupTask -> ReadResult(batches: ImageBatch, failures: FailureRecord)
        read = beam.ParDo(self._fn()).with_input_types(FileGroupTask).with_output_types(ImageBatch)
        outputs = tasks | "ReadAndDecode" >> read.with_outputs(FAILURES_TAG, main="batches")
        batches, failures = outputs.batches, outputs[FAILURES_TAG]
        if self._threshold < 1.0:
            stage = self.stage_name
            failed = (failures | "FailedSamples" >> beam.Filter(lambda record: record.scope == "sample")
                      | "CountFailed" >> beam.combiners.Count.Globally())
            (batches
             | "SamplesRead" >> beam.Map(lambda batch: sum(perf.counts.get("samples_read", 0)
                                                           for perf in batch._stage_perf if perf.stage == stage))
             | "CountRead" >> beam.CombineGlobally(sum)
             | "CheckFailureRatio" >> beam.Map(_check_failure_ratio, failed=beam.pvalue.AsSingleton(failed),
                                               threshold=self._threshold))
        return ReadResult(batches, failures)


class ImageReaderStage(ShardReader):
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

    Tasks come from FilePartitioningStage (each with its PartitionInfo; a task without one is refused).
    A shard of a beam_curator output (the partition names its parquet) keeps its samples' ids and
    columns; other shards' samples get ids from their provenance (beam_curator.identity).

    What cannot be used becomes a FailureRecord (see beam_curator.records): a sample that cannot be
    decoded or breaks a limit, a companion that is not valid (UTF-8 `txt`, parseable `json`), a link
    or device entry, and a damaged shard (after the samples read before the damage). Each is logged
    at WARNING, counted in the `beam_curator` metrics (`samples_failed`, `companions_failed`,
    `members_failed`, `shards_failed`), carried to the writer (which writes it with its partition) and
    returned on ReadResult.failures; the job goes on. `.with_exception_handling(threshold=...)` fails
    the job above a fraction of failed samples.
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
        pixels: bool = True,
        model_input: ModelInput | None = None,
    ):
        super().__init__(name=name)
        if not isinstance(dali_batch_size, int) or isinstance(dali_batch_size, bool) or dali_batch_size < 1:
            raise ValueError(f"dali_batch_size must be a positive integer, got {dali_batch_size!r}")
        if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}")
        if isinstance(num_gpus_per_worker, bool) or not isinstance(num_gpus_per_worker, (int, float)) \
                or num_gpus_per_worker < 0:
            raise ValueError(f"num_gpus_per_worker must be 0 (CPU) or more, got {num_gpus_per_worker!r}")
        for option, value in (("max_image_pixels", max_image_pixels), ("max_member_bytes", max_member_bytes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{option} must be a positive integer, got {value!r}")
        if isolate_decoder not in (None, True, False):
            raise ValueError(f"isolate_decoder must be None (on the GPU only), True or False, got {isolate_decoder!r}")
        if not isinstance(pixels, bool):
            raise ValueError(f"pixels must be True or False, got {pixels!r}")
        if model_input is not None and not isinstance(model_input, ModelInput):
            raise ValueError(f"model_input must be a ModelInput (ImageEmbeddingStage(...).model_input) or None, "
                             f"got {model_input!r}")
        self.dali_batch_size = dali_batch_size
        self.verbose = verbose
        self.num_threads = num_threads
        self.num_gpus_per_worker = float(num_gpus_per_worker)
        self.max_image_pixels = max_image_pixels
        self.max_member_bytes = max_member_bytes
        self.progress_dir = progress_dir
        self.isolate_decoder = isolate_decoder
        self.pixels = pixels
        self.model_input = model_input
        self._decoders: PerProcess[DaliImageDecoder | IsolatedDecoder] = PerProcess("dali_pipelines_built")

    @property
    def provides(self) -> tuple[str, ...]:
        """The ImageObject fields it sets for the stages after it (CurationStage.needs): the pixels, and
        the model input (made here, or by the embedding stage from the pixels)."""
        return ("image_data", "model_input") if self.pixels else ("model_input",) if self.model_input else ()

    def for_stages(self, stages) -> ImageReaderStage:
        """Decode for these stages (the ones after it, in order): pixels only if one of them needs
        `image_data`, and the model input of the first that takes one (`model_input`, the embedding
        stage). Returns the reader. A stage that does not say what it needs gets the pixels."""
        stages = list(stages)
        self.pixels = any("image_data" in getattr(stage, "needs", ("image_data",)) for stage in stages)
        self.model_input = next((stage.model_input for stage in stages
                                 if isinstance(getattr(stage, "model_input", None), ModelInput)), None)
        return self

    def _fn(self) -> _ReadShardsFn:
        rules = SampleRules(stage=self.stage_name, max_image_pixels=self.max_image_pixels,
                            max_member_bytes=self.max_member_bytes)
        decoder = _DecoderSpec(self.dali_batch_size, self.num_threads, self.num_gpus_per_worker, self.isolate_decoder,
                               DecodeOutputs(pixels=self.pixels, model_input=self.model_input), self._decoders)
        return _ReadShardsFn(stage_name=self.stage_name, batch_size=self.dali_batch_size, rules=rules,
                             verbose=self.verbose, progress_dir=self.progress_dir, decoder=decoder)

    def display_data(self):
        return {
            "dali_batch_size": self.dali_batch_size,
            "num_threads": self.num_threads,
            "num_gpus_per_worker": self.num_gpus_per_worker,
            "verbose": self.verbose,
            "max_image_pixels": self.max_image_pixels,
            "max_member_bytes": self.max_member_bytes,
            "isolate_decoder": {None: "on the GPU", True: "always", False: "never"}[self.isolate_decoder],
            "pixels": self.pixels,
            "model_input": "none" if self.model_input is None else
            f"{self.model_input.crop_height}x{self.model_input.crop_width} {self.model_input.dtype}",
        }
