"""ImageWriterStage: ImageBatch -> FileGroupTask, writing WebDataset tars plus parquet metadata.

Commit protocol: every bundle attempt writes its tar+parquet pairs under a directory of its own in
`{output_dir}/.beam_curator-temp-{token}/`. Beam keeps the outputs of the attempt it commits, so the
one finalize step sees exactly the committed pairs: it renames each tar, then its parquet (a parquet
present means its tar is complete), and deletes the temporary directory with whatever failed or
duplicate attempts left there. Finalize is idempotent: a pair already renamed is skipped.

Packing: within each input partition every tar holds exactly images_per_tar images except the
partition's last. The writer must run fused with the reader (no Reshuffle between them), which is
how Beam runs chained ParDos; it checks that each partition's batches arrive in order.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from beam_curator import storage
from beam_curator.encoding import encode_jpeg
from beam_curator.failures import FailureRecord
from beam_curator.image_structure import image_format
from beam_curator.leftovers import TEMP_DIR_PREFIX
from beam_curator.naming import SHARD_PREFIX, partition_hash, shard_basename
from beam_curator.schema import MetadataRow, rows_to_table
from beam_curator.tasks import FileGroupTask, ImageBatch, ImageObject
from beam_curator.webdataset import TarShardWriter, safe_key
from .metrics import counter

__all__ = ["ImageWriterStage", "WRITTEN_BATCHES_TAG"]

_LOG = logging.getLogger(__name__)
WRITTEN_BATCHES_TAG = "written"
FAILURES_TAG = "failures"
OUTPUT_FORMATS = (None, "jpg")  # None: every image member as it came (bytes pass through)


def _jpeg_extension(obj: ImageObject) -> str:
    return "jpeg" if "jpg" in obj.companions else "jpg"  # never collide with a companion named jpg


@dataclass
class _WrittenShard:
    """A tar+parquet pair one bundle attempt wrote under temporary names."""

    basename: str
    temp_tar: str
    temp_parquet: str
    temp_index: str | None
    num_images: int
    partition_index: int
    dataset_name: str


@dataclass
class _OpenShard:
    """The tar being filled for one partition."""

    basename: str
    temp_tar: str
    handle: object
    writer: TarShardWriter
    rows: list[MetadataRow] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)


@dataclass
class _PartitionState:
    index: int
    digest: str
    dataset_name: str
    next_shard: int = 0
    last_batch_index: int = -1
    shard: _OpenShard | None = None


class _WriteShardsFn(beam.DoFn):
    def __init__(self, stage: ImageWriterStage, temp_dir: str):
        self._stage_name = stage.stage_name
        self._images_per_tar = stage.images_per_tar
        self._deterministic = stage.deterministic_name
        self._remove_image_data = stage.remove_image_data
        self._jpeg_quality = stage.jpeg_quality
        self._force_reencode = stage.force_reencode
        self._output_format = stage.output_format
        self._write_index = stage.write_index
        self._verbose = stage.verbose
        self._emit_written = stage._with_written
        self._emit_failures = stage._with_failures
        self._temp_dir = temp_dir

    def start_bundle(self):
        self._attempt_dir = storage.join(self._temp_dir, uuid.uuid4().hex)
        self._partitions: dict[int, _PartitionState] = {}

    def process(self, batch: ImageBatch) -> Iterator:
        # ImageBatch -> _WrittenShard for each closed tar (+ the batch itself, tagged 'written', if asked)
        started = time.perf_counter()
        partition = int(batch._metadata.get("partition_index", 0))
        batch_index = int(batch._metadata.get("batch_index", 0))
        state = self._partitions.get(partition)
        if state is None:
            state = self._partitions[partition] = _PartitionState(
                index=partition,
                digest=partition_hash(
                    batch._metadata.get("source_files", [batch.task_id]), self._naming_options(),
                    deterministic=self._deterministic,
                ),
                dataset_name=batch.dataset_name,
            )
        if batch_index <= state.last_batch_index:
            raise RuntimeError(
                f"batch {batch_index} of partition {partition} arrived after batch {state.last_batch_index}: "
                "ImageWriterStage must run fused with ImageReaderStage (no Reshuffle or GroupByKey between them)"
            )
        state.last_batch_index = batch_index
        written = 0
        for obj in batch.data:
            try:
                image_member = self._image_member(obj)
            except (ValueError, TypeError) as error:  # bad pixels from a stage: this image fails alone
                yield from self._fail(obj, error)
                continue
            if state.shard is None:
                state.shard = self._open_shard(state)
            self._write_sample(state.shard, obj, image_member)
            written += 1
            if len(state.shard.rows) == self._images_per_tar:
                yield self._close_shard(state)
        if batch._metadata.get("last_batch", False):
            if state.shard is not None:
                yield self._close_shard(state)
            state.last_batch_index = float("inf")  # the partition is complete in this bundle
        counter("images_written").inc(written)
        if self._emit_written:
            yield beam.pvalue.TaggedOutput(WRITTEN_BATCHES_TAG, self._written_copy(batch, started))

    def _written_copy(self, batch: ImageBatch, started: float) -> ImageBatch:
        """The batch as written, as a new element (Beam inputs must not be modified)."""
        objects = batch.data
        if self._remove_image_data:
            objects = [dataclasses.replace(obj, image_data=None, decoded_pixels=None) for obj in objects]
        written = dataclasses.replace(batch, data=objects, _stage_perf=list(batch._stage_perf))
        written.add_stage_perf(self._stage_name, time.perf_counter() - started, len(objects))
        return written

    def finish_bundle(self):
        # Partitions whose last batch a stage dropped: close what they have.
        for state in self._partitions.values():
            if state.shard is not None:
                yield WindowedValue(self._close_shard(state), MIN_TIMESTAMP, [GlobalWindow()])
        self._partitions = {}

    def _naming_options(self) -> dict:
        options = {"images_per_tar": self._images_per_tar, "jpeg_quality": self._jpeg_quality,
                   "force_reencode": self._force_reencode}
        if self._output_format is not None:  # only then: the names of earlier outputs stay the same
            options["output_format"] = self._output_format
        return options

    def _open_shard(self, state: _PartitionState) -> _OpenShard:
        basename = shard_basename(state.digest, state.next_shard)
        state.next_shard += 1
        temp_tar = storage.join(self._attempt_dir, f"{basename}.tar")
        handle = storage.create(temp_tar)
        return _OpenShard(basename=basename, temp_tar=temp_tar, handle=handle, writer=TarShardWriter(handle))

    def _image_member(self, obj: ImageObject) -> tuple[str, bytes, int | None, int | None]:
        """(extension, bytes, height, width) of the image member to write for obj."""
        if obj.pixels_unchanged and not self._force_reencode:
            if self._output_format is None:
                return obj.image_format, obj.image_bytes, obj.height, obj.width
            if image_format(obj.image_bytes) == "jpeg":  # already what output_format asks: bytes pass through
                return _jpeg_extension(obj), obj.image_bytes, obj.height, obj.width
        if obj.image_data is None:
            raise ValueError(f"image {obj.image_id!r} has neither pixels nor original bytes to write")
        pixels = obj.image_data
        if not isinstance(pixels, np.ndarray):
            raise TypeError(f"image_data of {obj.image_id!r} is a {type(pixels).__name__}, not a numpy array")
        return _jpeg_extension(obj), encode_jpeg(pixels, quality=self._jpeg_quality), int(pixels.shape[0]), int(pixels.shape[1])

    def _write_sample(self, shard: _OpenShard, obj: ImageObject, image_member) -> None:
        extension, payload, height, width = image_member
        key = safe_key(obj.key or obj.image_id)
        if key in shard.keys:  # the same key from two source shards of one partition
            suffix = 1
            while f"{key}_{suffix}" in shard.keys:
                suffix += 1
            key = f"{key}_{suffix}"
        shard.keys.add(key)
        members = [(extension, payload)] + sorted(obj.companions.items())
        member_names = shard.writer.write_sample(key, members)
        shard.rows.append(
            MetadataRow.for_image(
                obj, key=key, tar_file=f"{shard.basename}.tar", member_name=member_names[0],
                image_format=extension, width=width, height=height,
            )
        )

    def _fail(self, obj: ImageObject, error: Exception) -> Iterator:
        source, _, member = obj.image_path.partition("#")
        record = FailureRecord(source=source, member=member, key=obj.key, stage=self._stage_name, scope="sample",
                               error_class=type(error).__name__, message=str(error))
        counter("images_write_failed").inc()
        _LOG.warning("could not write %s: %s: %s", obj.image_path or obj.image_id, record.error_class, record.message)
        if self._emit_failures:
            yield beam.pvalue.TaggedOutput(FAILURES_TAG, record)

    def _close_shard(self, state: _PartitionState) -> _WrittenShard:
        shard = state.shard
        state.shard = None
        shard.writer.close()
        shard.handle.close()
        temp_parquet = storage.join(self._attempt_dir, f"{shard.basename}.parquet")
        temp_index = None
        if self._write_index:
            temp_index = storage.join(self._attempt_dir, f"{shard.basename}.idx")
            with storage.create(temp_index) as handle:
                handle.write(shard.writer.index_text().encode())
        buffer = io.BytesIO()
        pq.write_table(rows_to_table(shard.rows), buffer)
        with storage.create(temp_parquet) as handle:
            handle.write(buffer.getvalue())
        (_LOG.info if self._verbose else _LOG.debug)("wrote %d image(s) to %s", len(shard.rows), shard.temp_tar)
        return _WrittenShard(
            basename=shard.basename,
            temp_tar=shard.temp_tar,
            temp_parquet=temp_parquet,
            temp_index=temp_index,
            num_images=len(shard.rows),
            partition_index=state.index,
            dataset_name=state.dataset_name,
        )


class _FinalizeFn(beam.DoFn):
    """Rename the committed pairs to their final names and remove the temporary directory."""

    def __init__(self, output_dir: str, temp_dir: str, overwrite: bool):
        self._output_dir = output_dir
        self._temp_dir = temp_dir
        self._overwrite = overwrite

    def process(self, written: list[_WrittenShard]) -> Iterator[FileGroupTask]:
        # [_WrittenShard] (every committed pair) -> FileGroupTask per final pair
        by_name: dict[str, _WrittenShard] = {}
        for shard in written:
            if shard.basename in by_name:
                raise RuntimeError(
                    f"two committed outputs are both named {shard.basename}: a partition's batches were split "
                    "between bundles; keep ImageWriterStage fused with ImageReaderStage"
                )
            by_name[shard.basename] = shard
        final_names = set()
        for basename in sorted(by_name):
            shard = by_name[basename]
            final_tar = storage.join(self._output_dir, f"{basename}.tar")
            final_parquet = storage.join(self._output_dir, f"{basename}.parquet")
            final_index = storage.join(self._output_dir, f"{basename}.idx") if shard.temp_index else None
            # The parquet goes last: a parquet present means its tar (and index) are complete.
            storage.rename_if_present(shard.temp_tar, final_tar)
            if final_index:
                storage.rename_if_present(shard.temp_index, final_index)
            storage.rename_if_present(shard.temp_parquet, final_parquet)
            files = [final_tar, final_parquet] + ([final_index] if final_index else [])
            final_names.update(files)
            counter("tars_written").inc()
            counter("images_committed").inc(shard.num_images)
            yield FileGroupTask(
                task_id=basename,
                dataset_name=shard.dataset_name,
                data=files,
                _metadata={"num_images": shard.num_images},
            )
        if self._overwrite:
            stale = [path for path in existing_shards(self._output_dir) if path not in final_names]
            if stale:
                _LOG.info("overwrite: removing %d old shard file(s) from %s", len(stale), self._output_dir)
                storage.delete_tree(stale)
        storage.delete_tree([self._temp_dir])


def existing_shards(output_dir: str) -> list[str]:
    """The shard files (tar, parquet, index) of a previous run in output_dir."""
    found = []
    for extension in ("tar", "parquet", "idx"):
        found += storage.match_files(storage.join(output_dir, f"{SHARD_PREFIX}-*.{extension}"))
    return sorted(found)


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
      overwrite: replace the shards of an earlier run in output_dir instead of stopping.
      write_index: also write DALI's index (`wds2idx` format) of each tar as `{name}.idx`.
      output_format: None (default) writes each image member as it came; "jpg" makes every image a
        `.jpg` member (JPEG bytes pass through, other formats are encoded at jpeg_quality), so that
        every sample has the same member names (loaders that infer columns from the first samples
        need this).
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
    ):
        super().__init__()
        if not output_dir or not isinstance(output_dir, str):
            raise ValueError(f"output_dir must be a directory path or URL, got {output_dir!r}")
        if not isinstance(images_per_tar, int) or images_per_tar < 1:
            raise ValueError(f"images_per_tar must be a positive integer, got {images_per_tar!r}")
        if not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be an integer from 1 to 100, got {jpeg_quality!r}")
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
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be None (keep each image's format) or 'jpg', got {output_format!r}")
        self.output_format = output_format
        self._with_written = False
        self._with_failures = False

    def with_exception_handling(self) -> ImageWriterStage:
        """Make the transform return (files, failures), or (files, written, failures) with
        with_written_batches(); failures are FailureRecords of images that could not be encoded."""
        self._with_failures = True
        return self

    def with_written_batches(self) -> ImageWriterStage:
        """Make the transform return (files, written): the FileGroupTasks and the ImageBatches as written."""
        self._with_written = True
        return self

    def expand(self, batches):
        if not self.overwrite:
            existing = existing_shards(self.output_dir)
            if existing:
                raise FileExistsError(
                    f"{self.output_dir} already holds {len(existing)} shard file(s) of an earlier run "
                    f"(e.g. {existing[0]}); choose another output directory or pass overwrite=True (--overwrite)"
                )
        temp_dir = storage.join(self.output_dir, f"{TEMP_DIR_PREFIX}{uuid.uuid4().hex}")
        self.temp_dir = temp_dir  # the CLI records who owns it (beam_curator.leftovers)
        # ImageBatch -> _WrittenShard (main) and ImageBatch (tagged 'written')
        outputs = batches | "WriteShards" >> beam.ParDo(_WriteShardsFn(self, temp_dir)).with_outputs(
            WRITTEN_BATCHES_TAG, FAILURES_TAG, main="shards"
        )
        files = (
            outputs.shards
            | "CollectCommitted" >> beam.combiners.ToList()  # [_WrittenShard], once
            | "Finalize" >> beam.ParDo(_FinalizeFn(self.output_dir, temp_dir, self.overwrite))  # FileGroupTask
        )
        results = (files,)
        if self._with_written:
            results += (outputs[WRITTEN_BATCHES_TAG],)
        if self._with_failures:
            results += (outputs[FAILURES_TAG],)
        return results if len(results) > 1 else files

    def display_data(self):
        return {
            "output_dir": self.output_dir,
            "images_per_tar": self.images_per_tar,
            "deterministic_name": self.deterministic_name,
            "remove_image_data": self.remove_image_data,
            "jpeg_quality": self.jpeg_quality,
            "force_reencode": self.force_reencode,
            "output_format": self.output_format or "original",
            "overwrite": self.overwrite,
            "write_index": self.write_index,
        }
