"""The parquet metadata written beside each output tar: one typed row per image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from beam_curator.tasks import ImageObject

__all__ = ["METADATA_SCHEMA", "MetadataRow", "rows_to_table"]

METADATA_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),  # the sample's key in the output tar
        pa.field("original_key", pa.string(), nullable=False),  # its key in the source tar
        pa.field("tar_file", pa.string(), nullable=False),
        pa.field("member_name", pa.string(), nullable=False),  # the image member in tar_file
        pa.field("original_path", pa.string(), nullable=False),  # source shard and member
        pa.field("image_format", pa.string(), nullable=False),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("aesthetic_score", pa.float64()),
        pa.field("nsfw_score", pa.float64()),
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
    width: int | None
    height: int | None
    aesthetic_score: float | None
    nsfw_score: float | None
    embedding: list[float] | None
    caption: str | None
    metadata: str

    @classmethod
    def for_image(
        cls, obj: ImageObject, *, key: str, tar_file: str, member_name: str, image_format: str,
        width: int | None, height: int | None,
    ) -> "MetadataRow":
        embedding = None
        if obj.embedding is not None:
            embedding = np.asarray(obj.embedding, dtype=np.float32).ravel().tolist()
        return cls(
            image_id=obj.image_id,
            key=key,
            original_key=obj.key,
            tar_file=tar_file,
            member_name=member_name,
            original_path=obj.image_path,
            image_format=image_format,
            width=width,
            height=height,
            aesthetic_score=None if obj.aesthetic_score is None else float(obj.aesthetic_score),
            nsfw_score=None if obj.nsfw_score is None else float(obj.nsfw_score),
            embedding=embedding,
            caption=obj.caption,
            metadata=obj.metadata_json(),
        )


def rows_to_table(rows: Sequence[MetadataRow]) -> pa.Table:
    """A pyarrow Table in METADATA_SCHEMA, rows in the order given."""
    columns = {name: [getattr(row, name) for row in rows] for name in METADATA_SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=METADATA_SCHEMA)
