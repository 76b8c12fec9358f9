"""Output shard names: `images-{hash}-{index:06d}.tar` and its `.parquet` twin."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from typing import Any

__all__ = ["SHARD_PREFIX", "name_digest", "partition_hash", "shard_basename"]

SHARD_PREFIX = "images"


def partition_hash(source_files: Sequence[str], options: dict[str, Any], *, deterministic: bool) -> str:
    """The `{hash}` of one input partition's output shards.

    Deterministic: a digest of the partition's source files and the writer options that shape the
    output, so the same input and options give the same names. Otherwise a fresh random id.
    """
    if not deterministic:
        return uuid.uuid4().hex[:16]
    payload = json.dumps({"sources": list(source_files), "options": options}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def shard_basename(digest: str, index: int) -> str:
    """`images-{digest}-{index:06d}`, without extension."""
    return f"{SHARD_PREFIX}-{digest}-{index:06d}"


def name_digest(path: str) -> str:
    """The digest an output file's name carries: `images-{digest}-{index}.tar` (and its twins),
    `_failures/failures-{digest}.parquet`, `_filtered/filtered-{digest}.parquet`, `_partitions/{digest}.json`."""
    stem = path.rsplit("/", 1)[-1].split(".", 1)[0]
    parts = stem.split("-")
    return parts[1] if stem.startswith(f"{SHARD_PREFIX}-") and len(parts) == 3 else parts[-1]
