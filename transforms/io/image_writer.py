"""ImageWriterStage: ImageBatch -> WriteResult, writing WebDataset tars plus parquet metadata.

Two modes, byte-identical output (beam_curator.output.packing packs both):
- fused (the fast path): the writer runs in the reader's bundles, packing each batch as it arrives;
  a partition's batches must arrive in order in one bundle, which is how Beam runs chained ParDos.
  Out-of-order arrival fails at once, naming the keyed mode.
- keyed: for when something between reader and writer shuffles or cannot be fused (a Reshuffle, a
  GroupByKey, a stage with its own resource hints, which Dataflow runs apart): each batch is reduced
  to encoded bytes (never pixels: changed images are encoded first), which go to a file of their own
  in the temporary directory (beam_curator.output.spill: the shuffle moves the rest), keyed by
  partition, gathered by a GroupByKey, ordered by batch index, read back and packed.
mode='auto' (the default) picks keyed when the pipeline graph shows such a step between the writer
and ImageReaderStage, fused otherwise.

Commit protocol (beam_curator.output.commit): every bundle attempt writes its tar+parquet pairs under a
directory of its own in `{output_dir}/.beam_curator-temp-{token}/`. With deterministic names (the
default) each input partition is committed as soon as its last tar is written: its failure and
filter records, its pairs (tars before parquets), then its manifest `_partitions/{hash}.json`, last;
a retried or speculative bundle commits the same bytes under the same names again, which changes
nothing. A job killed midway keeps every committed partition, and `curate --resume` skips them. With
random names, one commit step at the end renames the pairs of the attempts Beam kept. Either way the
last step deletes the temporary directory, and a repeated commit is a no-op. Each partition's records
(FailureRecords, FilterRecords) are written with its commit, and its Counts travel in the
PartitionOutput the commit returns, so a retried bundle's are counted once.

Before anything is written, the writer's first step gets the output directory ready
(beam_curator.output.directory.prepare): a new run stops on an earlier run's output; overwrite=True
removes it; resume=True keeps the committed partitions and removes the rest. The writing steps wait
for it (a side input); only the keyed mode's spill, in the job's own temporary directory, may come first.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from beam_curator import storage
from beam_curator.output import directory
from beam_curator.output.commit import PartitionLedger, PartitionOutput, commit_partition, commit_shards, final_files
from beam_curator.output.layout import TEMP_DIR_PREFIX
from beam_curator.output.packing import OUTPUT_FORMATS, PackingOptions, PartitionPacker, PreparedImage, prepare_image
from beam_curator.output.spill import SPILL_DIR, Spilled, restore, spill
from beam_curator.records import FailureRecord, FilterRecord
from beam_curator.tasks import BatchOrigin, FileGroupTask, ImageBatch, ImageObject, StagePerf
from beam_curator.transforms.coders import ImageBatchCoder  # noqa: F401 - registers the ImageBatch coder
from beam_curator.transforms.gather import GatherAll
from beam_curator.transforms.metrics import counter

__all__ = ["MODES", "ImageWriterStage", "WriteResult", "fusion_break"]

_LOG = logging.getLogger(__name__)
MODES = ("auto", "fused", "keyed")
WRITTEN_TAG, FAILURES_TAG, FILTERED_TAG = "written", "failures", "filtered"
_FUSION_BREAKERS = (beam.GroupByKey, beam.Reshuffle, beam.CoGroupByKey)


class WriteResult(NamedTuple):
    """What ImageWriterStage returns; a field not asked for is None.

    files: a FileGroupTask per committed tar (its tar, parquet and index paths; num_images).
    partitions: a PartitionOutput per partition written: its shards, Counts and stage timings (what
      `_stats.json` sums; beam_curator.transforms.io.stats.WriteRunStats): always there.
    written: the ImageBatches as written (with_written_batches()).
    failures: FailureRecords of images that failed in the writer or in a stage before it
      (with_exception_handling()).
    filtered: FilterRecords of images that stages before the writer dropped (with_exception_handling()).
    """

    files: beam.PCollection
    partitions: beam.PCollection
    written: beam.PCollection | None = None
    failures: beam.PCollection | None = None
    filtered: beam.PCollection | None = None


def _missing_origin(batch: ImageBatch) -> ValueError:
    return ValueError(
        f"ImageBatch {batch.task_id!r} has no origin (partition, batch index, last batch), which "
        "ImageWriterStage needs to pack and name its tars. Batches made by ImageReaderStage have one; a stage "
        "that builds a new batch must keep it: use batch.with_images(objects) instead of ImageBatch(...) or "
        "dataclasses.replace")


@dataclass
class _Taken:
    """A batch as the writer takes it: its origin, its images ready to write (in order), every record
    of it (the reader's, the stages', the writer's own) for its partition's commit, and the tagged
    outputs to emit."""

    origin: BatchOrigin
    prepared: list[PreparedImage]
    records: list[FailureRecord | FilterRecord]
    outputs: list[beam.pvalue.TaggedOutput]


class _WriterCore:
    """What both modes' DoFns share: options, records and counts of a bundle."""

    def __init__(self, stage: ImageWriterStage):
        self._stage_name = stage.stage_name
        self._options = stage.packing_options
        self._output_dir = stage.output_dir
        self._job_options = dict(stage.job_options)
        self._remove_image_data = stage.remove_image_data
        self._verbose = stage.verbose
        self._emit_written = stage._with_written
        self._emit_records = stage._with_failures

    def _take(self, batch: ImageBatch) -> _Taken:
        """Check the batch's origin and prepare its images (an image that cannot be written fails
        alone); the records it carries and these failures, tagged, when the records were asked for."""
        if batch.origin is None:
            raise _missing_origin(batch)
        taken = _Taken(batch.origin, [], [*batch.read_failures, *batch.records], [])
        if self._emit_records:
            taken.outputs += [beam.pvalue.TaggedOutput(FILTERED_TAG if isinstance(record, FilterRecord)
                                                       else FAILURES_TAG, record) for record in batch.records]
        for obj in batch.data:
            try:
                taken.prepared.append(prepare_image(obj, self._options))
            except (ValueError, TypeError) as error:  # bad pixels from a stage: this image fails alone
                record = self._fail(obj, error)
                taken.records.append(record)
                if self._emit_records:
                    taken.outputs.append(beam.pvalue.TaggedOutput(FAILURES_TAG, record))
        return taken

    def _fail(self, obj: ImageObject, error: Exception) -> FailureRecord:
        source, _, member = obj.image_path.partition("#")
        record = FailureRecord(source=source, member=member, key=obj.key, stage=self._stage_name, scope="sample",
                               error_class=type(error).__name__, message=str(error), image_id=obj.image_id)
        counter("images_write_failed").inc()
        _LOG.warning("could not write %s: %s: %s", obj.image_path or obj.image_id, record.error_class, record.message)
        return record

    def _commit(self, ledger: PartitionLedger) -> PartitionOutput:
        output = commit_partition(ledger, self._output_dir, deterministic=self._options.deterministic_name,
                                  options=self._job_options)
        for shard in output.shards:
            (_LOG.info if self._verbose else _LOG.debug)("wrote %d image(s) to %s", shard.num_images, shard.basename)
        return output

    def _written_copy(self, batch: ImageBatch, prepared: list[PreparedImage], started: float) -> ImageBatch:
        """The batch as written, as a new element (Beam inputs must not be modified)."""
        objects = [image.obj for image in prepared]
        if self._remove_image_data:
            objects = [dataclasses.replace(obj, image_data=None, decoded_pixels=None) for obj in objects]
        written = batch.with_images(objects)
        written.records = []  # emitted by this writer
        written.add_stage_perf(self._stage_name, time.perf_counter() - started, len(objects))
        return written

    def _written(self, batch: ImageBatch, taken: _Taken, started: float) -> list[StagePerf]:
        """Count the batch as written (and add it to the outputs, tagged, if asked). The stages' timings
        and counts of the batch, this writer's included (its partition's commit sums them)."""
        prepared = taken.prepared
        counter("images_written").inc(len(prepared))
        counts = {"in": batch.num_items, "written": len(prepared), "failed": batch.num_items - len(prepared)}
        own = StagePerf(self._stage_name, time.perf_counter() - started, len(prepared), counts)
        if self._emit_written:
            taken.outputs.append(beam.pvalue.TaggedOutput(WRITTEN_TAG, self._written_copy(batch, prepared, started)))
        return [*batch._stage_perf, own]


class _WriteShardsFn(_WriterCore, beam.DoFn):
    """Fused mode: pack each batch as it arrives, in the reader's bundle; commit each partition at its end."""

    def __init__(self, stage: ImageWriterStage, temp_dir: str):
        _WriterCore.__init__(self, stage)
        self._temp_dir = temp_dir

    def start_bundle(self):
        self._attempt_dir = storage.join(self._temp_dir, uuid.uuid4().hex)
        self._partitions: dict[int, tuple[PartitionPacker, PartitionLedger]] = {}

    def process(self, batch: ImageBatch, output_ready=None) -> Iterator:
        # ImageBatch -> PartitionOutput per finished partition; tagged: records, the batch as written.
        # output_ready: the side input that holds the writing back until the output directory is prepared.
        started = time.perf_counter()
        taken = self._take(batch)
        origin = taken.origin
        if origin.partition not in self._partitions:
            packer = PartitionPacker(origin.partition, origin.source_files, batch.dataset_name, self._options,
                                     self._attempt_dir)
            self._partitions[origin.partition] = packer, PartitionLedger(packer.digest, tuple(origin.source_files))
        packer, ledger = self._partitions[origin.partition]
        packer.start_batch(origin.batch_index)
        for image in taken.prepared:
            closed = packer.add(image)
            if closed is not None:
                ledger.shards.append(closed)
        ledger.records += taken.records
        ledger.add_perfs(self._written(batch, taken, started))
        yield from taken.outputs
        if origin.last:
            yield self._finish(origin.partition)

    def finish_bundle(self):
        # Partitions whose last batch a stage dropped: close and commit what they have.
        for partition in list(self._partitions):
            if not self._partitions[partition][0].closed:
                yield WindowedValue(self._finish(partition), MIN_TIMESTAMP, [GlobalWindow()])
        self._partitions = {}

    def _finish(self, partition: int) -> PartitionOutput:
        packer, ledger = self._partitions[partition]
        closed = packer.finish()
        if closed is not None:
            ledger.shards.append(closed)
        return self._commit(ledger)


@dataclass
class _PreparedBatch:
    """Keyed mode: a batch reduced to what packing and its partition's commit need (bytes, no pixels;
    its records and its stages' counts)."""

    origin: BatchOrigin
    dataset_name: str
    images: list[PreparedImage]  # without their bytes, which are in `spilled`
    spilled: Spilled
    records: list
    perfs: list[StagePerf]


class _PrepareFn(_WriterCore, beam.DoFn):
    """Keyed mode, before the shuffle: encode changed images, drop pixels, spill the bytes
    (beam_curator.output.spill), key by partition."""

    def __init__(self, stage: ImageWriterStage, temp_dir: str):
        _WriterCore.__init__(self, stage)
        self._spill_dir = storage.join(temp_dir, SPILL_DIR)

    def process(self, batch: ImageBatch) -> Iterator:
        # ImageBatch -> (partition, _PreparedBatch); tagged: records, the batch as written
        started = time.perf_counter()
        taken = self._take(batch)
        perfs = self._written(batch, taken, started)
        images, spilled = spill([image.without_pixels() for image in taken.prepared], self._spill_dir)
        yield from taken.outputs
        yield taken.origin.partition, _PreparedBatch(taken.origin, batch.dataset_name, images, spilled,
                                                     taken.records, perfs)


class _PackPartitionFn(_WriterCore, beam.DoFn):
    """Keyed mode, after the shuffle: one partition's batches in order, packed and committed."""

    def __init__(self, stage: ImageWriterStage, temp_dir: str):
        _WriterCore.__init__(self, stage)
        self._temp_dir = temp_dir

    def start_bundle(self):
        self._attempt_dir = storage.join(self._temp_dir, uuid.uuid4().hex)

    def process(self, element, output_ready=None) -> Iterator:
        # (partition, [_PreparedBatch]) -> PartitionOutput
        partition, batches = element
        # (batch index, image ids): a deterministic order even for a batch a stage split in two
        batches = sorted(batches, key=lambda b: (b.origin.batch_index, [image.obj.image_id for image in b.images]))
        if not batches:
            return
        first = batches[0]
        packer = PartitionPacker(partition, first.origin.source_files, first.dataset_name, self._options,
                                 self._attempt_dir)
        ledger = PartitionLedger(packer.digest, tuple(first.origin.source_files))
        for batch in batches:
            for image in restore(batch.images, batch.spilled):
                closed = packer.add(image)
                if closed is not None:
                    ledger.shards.append(closed)
            ledger.records += batch.records
            ledger.add_perfs(batch.perfs)
        closed = packer.finish()
        if closed is not None:
            ledger.shards.append(closed)
        yield self._commit(ledger)


class _CommitFn(beam.DoFn):
    """The last step: rename the pairs no partition commit renamed (random names), and remove the
    temporary directory."""

    def __init__(self, output_dir: str, temp_dir: str):
        self._output_dir = output_dir
        self._temp_dir = temp_dir

    def process(self, partitions: list[PartitionOutput]) -> Iterator[FileGroupTask]:
        # [PartitionOutput] (every partition written) -> FileGroupTask per final pair
        committed = commit_shards([shard for part in partitions if not part.committed for shard in part.shards],
                                  self._output_dir,
                                  already_final=[shard for part in partitions if part.committed for shard in part.shards])
        for shard in committed:
            counter("tars_written").inc()
            counter("images_committed").inc(shard.num_images)
            yield FileGroupTask(task_id=shard.basename, dataset_name=shard.dataset_name,
                                data=final_files(shard, self._output_dir), _metadata={"num_images": shard.num_images})
        storage.delete_tree([self._temp_dir])


def _prepare_output(_, output_dir: str, mode: str, temp_dir: str) -> int:
    """The writer's first step (see the module): the number of files removed."""
    return len(directory.prepare(output_dir, mode, own_temp_dir=temp_dir))


def _ancestors(applied):
    while applied is not None:
        yield applied
        applied = applied.parent


def _hints(applied) -> dict:
    """The resource hints in force on an applied transform: its own and its enclosing composites'."""
    hints: dict = {}
    for node in reversed(list(_ancestors(applied))):
        hints.update(getattr(node, "resource_hints", None) or {})
    return hints


# Runners whose job graph puts the writer (a step with a side input) in another task than the reader,
# seen on Flink 1.19 (the plan's MapPartition [2]{FilePartitioning, ImageReader} -> [5]{ImageWriter, ...})
# and assumed of Spark, which uses the same job-server translation.
_SEPARATING_RUNNERS = ("FlinkRunner", "SparkRunner")


def _runner_name(pipeline) -> str:
    return type(getattr(pipeline, "runner", None)).__name__


def fusion_break(batches) -> str | None:
    """Why a writer of `batches` cannot run fused with the reader that made them (a shuffle or other
    resource hints on the way, or no reader at all), or None when it can. A reader is a ParDo whose DoFn
    says it emits each partition's batches in order, from one process() call
    (`emits_partitions_in_order = True`: ImageReaderStage's, and prune's CuratedShardReader's)."""
    from apache_beam.pvalue import PCollection

    batches = getattr(batches, "batches", batches)  # a reader's ReadResult: its batches
    runner = _runner_name(batches.pipeline)
    if runner in _SEPARATING_RUNNERS:
        return (f"the {runner} runs the reader and the writer as separate tasks (its job server does not fuse a "
                "step with a side input into its input's stage), so nothing keeps a partition's batches together")
    reader_hints, hints_on_path = None, []
    stack, seen = [batches], set()
    while stack:
        applied = stack.pop().producer
        if applied is None or id(applied) in seen:
            continue
        seen.add(id(applied))
        transform = applied.transform
        if isinstance(transform, beam.ParDo) and getattr(transform.fn, "emits_partitions_in_order", False):
            reader_hints = _hints(applied)
            continue
        for node in _ancestors(applied):
            if isinstance(node.transform, _FUSION_BREAKERS):
                return f"{type(node.transform).__name__} {node.full_label!r} is between the reader and the writer"
        hints_on_path.append((applied.full_label, _hints(applied)))
        inputs = [pcoll for pcoll in applied.inputs if isinstance(pcoll, PCollection)]
        if not inputs:
            return f"the batches do not come from ImageReaderStage ({applied.full_label!r} makes them)"
        stack.extend(inputs)
    if reader_hints is None:
        return "the batches do not come from ImageReaderStage"
    for label, hints in hints_on_path:
        if hints != reader_hints:
            return f"{label!r} has other resource hints than the reader, so a runner may not fuse them"
    return None


class ImageWriterStage(beam.PTransform):
    """Write ImageBatches as WebDataset tars of `images_per_tar` images plus parquet metadata.

    Args:
      output_dir: where `images-{hash}-{index:06d}.tar` and `.parquet` pairs go (any Beam FileSystems path).
      images_per_tar: images per tar; within an input partition every tar is full but the last.
      verbose: log each tar written at INFO (else at DEBUG).
      deterministic_name: `{hash}` digests the partition's source files and the writer options, so
        the same input and options give the same names; False gives fresh random names per run.
      remove_image_data: the batches on the `written` output (see with_written_batches) carry no
        image_data (the original bytes stay), so stages after the writer do not hold the pixels.
      jpeg_quality: quality of images re-encoded because a stage changed their pixels.
      force_reencode: re-encode every image from its pixels, even those no stage changed.
      overwrite: remove what an earlier run wrote into output_dir before writing (the writer's first
        step), instead of stopping (beam_curator.output.directory).
      write_index: also write DALI's index (`wds2idx` format) of each tar as `{name}.idx`.
      output_format: None (default) writes each image member as it came; "jpg" makes every image a
        `.jpg` member (JPEG bytes pass through, other formats are encoded at jpeg_quality), so that
        every sample has the same member names (loaders that infer columns from the first samples
        need this).
      mode: "fused" packs batches as they arrive in the reader's bundles (fast; the batches must come
        in order); "keyed" shuffles encoded bytes by partition first (right behind any shuffle);
        "auto" (default) chooses from the pipeline graph (see the module's docstring). The output
        is the same in both.
      write_embeddings: False leaves the parquet's `embedding` column empty: the embeddings were
        computed for filters only (`curate` without --embed).
      resume: the output holds partitions an earlier run of the same job committed (their manifests
        under `_partitions/`); keep them, and remove what the earlier run left of the others, instead
        of stopping. The job must not read the committed partitions again: `curate --resume` skips
        them (beam_curator.output.resume). Needs deterministic_name=True; not with overwrite.
      job_options: what the job records of its options in each partition's manifest (the options
        that shape the output), which --resume compares; JSON-serialisable, no timings.

    Each partition's failure and filter records are written to `_failures/failures-{digest}.parquet`
    and `_filtered/filtered-{digest}.parquet` (digest of its source files) when it is committed.

    Returns a WriteResult (files, written, failures, filtered, counts).
    """

    def __init__(
        self,
        output_dir: str,
        images_per_tar: int = 1000,
        verbose: bool = False,
        deterministic_name: bool = True,
        remove_image_data: bool = False,
        *,
        name: str = "image_writer",
        jpeg_quality: int = 95,
        force_reencode: bool = False,
        overwrite: bool = False,
        write_index: bool = False,
        output_format: str | None = None,
        mode: str = "auto",
        write_embeddings: bool = True,
        resume: bool = False,
        job_options: dict | None = None,
    ):
        super().__init__()
        if not output_dir or not isinstance(output_dir, str):
            raise ValueError(f"output_dir must be a directory path or URL, got {output_dir!r}")
        if not isinstance(images_per_tar, int) or images_per_tar < 1:
            raise ValueError(f"images_per_tar must be a positive integer, got {images_per_tar!r}")
        if not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be an integer from 1 to 100, got {jpeg_quality!r}")
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be None (keep each image's format) or 'jpg', got {output_format!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if resume and not deterministic_name:
            raise ValueError("resume=True (--resume) needs deterministic_name=True: with random names a run cannot "
                             "tell which partitions an earlier run committed")
        if resume and overwrite:
            raise ValueError("resume=True (--resume) keeps an earlier run's partitions and overwrite=True (--overwrite) "
                             "replaces them: choose one")
        self.output_dir = output_dir.rstrip("/")
        self.images_per_tar = images_per_tar
        self.verbose = verbose
        self.deterministic_name = deterministic_name
        self.remove_image_data = remove_image_data
        self.stage_name = name
        self.jpeg_quality = jpeg_quality
        self.force_reencode = force_reencode
        self.overwrite = overwrite
        self.write_index = write_index
        self.output_format = output_format
        self.mode = mode
        self.resume = resume
        self.job_options = dict(job_options or {})
        self.resolved_mode: str | None = None  # set when applied
        self.packing_options = PackingOptions(
            images_per_tar=images_per_tar, jpeg_quality=jpeg_quality, force_reencode=force_reencode,
            output_format=output_format, write_index=write_index, deterministic_name=deterministic_name,
            write_embeddings=write_embeddings)
        self._with_written = False
        self._with_failures = False

    def with_exception_handling(self) -> ImageWriterStage:
        """Fill WriteResult.failures (FailureRecords of images that failed here or in a stage before)
        and WriteResult.filtered (FilterRecords of images stages dropped)."""
        self._with_failures = True
        return self

    def with_written_batches(self) -> ImageWriterStage:
        """Fill WriteResult.written: the ImageBatches as written."""
        self._with_written = True
        return self

    @property
    def output_mode(self) -> str:
        """How the writer's first step prepares output_dir (beam_curator.output.directory.MODES)."""
        return "resume" if self.resume else "overwrite" if self.overwrite else "new"

    def expand(self, batches):
        temp_dir = storage.join(self.output_dir, f"{TEMP_DIR_PREFIX}{uuid.uuid4().hex}")
        self.temp_dir = temp_dir  # the CLI records who owns it (beam_curator.output.leftovers)
        # The first step: the output directory made ready; every writing step waits for it.
        ready = beam.pvalue.AsSingleton(
            batches.pipeline | "OutputDirectory" >> beam.Create([None])
            | "PrepareOutput" >> beam.Map(_prepare_output, self.output_dir, self.output_mode, temp_dir))
        why = fusion_break(batches) if self.mode == "auto" else None
        self.resolved_mode = self.mode if self.mode != "auto" else "keyed" if why else "fused"
        if why and self.mode == "auto":
            _LOG.info("%s: keyed mode, because %s", self.stage_name, why)
        tags = (WRITTEN_TAG, FAILURES_TAG, FILTERED_TAG)
        if self.resolved_mode == "fused":
            # ImageBatch -> PartitionOutput (main); tagged: written, failures, filtered
            outputs = batches | "WriteShards" >> beam.ParDo(_WriteShardsFn(self, temp_dir), ready).with_outputs(
                *tags, main="partitions")
            partitions = outputs.partitions
        else:
            # ImageBatch -> (partition, _PreparedBatch) -> (partition, [_PreparedBatch]) -> PartitionOutput
            # Prepare reads no side input, so that runners fuse it with the reader (Flink's job server does
            # not fuse a step that does): what leaves the reader's task is then small, and the spilled bytes
            # wait in the job's own temporary directory, which preparing the output never touches.
            outputs = batches | "Prepare" >> beam.ParDo(_PrepareFn(self, temp_dir)).with_outputs(*tags, main="keyed")
            partitions = (outputs.keyed
                          | "GroupByPartition" >> beam.GroupByKey()
                          | "PackPartitions" >> beam.ParDo(_PackPartitionFn(self, temp_dir), ready))
        files = (
            partitions
            | "CollectCommitted" >> GatherAll()  # [PartitionOutput], once
            | "Commit" >> beam.ParDo(_CommitFn(self.output_dir, temp_dir))  # FileGroupTask
        )
        return WriteResult(
            files=files,
            partitions=partitions,
            written=outputs[WRITTEN_TAG] if self._with_written else None,
            failures=outputs[FAILURES_TAG] if self._with_failures else None,
            filtered=outputs[FILTERED_TAG] if self._with_failures else None,
        )

    @property
    def needs(self) -> tuple[str, ...]:
        """("image_data",) when it encodes images from their pixels (force_reencode, output_format):
        the reader's for_stages() then keeps them."""
        return ("image_data",) if self.force_reencode or self.output_format else ()

    def display_data(self):
        return {
            "output_dir": self.output_dir,
            "images_per_tar": self.images_per_tar,
            "deterministic_name": self.deterministic_name,
            "remove_image_data": self.remove_image_data,
            "jpeg_quality": self.jpeg_quality,
            "force_reencode": self.force_reencode,
            "output_format": self.output_format or "original",
            "write_embeddings": self.packing_options.write_embeddings,
            "overwrite": self.overwrite,
            "write_index": self.write_index,
            "mode": self.resolved_mode or self.mode,
            "resume": self.resume,
        }
