"""Partition manifests: `DIR/_partitions/{hash}.json`, the proof that a partition is committed.

The writer writes a partition's manifest last, atomically, once every file of the partition (tars,
indexes, parquets, failure and filter records) has its final name. It lists those files with their
sizes and sha256, and the partition's counts (read, failed and filtered per stage, written), so a
resumed run can skip the partition and still count it. Nothing in it depends on timing: a retried
or repeated commit writes the same bytes. No Beam here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from beam_curator import storage
from beam_curator.output.layout import PARTITIONS_DIR, manifest_name
from beam_curator.output.stats import Counts

__all__ = ["PartitionManifest", "manifest_path", "read_manifests"]

_READ_THREADS = 16


@dataclass
class PartitionManifest:
    """A committed partition.

    partition: the `{hash}` in its shard names (a digest of its source files and the writer options).
    source_files: the input shards it was read from.
    files: {"name": path relative to the output directory, "size": bytes, "sha256": hex}, sorted by name.
    counts: the partition's Counts (beam_curator.output.stats) as a dict: each stage's own integer
      counts (samples_read, images_decoded, kept, dropped, ...), without timings, and its totals.
    options: what the job recorded of its options (curate --resume refuses other options).
    """

    partition: str
    source_files: list[str]
    files: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=lambda: Counts().to_dict())
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> PartitionManifest:
        values = json.loads(data)
        return cls(**{name: values[name] for name in cls.__dataclass_fields__ if name in values})

    def file_sizes(self) -> dict[str, int]:
        return {entry["name"]: int(entry["size"]) for entry in self.files}

    def complete_in(self, output_dir: str, sizes: Mapping[str, int]) -> list[str]:
        """The files it lists that are missing from sizes (one listing of output_dir: path -> size) or
        of another size; empty when the partition is whole."""
        wanted = {storage.join(output_dir, name): size for name, size in self.file_sizes().items()}
        return [path for path, size in wanted.items() if sizes.get(path) != size]

    def paths(self, output_dir: str) -> list[str]:
        """The manifest's own path and those of the files it lists."""
        return [manifest_path(output_dir, self.partition)] + [storage.join(output_dir, name) for name in self.file_sizes()]

    def typed_counts(self) -> Counts:
        return Counts.from_dict(self.counts)


def manifest_path(output_dir: str, partition: str) -> str:
    return storage.join(output_dir, manifest_name(partition))


def read_manifests(output_dir: str) -> list[PartitionManifest]:
    """Every manifest under output_dir/_partitions/ (read on several threads: object stores are slow
    per request), sorted by partition. A manifest that cannot be parsed is a ValueError naming it."""
    paths = [path for path in storage.match_files(storage.join(output_dir, PARTITIONS_DIR, "*.json"))
             if not path.rsplit("/", 1)[-1].startswith(".")]

    def read(path: str) -> PartitionManifest:
        with storage.open_read(path) as handle:
            data = handle.read()
        try:
            return PartitionManifest.from_json(data)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path} is not a partition manifest: {error}") from error

    with ThreadPoolExecutor(max_workers=min(_READ_THREADS, max(1, len(paths)))) as pool:
        manifests = list(pool.map(read, paths))
    return sorted(manifests, key=lambda manifest: manifest.partition)
