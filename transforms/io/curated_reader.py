"""CuratedShardReader: the shard reader over beam_curator outputs, without decoding (what prune runs on).

It is ImageReaderStage's loop (transforms/io/image_reader.py) with no decoder: each curated tar is read
with the parquet beside it, and a sample becomes an ImageObject holding its original image bytes, its
companions and every field of its parquet row (id, scores, embedding, hashes, metadata, original key
and path), and no pixels. The writer then stores the bytes as they are, so a kept sample's members
come out byte-identical, and its parquet row with every column.
"""

from __future__ import annotations

from beam_curator.formats.decoding import DEFAULT_MAX_IMAGE_PIXELS
from beam_curator.formats.sample_rules import SampleRules
from beam_curator.formats.webdataset import DEFAULT_MAX_MEMBER_BYTES
from beam_curator.tasks import PartitionInfo
from beam_curator.transforms.io.image_reader import ShardReader, _ReadShardsFn

__all__ = ["CuratedShardReader"]


class _ReadCuratedFn(_ReadShardsFn):
    def _accept(self, partition: PartitionInfo) -> PartitionInfo:
        raw = [source for source, metadata in zip(partition.source_files, partition.metadata_files) if not metadata]
        if raw:
            raise ValueError(f"{raw[0]} is not a shard of a beam_curator output (no parquet beside it in an output "
                             "directory): CuratedShardReader reads only what curate or prune wrote")
        return partition


class CuratedShardReader(ShardReader):
    """FileGroupTask of curated tars -> ImageBatches of their samples as they are (see the module).

    It returns ReadResult(batches, failures), as ImageReaderStage does: a sample without its parquet
    row (or a row without its sample) is a FailureRecord; with_exception_handling(threshold=...) is
    honoured the same way."""

    def __init__(self, batch_size: int = 1000, *, name: str = "curated_reader"):
        super().__init__(name=name)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size

    def check_input(self, partitions) -> None:
        """Before the run: ValueError naming a shard that is not of a beam_curator output."""
        for task in partitions:
            partition = task.partition
            raw = [path for path, metadata in zip(partition.source_files, partition.metadata_files) if not metadata]
            if raw:
                raise ValueError(f"{raw[0]} is not a shard of a beam_curator output (no images-*.parquet beside it in "
                                 "a directory curate or prune wrote): prune reads curated output; curate raw shards "
                                 "with `beam-curator curate`")

    def _fn(self) -> _ReadShardsFn:
        rules = SampleRules(stage=self.stage_name, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS,
                            max_member_bytes=DEFAULT_MAX_MEMBER_BYTES)
        return _ReadCuratedFn(stage_name=self.stage_name, batch_size=self.batch_size, rules=rules)

    def display_data(self):
        return {"batch_size": self.batch_size}
