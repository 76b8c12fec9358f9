"""Every name in a curated output directory, and the digests in them. Nothing else spells them.

    DIR/images-{hash}-{index:06d}.tar       a shard; `.parquet` beside it (one row per image), `.idx`
                                            with --write-index
    DIR/_partitions/{hash}.json             a committed partition's manifest (beam_curator.output.manifest)
    DIR/_failures/failures-{digest}.parquet the partition's failure records
    DIR/_filtered/filtered-{digest}.parquet the partition's filter records
    DIR/_stats.json                         the run's figures (beam_curator.output.stats)
    DIR/_SUCCESS                            written last, only when the run succeeded
    DIR/_report/index.html                  the run report
    DIR/.beam_curator-temp-{uuid}/          a running job's temporary files (with _owner.json)
    DIR/.{name}.tmp-{random}                a small file being written atomically (storage.write_atomically)

A dedup run's directory holds `duplicates-{method}-{shard:05d}.parquet` and `_dedup.json`.

`{hash}` digests a partition's source files and the writer options that shape the bytes;
`{digest}` of the record files digests the source files alone (the same with random shard names).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "DEDUP_SUMMARY_FILE", "FAILURES_DIR", "FILTERED_DIR", "MARKERS", "OWNER_FILE", "PARTITIONS_DIR", "RECORD_DIRS",
    "REPORT_DIR", "SHARD_EXTENSIONS", "SHARD_PREFIX", "STATS_FILE", "SUCCESS_FILE", "TEMP_DIR_PREFIX",
    "duplicates_name", "is_temporary", "kind_of", "manifest_name", "name_digest", "output_root", "partition_hash",
    "record_file_name", "records_digest", "shard_basename", "temporary_name",
]

SHARD_PREFIX = "images"
SHARD_EXTENSIONS = ("tar", "parquet", "idx")
PARTITIONS_DIR = "_partitions"
FAILURES_DIR = "_failures"
FILTERED_DIR = "_filtered"
RECORD_DIRS = (FAILURES_DIR, FILTERED_DIR)
STATS_FILE = "_stats.json"
SUCCESS_FILE = "_SUCCESS"
REPORT_DIR = "_report"
TEMP_DIR_PREFIX = ".beam_curator-temp-"
OWNER_FILE = "_owner.json"
DEDUP_SUMMARY_FILE = "_dedup.json"
_RECORD_PREFIX = {FAILURES_DIR: "failures", FILTERED_DIR: "filtered"}
# What only a beam_curator output (curate, prune or dedup) holds at its top: a directory holding one
# of these (or a job's temporary directory) is an output, which input listing never reads unless it is
# given as an input itself. (_SUCCESS and _report are not among them: other tools write those names.)
MARKERS = (PARTITIONS_DIR, FAILURES_DIR, FILTERED_DIR, STATS_FILE, DEDUP_SUMMARY_FILE)


def partition_hash(source_files: Sequence[str], options: dict[str, Any], *, deterministic: bool) -> str:
    """The `{hash}` of one input partition's output shards.

    Deterministic: a digest of the partition's source files and the writer options that shape the
    output, so the same input and options give the same names. Otherwise a fresh random id.
    """
    if not deterministic:
        return uuid.uuid4().hex[:16]
    payload = json.dumps({"sources": list(source_files), "options": options}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def records_digest(source_files: Sequence[str]) -> str:
    """The `{digest}` of a partition's record files: its source files only, so it is the same on every
    attempt, with random shard names too."""
    return hashlib.sha256(json.dumps(list(source_files)).encode()).hexdigest()[:16]


def shard_basename(digest: str, index: int) -> str:
    """`images-{digest}-{index:06d}`, without extension."""
    return f"{SHARD_PREFIX}-{digest}-{index:06d}"


def manifest_name(digest: str) -> str:
    """`_partitions/{digest}.json`, relative to the output directory."""
    return f"{PARTITIONS_DIR}/{digest}.json"


def record_file_name(directory: str, digest: str) -> str:
    """`_failures/failures-{digest}.parquet` or `_filtered/filtered-{digest}.parquet`."""
    return f"{directory}/{_RECORD_PREFIX[directory]}-{digest}.parquet"


def duplicates_name(method: str, shard: int) -> str:
    """A dedup run's removal file: `duplicates-{method}-{shard:05d}.parquet`."""
    return f"duplicates-{method}-{shard:05d}.parquet"


def temporary_name(name: str) -> str:
    """The name a small file is written under before it is renamed to `name` (same directory)."""
    return f".{name}.tmp-{uuid.uuid4().hex[:12]}"


def is_temporary(relative: str) -> bool:
    """True for a path (relative to the output) that a writer left half-written: a `.{name}.tmp-*`
    file of an atomic write, or anything in a `.beam_curator-temp-*` directory."""
    parts = relative.split("/")
    return parts[0].startswith(TEMP_DIR_PREFIX) or (parts[-1].startswith(".") and ".tmp-" in parts[-1])


def name_digest(path: str) -> str:
    """The digest an output file's name carries: `images-{digest}-{index}.tar` (and its twins),
    `_failures/failures-{digest}.parquet`, `_filtered/filtered-{digest}.parquet`, `_partitions/{digest}.json`."""
    stem = path.rsplit("/", 1)[-1].split(".", 1)[0]
    parts = stem.split("-")
    return parts[1] if stem.startswith(f"{SHARD_PREFIX}-") and len(parts) == 3 else parts[-1]


def kind_of(relative: str) -> str | None:
    """What a path relative to the output directory is: "shard", "manifest", "record", "stats",
    "success", "report", "temporary", or None for a file no run writes."""
    if is_temporary(relative):
        return "temporary"
    parts = relative.split("/")
    if len(parts) == 1:
        name = parts[0]
        if name == STATS_FILE:
            return "stats"
        if name == SUCCESS_FILE:
            return "success"
        stem, _, extension = name.partition(".")
        if stem.startswith(f"{SHARD_PREFIX}-") and extension in SHARD_EXTENSIONS and len(stem.split("-")) == 3:
            return "shard"
        return None
    if parts[0] == REPORT_DIR:
        return "report"
    if len(parts) == 2 and parts[0] == PARTITIONS_DIR and parts[1].endswith(".json"):
        return "manifest"
    if len(parts) == 2 and parts[0] in RECORD_DIRS and parts[1].endswith(".parquet"):
        return "record"
    return None


def output_root(relative_paths: Iterable[str]) -> set[str]:
    """The directories (relative, "" for the top) that are beam_curator outputs, among a recursive
    listing's paths relative to where it started: those holding a MARKERS entry or a job's temporary
    directory."""
    roots = set()
    for path in relative_paths:
        parts = path.split("/")
        for depth, part in enumerate(parts[:-1] if len(parts) > 1 else parts):
            if part in MARKERS or part.startswith(TEMP_DIR_PREFIX):
                roots.add("/".join(parts[:depth]))
                break
        else:
            if parts[-1] in MARKERS:
                roots.add("/".join(parts[:-1]))
    return roots
