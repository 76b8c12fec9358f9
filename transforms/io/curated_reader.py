"""Reading curated output back as ImageBatches without decoding: what `beam-curator prune` runs on.

Each curated tar is read with the parquet beside it. A sample becomes an ImageObject holding its
original image bytes, its companions and every field of its parquet row (scores, embedding, hashes,
metadata, original key and path), and no pixels: the writer then stores the bytes as they are, so a
kept sample's members come out byte-identical, and its parquet row with every column.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import apache_beam as beam
import numpy as np

from beam_curator import storage
from beam_curator.formats.schema import METADATA_SCHEMA
from beam_curator.formats.webdataset import iter_samples, split_member_name
from beam_curator.records import FailureRecord
from beam_curator.tasks import BatchOrigin, FileGroupTask, ImageBatch, ImageObject
from beam_curator.transforms.coders import ImageBatchCoder  # noqa: F401 - registers the ImageBatch coder
from beam_curator.transforms.io.image_reader import ReadResult

__all__ = ["CuratedShardReader"]


def image_from_row(row: dict, members: dict[str, bytes]) -> ImageObject:
    """The ImageObject a curated sample (its members) and its parquet row describe."""
    _, image_extension = split_member_name(row["member_name"])
    scores = {name: value for name, value in row.items() if name not in METADATA_SCHEMA.names and value is not None}
    if row.get("clip_score") is not None:
        scores["clip_score"] = row["clip_score"]
    return ImageObject(
        image_path=row["original_path"], image_id=row["image_id"], metadata=json.loads(row["metadata"] or "{}"),
        embedding=None if row["embedding"] is None else np.asarray(row["embedding"], dtype=np.float32),
        aesthetic_score=row["aesthetic_score"], nsfw_score=row["nsfw_score"], key=row["original_key"],
        image_bytes=members[image_extension], image_format=image_extension,
        companions={extension: data for extension, data in members.items() if extension != image_extension},
        width=row["width"], height=row["height"], scores=scores, phash=row.get("phash"))


class _ReadCuratedFn(beam.DoFn):
    emits_partitions_in_order = True  # so the writer runs fused with it (see image_writer.fusion_break)

    def __init__(self, batch_size: int, stage_name: str):
        self._batch_size, self._stage_name = batch_size, stage_name

    def process(self, task: FileGroupTask):
        # FileGroupTask (one curated tar) -> ImageBatch (no pixels), streamed; FailureRecord ('failures')
        import pyarrow.parquet as pq

        started = time.perf_counter()
        source_files = tuple(task._metadata.get("source_files", task.data))
        batch_index, pending, counts, failures = 0, [], Counter(), []
        for tar in task.data:
            with storage.open_read(tar[: -len(".tar")] + ".parquet") as handle:
                rows = {row["key"]: row for row in pq.read_table(handle).to_pylist()}
            with storage.open_read(tar) as handle:
                for sample in iter_samples(handle):
                    if not hasattr(sample, "members"):
                        continue  # a link or device entry: curate never writes one
                    counts["samples_read"] += 1
                    row = rows.pop(sample.key, None)
                    if row is None or split_member_name(row["member_name"])[1] not in sample.members:
                        yield self._failure(tar, sample.key, "the sample has no row in the parquet beside its tar",
                                            failures)
                        continue
                    pending.append(image_from_row(row, sample.members))
                    if len(pending) == self._batch_size:
                        yield self._batch(task, source_files, batch_index, pending, False, counts, failures, started)
                        batch_index, pending, counts, failures = batch_index + 1, [], Counter(), []
                        started = time.perf_counter()
            for key in rows:  # rows whose sample is not in the tar
                counts["samples_read"] += 1
                yield self._failure(tar, key, "the parquet has a row for this key but the tar has no such sample",
                                    failures)
            counts["shards_read"] += 1
        yield self._batch(task, source_files, batch_index, pending, True, counts, failures, started)

    def _batch(self, task, source_files, index, objects, last, counts, failures, started) -> ImageBatch:
        batch = ImageBatch(task_id=f"{task.task_id}_{index}", dataset_name=task.dataset_name, data=list(objects),
                           origin=BatchOrigin(partition=int(task._metadata.get("partition_index", 0)),
                                              batch_index=index, last=last, source_files=source_files),
                           read_failures=list(failures))
        batch.add_stage_perf(self._stage_name, time.perf_counter() - started, len(objects), dict(counts))
        return batch

    def _failure(self, tar: str, key: str, message: str, carried: list):
        record = FailureRecord(source=tar, member=key, key=key, stage=self._stage_name, scope="sample",
                               error_class="MissingMetadata", message=message)
        carried.append(record)  # with the next batch too (ImageBatch.read_failures)
        return beam.pvalue.TaggedOutput("failures", record)


class CuratedShardReader(beam.PTransform):
    """FileGroupTask of curated tars -> ImageBatches of their samples as they are (see the module).

    with_exception_handling() makes it return ReadResult(batches, failures), as ImageReaderStage does:
    a sample without its parquet row (or a row without its sample) is a FailureRecord."""

    def __init__(self, batch_size: int = 1000, *, name: str = "curated_reader"):
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size, self.stage_name = batch_size, name
        self._with_failures = False

    def with_exception_handling(self, threshold: float = 1.0) -> CuratedShardReader:
        self._with_failures = True
        return self

    def expand(self, tasks):
        read = beam.ParDo(_ReadCuratedFn(self.batch_size, self.stage_name)).with_output_types(ImageBatch)
        outputs = tasks | "ReadCurated" >> read.with_outputs("failures", main="batches")
        return ReadResult(outputs.batches, outputs.failures) if self._with_failures else outputs.batches

    def display_data(self):
        return {"batch_size": self.batch_size}
