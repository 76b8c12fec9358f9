"""Removal lists: the image ids `beam-curator dedup` wrote, held compactly for membership tests.

A worker process holds a removal list as a sorted numpy array of 64-bit digests of the ids (blake2b),
not as a Python set of strings, beside the id kept in each one's place and the method (for the filter
record of each removal): one copy serves every thread of the process, and a membership test is a
binary search. 10 million removals of 32-character ids take about 0.4 GB (8 bytes of digest, the
kept id as 32 bytes, a byte for the method); a Python set of the ids alone would take over 1 GB.

Two different ids share a digest with probability 2^-64 per pair: checking a billion images against
ten million removal ids, the expected number of images removed by mistake is about 5e-4.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence

import numpy as np

from beam_curator import storage

__all__ = ["RemovalList", "id_digest", "id_digests"]

_LOG = logging.getLogger(__name__)


def id_digest(image_id: str) -> int:
    """A 64-bit digest of an image id (blake2b), as an unsigned int."""
    return int.from_bytes(hashlib.blake2b(image_id.encode(), digest_size=8).digest(), "little")


def id_digests(ids: Iterable[str]) -> np.ndarray:
    """The 64-bit digests (uint64) of ids."""
    return np.fromiter(map(id_digest, ids), dtype=np.uint64)


class RemovalList:
    """The ids of `{directory}/*.parquet`'s column `field`, as sorted unique digests, each with the id
    kept in its place (`kept_id`) and the method that found it, where the files have those columns."""

    def __init__(self, digests: np.ndarray, source: str = "", kept: np.ndarray | None = None,
                 methods: np.ndarray | None = None, method_names: Sequence[str] = ()):
        digests = np.asarray(digests, dtype=np.uint64)
        order = np.argsort(digests, kind="stable")
        self.digests = digests[order]
        self.kept = None if kept is None else np.asarray(kept)[order]  # UTF-8 bytes, fixed width
        self.methods = None if methods is None else np.asarray(methods, dtype=np.uint8)[order]
        self.method_names = list(method_names)  # code -> name; "" where a file had no method
        if len(self.digests) > 1:  # one entry per id (a list may name an id in two files)
            first = np.concatenate([[True], self.digests[1:] != self.digests[:-1]])
            self.digests = self.digests[first]
            self.kept = None if self.kept is None else self.kept[first]
            self.methods = None if self.methods is None else self.methods[first]
        self.source = source

    @staticmethod
    def files(directory: str) -> list[str]:
        files = storage.match_files(storage.join(directory, "*.parquet"))
        if not files:
            raise FileNotFoundError(f"{directory} holds no *.parquet removal list (written by `beam-curator dedup`)")
        return files

    @classmethod
    def load(cls, directory: str, field: str = "id") -> RemovalList:
        import pyarrow.parquet as pq

        ids: list[str] = []
        kept: list[np.ndarray] = []
        methods: list[int] = []
        names_of: dict[str, int] = {}
        for path in cls.files(directory):
            with storage.open_read(path) as handle:
                parquet = pq.ParquetFile(handle)
                names = parquet.schema_arrow.names
                if field not in names:
                    raise ValueError(f"{path} has no column {field!r} (its columns: {names}); "
                                     "set duplicate_id_field")
                extra = [name for name in ("kept_id", "method") if name in names]
                for batch in parquet.iter_batches(columns=[field, *extra], batch_size=65536):
                    values = batch.column(0).to_pylist()
                    present = [index for index, value in enumerate(values) if value is not None]
                    ids += [str(values[index]) for index in present]
                    column = (batch.column(extra.index("kept_id") + 1).to_pylist() if "kept_id" in extra
                              else [None] * len(values))
                    kept.append(np.array([(column[index] or "").encode() for index in present], dtype=np.bytes_))
                    column = (batch.column(extra.index("method") + 1).to_pylist() if "method" in extra
                              else [None] * len(values))
                    methods += [names_of.setdefault(column[index] or "", len(names_of)) for index in present]
        kept_all = np.concatenate(kept) if kept else np.zeros(0, dtype=np.bytes_)
        removal = cls(id_digests(ids), directory, kept_all, np.asarray(methods, dtype=np.uint8), list(names_of))
        _LOG.info("removal list %s: %d ids", directory, len(removal))
        return removal

    def __len__(self) -> int:
        return len(self.digests)

    def _positions(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        digests = id_digests(ids)
        if not len(self.digests) or not len(digests):
            return np.zeros(len(digests), dtype=np.int64), np.zeros(len(digests), dtype=bool)
        positions = np.searchsorted(self.digests, digests).clip(0, len(self.digests) - 1)
        return positions, self.digests[positions] == digests

    def contains(self, ids: Sequence[str]) -> np.ndarray:
        """A bool per id: is it on the list."""
        return self._positions(ids)[1]

    def lookup(self, ids: Sequence[str]) -> list[tuple[str | None, str | None] | None]:
        """Per id: None when it is not on the list, else (the id kept in its place, the method)."""
        positions, found = self._positions(ids)
        result: list[tuple[str | None, str | None] | None] = []
        for at, hit in zip(positions.tolist(), found.tolist()):
            if not hit:
                result.append(None)
                continue
            kept = self.kept[at].decode() if self.kept is not None and len(self.kept) else ""
            method = self.method_names[self.methods[at]] if self.methods is not None and len(self.methods) else ""
            result.append((kept or None, method or None))
        return result


def check_matches(directory: str, partitions: Sequence, field: str = "id") -> int:
    """Before a run that removes the ids of a removal list from these partitions (FileGroupTasks): how
    many ids the list holds. ValueError when the list names ids and none of them can be an image of
    the partitions: a shard of a beam_curator output must hold one of the ids in its parquet (read until
    the first match); a raw shard must be where one of the listed images came from (the list's
    `original_path`). A list made from other data would otherwise remove nothing, silently."""
    import pyarrow.parquet as pq

    listed: list[str] = []
    origins: set[str] = set()
    for path in RemovalList.files(directory):
        with storage.open_read(path) as handle:
            parquet = pq.ParquetFile(handle)
            names = parquet.schema_arrow.names
            if field not in names:
                raise ValueError(f"{path} has no column {field!r} (its columns: {names}); set duplicate_id_field")
            columns = [field] + (["original_path"] if "original_path" in names else [])
            for batch in parquet.iter_batches(columns=columns, batch_size=65536):
                listed += [str(value) for value in batch.column(0).to_pylist() if value is not None]
                if len(columns) == 2:
                    origins.update(str(value).partition("#")[0] for value in batch.column(1).to_pylist() if value)
    if not listed:
        _LOG.info("removal list %s is empty: nothing is removed", directory)
        return 0
    digests = np.unique(id_digests(listed))
    curated, raw = [], set()
    for task in partitions:
        for source, metadata in zip(task.partition.source_files, task.partition.metadata_files):
            if metadata:
                curated.append(metadata)
            else:
                raw.add(source)
    if raw & origins:
        return len(digests)
    for parquet_path in curated:
        with storage.open_read(parquet_path) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(columns=["image_id"], batch_size=65536):
                ids = id_digests(str(value) for value in batch.column(0).to_pylist())
                if np.isin(ids, digests).any():
                    return len(digests)
    if raw and not origins:
        _LOG.warning("removal list %s does not say where its images came from (no original_path column: an older "
                     "list); it cannot be checked against the input before the run", directory)
        return len(digests)
    example = next(iter(sorted(origins)), None)
    raise ValueError(
        f"the removal list {directory} names {len(digests)} image(s), and none of them is in this input"
        + (f" (its images come from shards like {example})" if example else "")
        + ": a removal list matches the outputs `beam-curator dedup` read and the shards they were curated from; "
        "check the list and the inputs")
