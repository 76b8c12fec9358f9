"""The commit step of the writer: temporary tar+parquet pairs renamed to their final names.

Every bundle attempt writes its pairs under a directory of its own; Beam passes on the outputs of the
attempt it commits, so the commit sees exactly the committed pairs. It renames every tar (and index)
first, then every parquet: a parquet present means its tar is complete. Renames go in batches on
several threads (one request per file is what made a large commit slow on object stores), and skip
what an earlier try of the same commit already moved, so a commit can be repeated.
"""

from __future__ import annotations

from collections.abc import Sequence

from beam_curator import storage
from beam_curator.packing import WrittenShard

__all__ = ["DuplicateOutputError", "commit_shards", "final_files"]


class DuplicateOutputError(RuntimeError):
    """Two committed outputs share a name: a partition was packed twice."""


def final_files(shard: WrittenShard, output_dir: str) -> list[str]:
    """The final paths of a pair: tar, parquet, and index if written."""
    files = [storage.join(output_dir, f"{shard.basename}.tar"), storage.join(output_dir, f"{shard.basename}.parquet")]
    if shard.temp_index:
        files.append(storage.join(output_dir, f"{shard.basename}.idx"))
    return files


def commit_shards(shards: Sequence[WrittenShard], output_dir: str) -> list[WrittenShard]:
    """Rename the committed pairs to their final names in output_dir; the pairs, sorted by name."""
    by_name: dict[str, WrittenShard] = {}
    for shard in shards:
        if shard.basename in by_name:
            raise DuplicateOutputError(
                f"two committed outputs are both named {shard.basename}: a partition's batches were packed in two "
                "places (split between bundles); use ImageWriterStage(mode='keyed') when something between the "
                "reader and the writer reshuffles or splits batches")
        by_name[shard.basename] = shard
    ordered = [by_name[name] for name in sorted(by_name)]
    first, last = [], []
    for shard in ordered:
        tar, parquet, *index = final_files(shard, output_dir)
        first.append((shard.temp_tar, tar))
        if index:
            first.append((shard.temp_index, index[0]))
        last.append((shard.temp_parquet, parquet))
    storage.rename_many(first)
    storage.rename_many(last)  # only once every tar is in place
    return ordered
