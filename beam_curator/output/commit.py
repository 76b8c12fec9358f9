"""The commit steps of the writer: temporary tar+parquet pairs renamed to their final names.

Every bundle attempt writes its pairs under a directory of its own. commit_shards renames pairs: every
tar (and index) first, then every parquet, so a parquet present means its tar is complete. Renames go
in batches on several threads (one request per file is what made a large commit slow on object
stores), and skip what an earlier try of the same commit already moved, so a commit can be repeated.

With deterministic names the writer commits each input partition as soon as its last tar is written
(commit_partition): its record files, then its pairs, then its manifest (beam_curator.output.manifest), last
and atomically. A partition whose manifest exists is complete, and a killed job resumes from there.
Why a second commit of a partition is harmless (a retried bundle, or a speculative one running beside
the first): the bytes of every file are a function of the partition's input and the options only (no
time, no attempt id, no random name), so the second commit renames identical bytes over identical
bytes under the same names, and rewrites the same manifest. A reader sees the old file or the new one
(renames are atomic), and they are equal. With random names (deterministic_name=False) the pairs of
the attempt Beam keeps are renamed by one finalize at the end instead, as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from beam_curator import storage
from beam_curator.output.layout import FAILURES_DIR, FILTERED_DIR, record_file_name, records_digest
from beam_curator.output.manifest import PartitionManifest, manifest_path
from beam_curator.output.packing import WrittenShard, checksum
from beam_curator.output.stats import Counts, Timings
from beam_curator.records import FailureRecord, FilterRecord, failures_to_table, filtered_to_table
from beam_curator.tasks import StagePerf

__all__ = ["DuplicateOutputError", "PartitionLedger", "PartitionOutput", "commit_partition", "commit_shards",
           "final_files", "record_files"]


class DuplicateOutputError(RuntimeError):
    """Two committed outputs share a name: a partition was packed twice."""


def final_files(shard: WrittenShard, output_dir: str) -> list[str]:
    """The final paths of a pair: tar, parquet, and index if written."""
    files = [storage.join(output_dir, f"{shard.basename}.tar"), storage.join(output_dir, f"{shard.basename}.parquet")]
    if shard.temp_index:
        files.append(storage.join(output_dir, f"{shard.basename}.idx"))
    return files


def commit_shards(shards: Sequence[WrittenShard], output_dir: str, *,
                  already_final: Iterable[WrittenShard] = ()) -> list[WrittenShard]:
    """Rename the committed pairs to their final names in output_dir; all pairs, sorted by name.
    already_final: pairs their partition's commit renamed, only checked against the others' names."""
    already_final = list(already_final)
    by_name: dict[str, WrittenShard] = {}
    for shard in [*shards, *already_final]:
        if shard.basename in by_name:
            raise DuplicateOutputError(
                f"two committed outputs are both named {shard.basename}: a partition's batches were packed in two "
                "places (split between bundles); use ImageWriterStage(mode='keyed') when something between the "
                "reader and the writer reshuffles or splits batches")
        by_name[shard.basename] = shard
    ordered = [by_name[name] for name in sorted(by_name)]
    final = {id(shard) for shard in already_final}
    first: list[tuple[str, str]] = []
    last: list[tuple[str, str]] = []
    for shard in ordered:
        if id(shard) in final:
            continue
        tar, parquet, *index = final_files(shard, output_dir)
        first.append((shard.temp_tar, tar))
        if index and shard.temp_index:
            first.append((shard.temp_index, index[0]))
        last.append((shard.temp_parquet, parquet))
    storage.rename_many(first)
    storage.rename_many(last)  # only once every tar is in place
    return ordered


@dataclass
class PartitionLedger:
    """What the commit of one input partition needs, gathered while its batches are packed: its tars,
    every record of its images (the reader's, the stages', the writer's) and its stages' counts."""

    digest: str  # the `{hash}` of its shard names
    source_files: tuple[str, ...]
    shards: list[WrittenShard] = field(default_factory=list)
    records: list[FailureRecord | FilterRecord] = field(default_factory=list)
    perfs: list[StagePerf] = field(default_factory=list)

    def add_perfs(self, perfs: Iterable[StagePerf]) -> None:
        self.perfs.extend(perfs)

    def counts(self) -> Counts:
        counts = Counts()
        counts.add_perfs(self.perfs)
        counts.add_records(self.records)
        counts.add_written(sum(shard.num_images for shard in self.shards), len(self.shards))
        return counts


@dataclass
class PartitionOutput:
    """What the writer emits for each partition it wrote: its digests, its tar+parquet pairs, whether
    commit_partition already renamed them (else the single finalize does), and its counts and stage
    timings (what the run's `_stats.json` sums)."""

    digest: str
    records_digest: str
    shards: list[WrittenShard]
    committed: bool
    counts: Counts = field(default_factory=Counts)
    timings: Timings = field(default_factory=Timings)


def commit_partition(ledger: PartitionLedger, output_dir: str, *, deterministic: bool,
                     options: dict[str, Any] | None = None) -> PartitionOutput:
    """Commit one partition: write its record files (final names, atomically); with deterministic
    names also rename its pairs and write its manifest, last. See the module for why a repeat is safe."""
    records_name = records_digest(ledger.source_files)
    entries = []
    for relative, data in record_files(ledger.records, records_name):
        storage.write_atomically(storage.join(output_dir, relative), data)
        entries.append(_entry(relative, checksum(data)))
    counts, timings = ledger.counts(), Timings().add_perfs(ledger.perfs)
    if not deterministic:
        return PartitionOutput(ledger.digest, records_name, list(ledger.shards), False, counts, timings)
    commit_shards(ledger.shards, output_dir)
    for shard in ledger.shards:
        for extension, sums in sorted(shard.checksums.items()):
            entries.append(_entry(f"{shard.basename}.{extension}", sums))
    manifest = PartitionManifest(partition=ledger.digest, source_files=list(ledger.source_files),
                                 files=sorted(entries, key=lambda entry: entry["name"]), counts=counts.to_dict(),
                                 options=dict(options or {}))
    storage.write_atomically(manifest_path(output_dir, ledger.digest), manifest.to_json())
    return PartitionOutput(ledger.digest, records_name, list(ledger.shards), True, counts, timings)


def _entry(name: str, sums: tuple[int, str]) -> dict[str, Any]:
    return {"name": name, "sha256": sums[1], "size": sums[0]}


def _failure_order(record: FailureRecord):
    return record.member, record.key, record.stage, record.scope, record.error_class, record.message, record.image_id


def _filtered_order(record: FilterRecord):
    return record.member, record.key, record.image_id, record.stage, record.reason


def record_files(records: Iterable[FailureRecord | FilterRecord], digest: str) -> list[tuple[str, bytes]]:
    """The parquet files of a group of records, as (path relative to the output, bytes): failures under
    `_failures/failures-{digest}.parquet`, filter records under `_filtered/filtered-{digest}.parquet`, a
    file only for a kind that has records. Rows are sorted, so the same records give the same bytes."""
    import io

    import pyarrow.parquet as pq

    records = list(records)
    failures = sorted((record for record in records if isinstance(record, FailureRecord)), key=_failure_order)
    filtered = sorted((record for record in records if isinstance(record, FilterRecord)), key=_filtered_order)
    files = []
    for directory, table in ((FAILURES_DIR, failures_to_table(failures) if failures else None),
                             (FILTERED_DIR, filtered_to_table(filtered) if filtered else None)):
        if table is not None:
            buffer = io.BytesIO()
            pq.write_table(table, buffer)
            files.append((record_file_name(directory, digest), buffer.getvalue()))
    return files
