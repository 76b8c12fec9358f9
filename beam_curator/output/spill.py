"""The keyed writer's spill: a batch's image bytes in a file of their own, so that its shuffle moves
only the rest.

In keyed mode (transforms/io/image_writer.py) a partition's batches are gathered by a GroupByKey. On
Flink a key's values leave each task as one record (its batch translation concatenates them before
the shuffle), and Flink's sorter refuses a record larger than its sort buffer: a partition of 412 MB
failed with "The record exceeds the maximum size of a sort buffer (current maximum: 103612416 bytes)"
on the cluster of engines/cluster.py, and common WebDataset shards are larger. A task's output is
also bounded there (about 1 GB, docs/DEPLOYMENT.md). So before the shuffle each batch's bytes (what
will be written, and the original bytes where they differ) go to one file under the job's temporary
directory, and the pack step reads them back: the images it packs are equal to the ones spilled.
The file's name is new for every call, so a retried bundle never writes over a file another attempt
handed on; the job's last step removes the temporary directory, spilled files with it.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from beam_curator import storage
from beam_curator.output.packing import PreparedImage

__all__ = ["SPILL_DIR", "Spilled", "restore", "spill"]

SPILL_DIR = "spill"  # in the job's temporary directory

_NO_ORIGINAL = -1  # the image had no original bytes
_SAME = -2  # its original bytes are what it writes


@dataclass
class Spilled:
    """Where a batch's bytes went: the file, and for each image (payload length, original length or a
    marker)."""

    path: str
    sizes: list[tuple[int, int]]


def spill(images: Sequence[PreparedImage], directory: str) -> tuple[list[PreparedImage], Spilled]:
    """Write the images' bytes to a new file under directory; the images without them, and where they went."""
    path = storage.join(directory, f"{uuid.uuid4().hex}.bin")
    stripped, sizes = [], []
    with storage.create(path) as handle:
        for image in images:
            original = image.obj.image_bytes
            handle.write(image.payload)
            if original is None:
                sizes.append((len(image.payload), _NO_ORIGINAL))
            elif original == image.payload:
                sizes.append((len(image.payload), _SAME))
            else:
                handle.write(original)
                sizes.append((len(image.payload), len(original)))
            stripped.append(dataclasses.replace(image, payload=b"", obj=dataclasses.replace(image.obj, image_bytes=None)))
    return stripped, Spilled(path, sizes)


def restore(images: Sequence[PreparedImage], spilled: Spilled) -> list[PreparedImage]:
    """The images as they were spilled, their bytes read back."""
    if len(images) != len(spilled.sizes):
        raise ValueError(f"{spilled.path}: {len(spilled.sizes)} spilled image(s), {len(images)} given")
    with storage.open_read(spilled.path) as handle:
        data = handle.read()
    restored, offset = [], 0
    for image, (payload_size, original_size) in zip(images, spilled.sizes):
        payload = data[offset:offset + payload_size]
        offset += payload_size
        if original_size == _SAME:
            original: bytes | None = payload
        elif original_size == _NO_ORIGINAL:
            original = None
        else:
            original = data[offset:offset + original_size]
            offset += original_size
        restored.append(dataclasses.replace(image, payload=payload, obj=dataclasses.replace(image.obj, image_bytes=original)))
    if offset != len(data):
        raise ValueError(f"{spilled.path}: {len(data)} bytes, {offset} expected: the file is not what was spilled")
    return restored
