"""Tar packing: the images of one input partition, in order, into tars of `images_per_tar` images.

The writer (beam_curator.transforms.io.image_writer) runs this in both of its modes: fused with the
reader, batch by batch as they arrive, or keyed, over a partition's batches gathered by a GroupByKey
and sorted. The same images in the same order give the same bytes under the same names, whichever
mode packed them. No Beam here: files go through beam_curator.storage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq

from beam_curator import storage
from beam_curator.formats.encoding import encode_jpeg
from beam_curator.formats.image_structure import image_format
from beam_curator.formats.schema import MetadataRow, rows_to_table
from beam_curator.formats.webdataset import TarShardWriter, safe_key
from beam_curator.output.layout import partition_hash, shard_basename
from beam_curator.tasks import ImageObject

__all__ = ["BatchOrderError", "PackingOptions", "PartitionPacker", "PreparedImage", "WrittenShard", "prepare_image"]

_LOG = logging.getLogger(__name__)
OUTPUT_FORMATS = (None, "jpg")  # None: every image member as it came (bytes pass through)


class BatchOrderError(RuntimeError):
    """A partition's batches did not arrive in order where the writer packs them as they come."""


@dataclass(frozen=True)
class PackingOptions:
    """The writer options that shape the bytes of the output."""

    images_per_tar: int = 1000
    jpeg_quality: int = 95
    force_reencode: bool = False
    output_format: str | None = None
    write_index: bool = False
    deterministic_name: bool = True
    write_embeddings: bool = True  # False: the parquet's embedding column stays null (stages still use them)

    def naming_options(self) -> dict:
        """What the deterministic `{hash}` of the names digests besides the source files."""
        options: dict[str, int | bool | str] = {"images_per_tar": self.images_per_tar,
                                                "jpeg_quality": self.jpeg_quality, "force_reencode": self.force_reencode}
        if self.output_format is not None:  # only then: the names of earlier outputs stay the same
            options["output_format"] = self.output_format
        return options


@dataclass
class PreparedImage:
    """An image as it will be written: its image member's extension and bytes, and its size."""

    obj: ImageObject
    extension: str
    payload: bytes
    height: int | None
    width: int | None

    def without_pixels(self) -> PreparedImage:
        """The same, with no decoded pixels: what may cross a shuffle (the bytes are all it needs)."""
        return dataclasses.replace(self, obj=dataclasses.replace(self.obj, image_data=None, decoded_pixels=None))


def _jpeg_extension(obj: ImageObject) -> str:
    return "jpeg" if "jpg" in obj.companions else "jpg"  # never collide with a companion named jpg


def prepare_image(obj: ImageObject, options: PackingOptions) -> PreparedImage:
    """The image member to write for obj: its original bytes while no stage changed its pixels (and
    the output format allows), else its pixels encoded as JPEG. ValueError or TypeError when it has
    nothing writable (the image then fails alone)."""
    if obj.image_bytes is not None and obj.pixels_unchanged and not options.force_reencode:
        if options.output_format is None:
            return PreparedImage(obj, obj.image_format, obj.image_bytes, obj.height, obj.width)
        if image_format(obj.image_bytes) == "jpeg":  # already what output_format asks: bytes pass through
            return PreparedImage(obj, _jpeg_extension(obj), obj.image_bytes, obj.height, obj.width)
    if obj.image_data is None:
        raise ValueError(f"image {obj.image_id!r} has neither pixels nor original bytes to write")
    pixels = obj.image_data
    if not isinstance(pixels, np.ndarray):
        raise TypeError(f"image_data of {obj.image_id!r} is a {type(pixels).__name__}, not a numpy array")
    payload = encode_jpeg(pixels, quality=options.jpeg_quality)
    return PreparedImage(obj, _jpeg_extension(obj), payload, int(pixels.shape[0]), int(pixels.shape[1]))


@dataclass
class WrittenShard:
    """A tar+parquet pair written under temporary names, to be committed (renamed) later.

    checksums: extension ("tar", "parquet", "idx") -> (size in bytes, sha256 hex), for the manifest.
    """

    basename: str
    temp_tar: str
    temp_parquet: str
    temp_index: str | None
    num_images: int
    partition_index: int
    dataset_name: str
    checksums: dict[str, tuple[int, str]] = field(default_factory=dict)


class _HashingWriter:
    """A write-only file that passes bytes on and keeps their size and sha256 (the tar's checksum
    without reading it back)."""

    def __init__(self, handle):
        self._handle = handle
        self._sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._sha256.update(data)
        self.size += len(data)
        return self._handle.write(data)

    def close(self) -> None:
        self._handle.close()

    def checksum(self) -> tuple[int, str]:
        return self.size, self._sha256.hexdigest()


def checksum(data: bytes) -> tuple[int, str]:
    return len(data), hashlib.sha256(data).hexdigest()


