"""The records of samples that are not in the output: failed (could not be used) or filtered (a stage
dropped them on purpose). Nothing leaves the pipeline without one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

__all__ = [
    "FAILURE_SCHEMA",
    "FILTER_SCHEMA",
    "SCOPES",
    "FailureRecord",
    "FilterRecord",
    "failures_to_table",
    "filtered_to_table",
]

# sample: the sample is not in the output (no image, not decodable, over a limit).
# companion: one companion member was left out (bad UTF-8 caption, invalid JSON, over the size limit);
#   its image is in the output.
# member: a tar entry that is not a regular file (link, device) was skipped.
# shard: the shard could not be read to its end; the samples before the damage are in the output.
SCOPES = ("sample", "companion", "member", "shard")


@dataclass(frozen=True)
class FailureRecord:
    source: str  # the shard's path or URL
    member: str  # the tar member concerned; "" for the shard itself
    key: str  # the WebDataset key; "" for the shard itself
    stage: str  # the stage that failed it, e.g. "image_reader"
    scope: str  # one of SCOPES
    error_class: str
    message: str
    image_id: str = ""  # known once the sample is read whole (a stage's or the writer's failure); "" before


FAILURE_SCHEMA = pa.schema([(name, pa.string()) for name in FailureRecord.__dataclass_fields__])


def failures_to_table(records: Sequence[FailureRecord]) -> pa.Table:
    columns = {name: [getattr(record, name) for record in records] for name in FAILURE_SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=FAILURE_SCHEMA)


@dataclass(frozen=True)
class FilterRecord:
    """An image a curation stage dropped on purpose (a filter's verdict, not a failure)."""

    image_id: str
    key: str  # the WebDataset key in the source shard
    source: str  # the source shard's path or URL
    member: str  # the image member in the source shard
    stage: str  # the name of the stage that dropped it
    reason: str
    score: float | None = None  # the score the decision was made on, if any
    threshold: float | None = None  # the bar it was held against, if any
    thumbnail: bytes | None = None  # a small JPEG of the image (beam_curator.formats.thumbnails), for the report
    kept_id: str | None = None  # a removed duplicate: the image kept in its place
    method: str | None = None  # a removed duplicate: how it was found (exact, perceptual, semantic)


FILTER_SCHEMA = pa.schema(
    [(name, pa.string()) for name in ("image_id", "key", "source", "member", "stage", "reason")]
    + [("score", pa.float64()), ("threshold", pa.float64()), ("thumbnail", pa.binary()), ("kept_id", pa.string()),
       ("method", pa.string())]
)


def filtered_to_table(records: Sequence[FilterRecord]) -> pa.Table:
    columns = {name: [getattr(record, name) for record in records] for name in FILTER_SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=FILTER_SCHEMA)
