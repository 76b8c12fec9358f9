"""File access through Beam's FileSystems, so local paths, gs:// and s3:// all work the same."""

from __future__ import annotations

import glob as _glob
from collections.abc import Iterable
from typing import BinaryIO

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

__all__ = ["create", "delete_tree", "has_glob", "join", "match_files", "open_read", "rename_if_present"]


def has_glob(path: str) -> bool:
    return _glob.has_magic(path)


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base.rstrip("/"), *parts)


def open_read(path: str) -> BinaryIO:
    """A streaming reader; `.gz`/`.bz2`/... are decompressed by Beam on the fly."""
    return FileSystems.open(path)


def create(path: str) -> BinaryIO:
    """A writer for `path`, never compressed whatever its name."""
    return FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)


def match_files(pattern: str) -> list[str]:
    """The files matching a glob, sorted; an empty list when none do."""
    (result,) = FileSystems.match([pattern])
    return sorted(metadata.path for metadata in result.metadata_list)


def rename_if_present(source: str, destination: str) -> bool:
    """Rename source to destination; False when source is gone (an earlier finalize moved it)."""
    if not FileSystems.exists(source):
        if FileSystems.exists(destination):
            return False
        raise FileNotFoundError(f"neither {source} nor its final name {destination} exists")
    FileSystems.rename([source], [destination])
    return True


def delete_tree(paths: Iterable[str]) -> None:
    """Delete files or directories that exist; missing ones are ignored. On object stores (gs://,
    s3://) a directory is a prefix with no object of its own: it is deleted as `path/`, recursively."""
    present = []
    for path in paths:
        if FileSystems.exists(path):
            present.append(path)
        elif match_files(f"{path.rstrip('/')}/**"):
            present.append(f"{path.rstrip('/')}/")
    if present:
        FileSystems.delete(present)
