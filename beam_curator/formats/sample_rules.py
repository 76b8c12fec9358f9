"""Sample rules: what the readers make of each sample of a shard, as plain functions (no Beam).

A sample becomes an ImageObject ready to decode, or a FailureRecord saying why it cannot be used;
each companion that is not valid is left out with a record of its own. A sample of a raw shard gets
its id from its provenance (beam_curator.identity); a sample of a beam_curator output keeps the id and
columns of its parquet row (curated_rows, with_row). is_shard_damage says which errors while reading a
shard are the shard's own fault (a record) and which must be retried.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from beam_curator import storage
from beam_curator.formats.decoding import ImageDecodeError, probe_size
from beam_curator.formats.schema import METADATA_SCHEMA
from beam_curator.formats.webdataset import RawSample, split_member_name
from beam_curator.identity import image_id
from beam_curator.records import FailureRecord
from beam_curator.tasks import ImageObject

__all__ = ["SampleRules", "curated_rows", "is_shard_damage", "with_row"]


_DAMAGE = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile, FileNotFoundError,
           IsADirectoryError, NotADirectoryError)


def is_shard_damage(error: BaseException) -> bool:
    """True when reading a shard failed because of the shard itself (a broken tar or compressed
    stream, or no such file), which no retry can fix; False for anything else (a dropped connection, a
    timeout, a bug), which must fail the bundle so that Beam retries it."""
    if isinstance(error, _DAMAGE):
        return True
    if type(error) is OSError and error.errno is None:  # bz2 "Invalid data stream" and the like
        return True
    return getattr(error, "code", None) == 404  # object stores' "not found" (Beam's S3 client)


def _too_large(size: int, max_member_bytes: int) -> tuple[str, str]:
    return "MemberTooLarge", f"{size} bytes is over max_member_bytes={max_member_bytes}"


def _check_companions(sample: RawSample, max_member_bytes: int):
    """(extension, None) for each companion that is fine, (extension, (error_class, message)) otherwise.

    Captions (`txt`) must be UTF-8 and `json` must parse; anything else is carried as bytes, never
    unpickled or executed.
    """
    for extension in sorted(sample.oversized):
        yield extension, _too_large(sample.oversized[extension], max_member_bytes)
    for extension, payload in sorted(sample.members.items()):
        kind = extension.rpartition(".")[2].lower()
        try:
            if kind == "txt":
                payload.decode("utf-8")
            elif kind == "json":
                json.loads(payload)
        except ValueError as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            yield extension, (type(error).__name__, str(error)[:300])
            continue
        yield extension, None


def _metadata_from_json(companions: dict[str, bytes]) -> dict:
    """The `.json` companion's object (img2dataset writes url, caption, sizes, sha256 there) as the
    image's metadata; {} when there is none or it holds something else. The member itself is still
    written back byte for byte."""
    raw = next((payload for extension, payload in companions.items() if extension.lower() == "json"), None)
    if raw is None:
        return {}
    value = json.loads(raw)  # parses: _check_companions left out any that did not
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class SampleRules:
    """The reader's limits, and the rules that turn a RawSample into an ImageObject or records."""

    stage: str
    max_image_pixels: int
    max_member_bytes: int

    def record(self, url, member, key, scope, error_class, message) -> FailureRecord:
        return FailureRecord(source=url, member=member, key=key, stage=self.stage, scope=scope,
                             error_class=error_class, message=str(message))

    def to_image(self, url: str, sample: RawSample, seen_keys: dict[str, int]) -> Iterator[ImageObject | FailureRecord]:
        """The sample's ImageObject ready to decode, or its failure; plus failures of its companions.
        url: the shard's canonical path (its samples' ids digest it)."""
        occurrence = seen_keys.get(sample.key, 0)
        seen_keys[sample.key] = occurrence + 1
        extension = sample.image_extension()
        member = sample.member_names.get(extension, "") if extension else ""
        if extension is None:
            listed = sorted(sample.member_names.values())
            if occurrence:
                reason = f"members {listed} are not adjacent to the earlier members of key {sample.key!r}"
                yield self.record(url, listed[0], sample.key, "sample", "NonAdjacentMembers", reason)
            else:
                yield self.record(url, listed[0] if listed else "", sample.key, "sample", "NoImageMember",
                                   f"no image member among {listed}")
            return
        if extension in sample.oversized:
            yield self.record(url, member, sample.key, "sample",
                              *_too_large(sample.oversized[extension], self.max_member_bytes))
            return
        image_bytes = sample.members.pop(extension)
        if not image_bytes:
            yield self.record(url, member, sample.key, "sample", "EmptyImage", "the image member is empty")
            return
        try:
            size = probe_size(image_bytes)
        except ImageDecodeError as error:  # Pillow's own bomb check fired: far over any sane limit
            yield self.record(url, member, sample.key, "sample", "ImageTooLarge",
                              f"over max_image_pixels={self.max_image_pixels}: {error}")
            return
        if size is not None and size[0] * size[1] > self.max_image_pixels:
            yield self.record(url, member, sample.key, "sample", "ImageTooLarge",
                              f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels is over "
                               f"max_image_pixels={self.max_image_pixels}")
            return
        companions = {}
        for companion, problem in _check_companions(sample, self.max_member_bytes):
            if problem is None:
                companions[companion] = sample.members[companion]
            else:
                yield self.record(url, sample.member_names[companion], sample.key, "companion", *problem)
        content = hashlib.sha256(image_bytes).hexdigest()
        yield ImageObject(
            image_path=f"{url}#{member}",
            image_id=image_id(url, sample.key, occurrence, content),
            key=sample.key,
            image_bytes=image_bytes,
            image_format=extension,
            companions=companions,
            metadata=_metadata_from_json(companions),
            sha256=content,
        )


def curated_rows(parquet: str) -> dict[str, dict[str, Any]]:
    """The rows of a beam_curator output's parquet, by their sample's key in the tar beside it.
    ValueError when the file is not such a parquet."""
    import pyarrow.parquet as pq

    with storage.open_read(parquet) as handle:
        table = pq.read_table(handle)
    missing = [name for name in ("image_id", "key", "original_key", "original_path", "member_name")
               if name not in table.column_names]
    if missing:
        raise ValueError(f"{parquet} is not the metadata of a beam_curator output: it has no {', '.join(missing)} column")
    return {row["key"]: row for row in table.to_pylist()}


def with_row(obj: ImageObject, row: dict[str, Any]) -> ImageObject:
    """obj (read from a shard of a beam_curator output) with the identity and columns of its parquet
    row: its id, original key and path, sha256 of the original bytes, metadata, embedding, scores and
    phash, as the earlier run wrote them."""
    scores = {name: value for name, value in row.items() if name not in METADATA_SCHEMA.names and value is not None}
    if row.get("clip_score") is not None:
        scores["clip_score"] = row["clip_score"]
    return replace(
        obj, image_id=row["image_id"], image_path=row["original_path"], key=row["original_key"],
        metadata=json.loads(row.get("metadata") or "{}"),
        embedding=None if row.get("embedding") is None else np.asarray(row["embedding"], dtype=np.float32),
        aesthetic_score=row.get("aesthetic_score"), nsfw_score=row.get("nsfw_score"), scores=scores,
        phash=row.get("phash"), sha256=row.get("sha256") or obj.sha256,
        width=row.get("width"), height=row.get("height"))


def member_extension(row: dict[str, Any]) -> str:
    """The image member's extension a parquet row names."""
    return split_member_name(row["member_name"])[1]
