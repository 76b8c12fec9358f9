"""Removal lists: the image ids `beam-curator dedup` wrote, held compactly for membership tests.

A worker process holds a removal list as a sorted numpy array of 64-bit digests of the ids (blake2b),
not as a Python set of strings: 10 million ids take 80 MB (a set of those strings would take over
1 GB), and one copy serves every thread of the process. A membership test is a binary search.

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
    """The ids of `{directory}/*.parquet`'s column `field`, as sorted unique digests."""

    def __init__(self, digests: np.ndarray, source: str = ""):
        self.digests = np.unique(np.asarray(digests, dtype=np.uint64))
        self.source = source

    @classmethod
    def load(cls, directory: str, field: str = "id") -> RemovalList:
        import pyarrow.parquet as pq

        files = storage.match_files(storage.join(directory, "*.parquet"))
        if not files:
            raise FileNotFoundError(f"{directory} holds no *.parquet removal list (written by `beam-curator dedup`)")
        parts = []
        for path in files:
            with storage.open_read(path) as handle:
                parquet = pq.ParquetFile(handle)
                if field not in parquet.schema_arrow.names:
                    raise ValueError(f"{path} has no column {field!r} (its columns: {parquet.schema_arrow.names}); "
                                     "set duplicate_id_field")
                for batch in parquet.iter_batches(columns=[field], batch_size=65536):
                    parts.append(id_digests(str(value) for value in batch.column(0).to_pylist() if value is not None))
        removal = cls(np.concatenate(parts) if parts else np.zeros(0, np.uint64), directory)
        _LOG.info("removal list %s: %d ids (%.1f MB)", directory, len(removal), removal.digests.nbytes / 1e6)
        return removal

    def __len__(self) -> int:
        return len(self.digests)

    def contains(self, ids: Sequence[str]) -> np.ndarray:
        """A bool per id: is it on the list."""
        digests = id_digests(ids)
        if not len(self.digests) or not len(digests):
            return np.zeros(len(digests), dtype=bool)
        positions = np.searchsorted(self.digests, digests).clip(0, len(self.digests) - 1)
        return self.digests[positions] == digests
