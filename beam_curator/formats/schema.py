"""The parquet metadata written beside each output tar: one typed row per image.

The schema is open to scores: a stage that stores a score under a column of its own (ImageObject.scores,
see beam_curator.transforms.stages.kit.ScoreImages) gets a float64 column of that name after the fixed
ones, sorted by name, in every parquet whose images have it. Nothing here needs editing for it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from beam_curator.tasks import ImageObject

__all__ = ["METADATA_SCHEMA", "MetadataRow", "check_score_column", "rows_to_table"]

METADATA_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),  # see beam_curator.identity
        pa.field("key", pa.string(), nullable=False),  # the sample's key in the output tar
        pa.field("original_key", pa.string(), nullable=False),  # its key in the source tar
        pa.field("tar_file", pa.string(), nullable=False),
        pa.field("member_name", pa.string(), nullable=False),  # the image member in tar_file
        pa.field("original_path", pa.string(), nullable=False),  # source shard and member
        pa.field("image_format", pa.string(), nullable=False),
        pa.field("file_size", pa.int64()),  # bytes of the image member as written
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("sha256", pa.string()),  # hex digest of the original image bytes (exact dedup)
        pa.field("phash", pa.int64()),  # 64-bit perceptual hash, with --phash (beam_curator.dedup.algorithms)
        pa.field("aesthetic_score", pa.float64()),
        pa.field("nsfw_score", pa.float64()),
        pa.field("clip_score", pa.float64()),  # image-caption cosine (ImageTextSimilarityFilterStage)
        pa.field("embedding", pa.list_(pa.float32())),
        pa.field("caption", pa.string()),
        pa.field("metadata", pa.string()),  # JSON text
    ]
)


@dataclass
class MetadataRow:
    """The parquet row of one written image."""

    image_id: str
    key: str
    original_key: str
    tar_file: str
    member_name: str
    original_path: str
    image_format: str
    file_size: int | None
    width: int | None
    height: int | None
    sha256: str | None
    phash: int | None
    aesthetic_score: float | None
    nsfw_score: float | None
    clip_score: float | None
    embedding: list[float] | None
    caption: str | None
    metadata: str
    scores: dict[str, float] = field(default_factory=dict)

    @classmethod
    def for_image(
        cls, obj: ImageObject, *, key: str, tar_file: str, member_name: str, image_format: str,
        width: int | None, height: int | None, with_embedding: bool = True, file_size: int | None = None,
    ) -> MetadataRow:
        embedding = None
        if obj.embedding is not None and with_embedding:
            embedding = np.asarray(obj.embedding, dtype=np.float32).ravel().tolist()
        return cls(
            image_id=obj.image_id,
            key=key,
            original_key=obj.key,
            tar_file=tar_file,
            member_name=member_name,
            original_path=obj.image_path,
            image_format=image_format.lower(),  # `JPG` and `jpg` are one format (the member keeps its name)
            file_size=file_size,
            width=width,
            height=height,
            sha256=obj.sha256 or (None if obj.image_bytes is None else hashlib.sha256(obj.image_bytes).hexdigest()),
            phash=obj.phash,
            aesthetic_score=_float(obj.score("aesthetic_score")),
            nsfw_score=_float(obj.score("nsfw_score")),
            clip_score=_float(obj.score("clip_score")),
            embedding=embedding,
            caption=obj.caption,
            metadata=obj.metadata_json(),
            scores={name: None if value is None else float(value) for name, value in obj.scores.items()
                    if name not in METADATA_SCHEMA.names},
        )


def _float(value) -> float | None:
    return None if value is None else float(value)


# Score columns of the fixed schema: NeMo Curator's two (ImageObject attributes) and clip_score (kept in
# ImageObject.scores, like any other score, but always a column so that readers can rely on it).
SCORE_COLUMNS = ("aesthetic_score", "nsfw_score", "clip_score")


def check_score_column(column: str) -> str:
    """column, if a stage may store scores under it: a new name, or one of the fixed score columns
    (`aesthetic_score`, `nsfw_score`: kept on their ImageObject attributes; `clip_score`). ValueError
    otherwise."""
    if not isinstance(column, str) or not column.isidentifier():
        raise ValueError(f"a score column must be a name like 'sharpness', got {column!r}")
    if column in METADATA_SCHEMA.names and column not in SCORE_COLUMNS:
        raise ValueError(f"{column!r} is one of the parquet's fixed columns {METADATA_SCHEMA.names}; choose "
                         "another name for the score")
    return column


def rows_to_table(rows: Sequence[MetadataRow]) -> pa.Table:
    """A pyarrow Table in METADATA_SCHEMA plus a float64 column per score the rows carry (sorted by
    name; null where a row lacks it), rows in the order given."""
    columns = {name: [getattr(row, name) for row in rows] for name in METADATA_SCHEMA.names}
    schema = METADATA_SCHEMA
    for name in sorted({name for row in rows for name in row.scores}):
        columns[name] = [row.scores.get(name) for row in rows]
        schema = schema.append(pa.field(name, pa.float64()))
    return pa.Table.from_pydict(columns, schema=schema)
