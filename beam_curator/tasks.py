"""The data model carried between stages: NeMo Curator's task types, plus what lossless curation needs.

`ImageObject` keeps every field of NeMo Curator's (image_path, image_id, metadata, image_data,
embedding, aesthetic_score, nsfw_score) and adds the sample's WebDataset key, its original encoded
bytes and its companion members, so a writer can reproduce the input sample without loss.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from beam_curator.records import FailureRecord, FilterRecord

__all__ = [
    "BatchOrigin",
    "DocumentBatch",
    "FileGroupTask",
    "ImageBatch",
    "ImageObject",
    "PartitionInfo",
    "StagePerf",
    "Task",
]


@dataclass
class StagePerf:
    """One stage's work on one task: wall seconds spent, items handled, and what it counted.

    counts are the stage's own figures for this task (a curation stage: `in`, `kept`, `dropped`,
    `failed`; the reader: `samples_read`, `decoded`, `failed`, ...). They travel with the batch to the
    writer, which sums them into the job's `_stats.json`: counts are data, not metrics.
    """

    stage: str
    seconds: float
    items: int
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchOrigin:
    """Where an ImageBatch comes from, which the writer needs to pack and name its tars.

    partition: the index of the reader's input partition (a FileGroupTask).
    batch_index: the batch's place in its partition, from 0.
    last: True on the partition's last batch (the writer then closes the partition's last tar).
    source_files: the partition's shards; the output names digest them.
    """

    partition: int
    batch_index: int
    last: bool
    source_files: tuple[str, ...]


NEMO_SCORES = ("aesthetic_score", "nsfw_score")  # scores NeMo Curator keeps as ImageObject attributes


@dataclass(frozen=True)
class PartitionInfo:
    """Which input partition a FileGroupTask is: FilePartitioningStage makes these.

    index: the partition's number among the run's partitions (from 0).
    source_files: its shards, canonical (beam_curator.identity.canonical_path); output names digest them.
    metadata_files: for each source, the parquet beside it when the source is a shard of a beam_curator
      output (its rows give the samples' ids and columns, see beam_curator.identity), else None.
    """

    index: int
    source_files: tuple[str, ...]
    metadata_files: tuple[str | None, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.index, int) or self.index < 0:
            raise ValueError(f"a partition's index must be an integer >= 0, got {self.index!r}")
        if not self.source_files or not all(isinstance(path, str) and path for path in self.source_files):
            raise ValueError(f"a partition needs at least one source file path, got {self.source_files!r}")
        if not self.metadata_files:
            object.__setattr__(self, "metadata_files", (None,) * len(self.source_files))
        if len(self.metadata_files) != len(self.source_files):
            raise ValueError("metadata_files must have one entry (a parquet path or None) per source file")


@dataclass
class Task:
    """Base of every element that flows between stages."""

    task_id: str
    dataset_name: str
    data: Any = None
    _metadata: dict[str, Any] = field(default_factory=dict)
    _stage_perf: list[StagePerf] = field(default_factory=list)

    @property
    def num_items(self) -> int:
        return len(self.data) if self.data is not None else 0

    def add_stage_perf(self, stage: str, seconds: float, items: int, counts: dict[str, int] | None = None) -> None:
        self._stage_perf.append(StagePerf(stage=stage, seconds=float(seconds), items=int(items),
                                          counts=dict(counts or {})))

    def validate(self) -> bool:
        return True


@dataclass
class FileGroupTask(Task):
    """A group of files: the shards one reader call handles (with their `partition`, which the
    readers require), or the files of one tar a writer committed."""

    data: list[str] = field(default_factory=list)
    partition: PartitionInfo | None = None

    def validate(self) -> bool:
        return all(isinstance(path, str) and path for path in self.data)


@dataclass
class ImageObject:
    """One image sample.

    image_data is HxWx3 uint8 RGB, or None when no stage asked the reader for pixels (ImageReaderStage
    pixels=False; width and height are set all the same). The reader marks the arrays it decodes read-only and keeps a
    reference in `decoded_pixels`: while `image_data is decoded_pixels` the pixels are the ones decoded
    from `image_bytes`, so a writer can store the original bytes instead of re-encoding. A stage that
    changes pixels must build a new array (the decoded one cannot be written in place).
    """

    image_path: str = ""
    image_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    image_data: np.ndarray | None = None
    embedding: np.ndarray | None = None
    aesthetic_score: float | None = None
    nsfw_score: float | None = None
    # Lossless-curation additions.
    key: str = ""
    image_bytes: bytes | None = None
    image_format: str = ""  # the image member's extension in the source tar, e.g. "jpg"
    companions: dict[str, bytes] = field(default_factory=dict)  # extension -> raw member bytes
    width: int | None = None
    height: int | None = None
    # Scores a stage stored under a parquet column of its choosing (see ScoreImages); aesthetic_score
    # and nsfw_score keep NeMo Curator's attributes.
    scores: dict[str, float] = field(default_factory=dict)
    phash: int | None = None  # 64-bit perceptual hash as int64 (ImagePHashStage, curate --phash)
    sha256: str | None = None  # hex digest of image_bytes as read (the reader's; the parquet's sha256 column)
    decoded_pixels: np.ndarray | None = field(default=None, repr=False, compare=False)
    # The image as a model's input (CLIP's preprocessing, 3xHxW), made by the reader's DALI pipeline for
    # the embedding stage, which uses it up: a host array, or a row in GPU memory
    # (beam_curator.formats.model_input.DeviceRow, which crosses processes as a host array).
    model_input: Any = field(default=None, repr=False, compare=False)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickled arrays come back writeable; keep the decoded pixels protected across fusion breaks.
        self.__dict__.update(state)
        if self.decoded_pixels is not None:
            self.decoded_pixels.flags.writeable = False

    def score(self, column: str) -> float | None:
        """The score stored under a parquet column: aesthetic_score and nsfw_score are NeMo Curator's
        attributes, any other (clip_score, a stage's own) lives in `scores`."""
        return getattr(self, column) if column in NEMO_SCORES else self.scores.get(column)

    def with_score(self, column: str, value: float | None) -> ImageObject:
        """A copy with `value` stored under `column` (see score()); None leaves the image as it is. The
        one way stages store scores: a Beam input is never modified, and the copy shares the pixels."""
        if value is None:
            return self
        if column == "aesthetic_score":
            return replace(self, aesthetic_score=float(value))
        if column == "nsfw_score":
            return replace(self, nsfw_score=float(value))
        return replace(self, scores={**self.scores, column: float(value)})

    @property
    def caption(self) -> str | None:
        """The `.txt` companion as text, or None when the sample has none."""
        raw = self.companions.get("txt")
        return None if raw is None else raw.decode("utf-8", errors="replace")

    @property
    def pixels_unchanged(self) -> bool:
        """True when image_bytes still describe the image: no stage replaced image_data."""
        if self.image_bytes is None:
            return False
        return self.image_data is None or self.image_data is self.decoded_pixels

    def metadata_json(self) -> str:
        """metadata as JSON text (numpy values converted); what the parquet `metadata` column holds."""
        return json.dumps(self.metadata, sort_keys=True, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"metadata value of type {type(value).__name__} is not JSON serialisable: {value!r}")


@dataclass
class ImageBatch(Task):
    """A batch of ImageObjects.

    origin: where the batch comes from (set by ImageReaderStage; the writer needs it). A stage that
    builds a new batch keeps it with `batch.with_images(objects)`.
    records: FilterRecords and FailureRecords of images that stages after the reader dropped or
    failed; they travel with the batch and the writer emits them (see beam_curator.transforms.stages.kit).
    read_failures: the reader's FailureRecords of the batch's partition since its previous batch (the
    reader also emits them on its own output); the writer writes them with the partition's other
    records and counts them in its manifest, so a committed partition holds all its records.
    """

    data: list[ImageObject] = field(default_factory=list)
    origin: BatchOrigin | None = None
    records: list[FailureRecord | FilterRecord] = field(default_factory=list)
    read_failures: list[FailureRecord] = field(default_factory=list)

    def with_images(self, objects: list[ImageObject], *,
                    records: list[FailureRecord | FilterRecord] | None = None) -> ImageBatch:
        """A new batch of `objects` with this batch's id, origin, metadata, stage timings and records
        (plus `records`, if given): how a stage replaces, drops or splits images and stays writable."""
        return ImageBatch(
            task_id=self.task_id,
            dataset_name=self.dataset_name,
            data=list(objects),
            _metadata=dict(self._metadata),
            _stage_perf=list(self._stage_perf),
            origin=self.origin,
            records=[*self.records, *(records or [])],
            read_failures=list(self.read_failures),
        )

    def validate(self) -> bool:
        """Check ids are non-empty and unique and every image_data is HxWx3 uint8."""
        seen: set[str] = set()
        for obj in self.data:
            if not obj.image_id or obj.image_id in seen:
                return False
            seen.add(obj.image_id)
            pixels = obj.image_data
            if pixels is not None and (
                not isinstance(pixels, np.ndarray)
                or pixels.dtype != np.uint8
                or pixels.ndim != 3
                or pixels.shape[2] != 3
            ):
                return False
        return True


@dataclass
class DocumentBatch(Task):
    """A pandas DataFrame of rows, one per document."""

    data: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def num_items(self) -> int:
        return len(self.data)