@dataclass
class _OpenShard:
    basename: str
    temp_tar: str
    handle: _HashingWriter
    writer: TarShardWriter
    rows: list[MetadataRow] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)


class PartitionPacker:
    """Packs one partition's images, in the order given, into tars under directory (temporary names).

    Every tar holds images_per_tar images but the partition's last; names are
    `images-{hash}-{index:06d}` with the hash from the source files and the options.
    """

    def __init__(self, partition: int, source_files: Sequence[str], dataset_name: str, options: PackingOptions,
                 directory: str):
        self.partition = partition
        self.dataset_name = dataset_name
        self._options = options
        self._directory = directory
        self.digest = partition_hash(list(source_files), options.naming_options(),
                                     deterministic=options.deterministic_name)
        self._next_shard = 0
        self._last_batch = -1
        self._shard: _OpenShard | None = None
        self.closed = False

    def start_batch(self, batch_index: int) -> None:
        """Batches must come in order, from the partition's first; the in-order guard of the fused writer."""
        if self._last_batch == -1 and batch_index != 0:
            raise BatchOrderError(
                f"batch {batch_index} of partition {self.partition} is the first of it to arrive here: its earlier "
                "batches went elsewhere (a Reshuffle or a stage not fused with the reader split the partition) or a "
                "stage dropped a batch element (never drop one: return it empty); use ImageWriterStage(mode='keyed'), "
                "which gathers each partition before packing it")
        if self.closed or batch_index <= self._last_batch:
            after = "the partition's last batch" if self.closed else f"batch {self._last_batch}"
            raise BatchOrderError(
                f"batch {batch_index} of partition {self.partition} arrived after {after}: something between "
                "ImageReaderStage and ImageWriterStage reorders or splits batches (a Reshuffle, a GroupByKey, "
                "a stage not fused with the reader); use ImageWriterStage(mode='keyed'), which gathers each "
                "partition before packing it")
        self._last_batch = batch_index

    def add(self, image: PreparedImage) -> WrittenShard | None:
        """Write one image; the finished tar's WrittenShard when this image filled it."""
        if self._shard is None:
            self._shard = self._open()
        self._write(self._shard, image)
        if len(self._shard.rows) == self._options.images_per_tar:
            return self._close()
        return None

    def finish(self) -> WrittenShard | None:
        """Close the partition's last tar (None if it is empty); no batch may follow."""
        self.closed = True
        return self._close() if self._shard is not None else None

    def _open(self) -> _OpenShard:
        basename = shard_basename(self.digest, self._next_shard)
        self._next_shard += 1
        temp_tar = storage.join(self._directory, f"{basename}.tar")
        handle = _HashingWriter(storage.create(temp_tar))
        return _OpenShard(basename=basename, temp_tar=temp_tar, handle=handle,
                          writer=TarShardWriter(handle))  # type: ignore[arg-type]  # write() is all it uses

    def _write(self, shard: _OpenShard, image: PreparedImage) -> None:
        obj = image.obj
        key = safe_key(obj.key or obj.image_id)
        if key in shard.keys:  # the same key from two source shards of one partition
            suffix = 1
            while f"{key}_{suffix}" in shard.keys:
                suffix += 1
            key = f"{key}_{suffix}"
        shard.keys.add(key)
        members = [(image.extension, image.payload), *sorted(obj.companions.items())]
        member_names = shard.writer.write_sample(key, members)
        shard.rows.append(
            MetadataRow.for_image(obj, key=key, tar_file=f"{shard.basename}.tar", member_name=member_names[0],
                                  image_format=image.extension, width=image.width, height=image.height,
                                  with_embedding=self._options.write_embeddings, file_size=len(image.payload)))

    def _close(self) -> WrittenShard:
        shard, self._shard = self._shard, None
        assert shard is not None  # callers close only an open shard
        shard.writer.close()
        shard.handle.close()
        checksums = {"tar": shard.handle.checksum()}
        temp_parquet = storage.join(self._directory, f"{shard.basename}.parquet")
        temp_index = None
        if self._options.write_index:
            temp_index = storage.join(self._directory, f"{shard.basename}.idx")
            index = shard.writer.index_text().encode()
            with storage.create(temp_index) as handle:
                handle.write(index)
            checksums["idx"] = checksum(index)
        buffer = io.BytesIO()
        pq.write_table(rows_to_table(shard.rows), buffer)
        with storage.create(temp_parquet) as handle:
            handle.write(buffer.getvalue())
        checksums["parquet"] = checksum(buffer.getvalue())
        _LOG.debug("wrote %d image(s) to %s", len(shard.rows), shard.temp_tar)
        return WrittenShard(basename=shard.basename, temp_tar=shard.temp_tar, temp_parquet=temp_parquet,
                            temp_index=temp_index, num_images=len(shard.rows), partition_index=self.partition,
                            dataset_name=self.dataset_name, checksums=checksums)
