"""File access through Beam's FileSystems, so local paths, gs:// and s3:// all work the same."""

from __future__ import annotations

import glob as _glob
import os
import posixpath
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_curator.output.layout import temporary_name

__all__ = ["create", "delete_tree", "file_sizes", "has_glob", "join", "list_tree", "match_files", "open_read",
           "rename_if_present", "rename_many", "write_atomically"]

RENAMES_PER_CALL = 100  # one FileSystems.rename call (a batch request on gs://)
RENAME_THREADS = 16


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


def file_sizes(pattern: str) -> dict[str, int]:
    """The files matching a glob, with their sizes in bytes (one listing, no request per file)."""
    (result,) = FileSystems.match([pattern])
    return {metadata.path: metadata.size_in_bytes for metadata in result.metadata_list}


def list_tree(directory: str) -> dict[str, int]:
    """Every file below directory, hidden ones included, with its size: one walk (local) or one
    listing of the prefix (object stores). Empty when there is no such directory."""
    if "://" in directory:
        return file_sizes(join(directory, "**"))
    sizes = {}
    for folder, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(folder, name)
            try:
                sizes[path] = os.path.getsize(path)
            except FileNotFoundError:  # removed meanwhile
                continue
    return sizes


def rename_if_present(source: str, destination: str) -> bool:
    """Rename source to destination; False when source is gone (an earlier finalize moved it)."""
    if not FileSystems.exists(source):
        if FileSystems.exists(destination):
            return False
        raise FileNotFoundError(f"neither {source} nor its final name {destination} exists")
    FileSystems.rename([source], [destination])
    return True


def write_atomically(path: str, data: bytes) -> str:
    """Write data to path all at once or not at all: to a temporary name of its own beside it (unique
    per call, so concurrent attempts never share one), then renamed over path. Readers see the old
    file or the new one, never a part. The one way this project writes a small file."""
    directory, name = posixpath.split(path)
    temporary = join(directory, temporary_name(name))
    with create(temporary) as handle:
        handle.write(data)
    if "://" in path and FileSystems.exists(path):
        FileSystems.delete([path])  # object stores' rename (copy + delete) does not replace
    FileSystems.rename([temporary], [path])
    return path


def rename_many(pairs: Sequence[tuple[str, str]]) -> int:
    """Rename (source, destination) pairs, in batches of RENAMES_PER_CALL on RENAME_THREADS threads;
    pairs whose source is gone and destination present (done by an earlier try) are skipped, so it
    can be repeated. The number renamed. A source and destination both missing is an error."""
    pairs = list(pairs)
    if not pairs:
        return 0
    present = _existing(source for source, _ in pairs)
    todo = [(source, destination) for source, destination in pairs if source in present]
    missing = [pair for pair in pairs if pair[0] not in present]
    if missing:
        done = _existing(destination for _, destination in missing)
        lost = [pair for pair in missing if pair[1] not in done]
        if lost:
            raise FileNotFoundError(f"neither {lost[0][0]} nor its final name {lost[0][1]} exists"
                                    + (f" (and {len(lost) - 1} more)" if len(lost) > 1 else ""))
    chunks = [todo[start:start + RENAMES_PER_CALL] for start in range(0, len(todo), RENAMES_PER_CALL)]
    with ThreadPoolExecutor(max_workers=min(RENAME_THREADS, max(1, len(chunks)))) as pool:
        for _ in pool.map(lambda chunk: FileSystems.rename([s for s, _ in chunk], [d for _, d in chunk]), chunks):
            pass
    return len(todo)


def _existing(paths: Iterable[str]) -> set[str]:
    """Which of paths exist, with one listing per directory rather than one request per file."""
    by_directory: dict[str, set[str]] = {}
    for path in paths:
        by_directory.setdefault(path.rsplit("/", 1)[0], set()).add(path)
    found: set[str] = set()
    for directory, wanted in by_directory.items():
        listed = set(match_files(join(directory, "*")))
        found |= wanted & listed
    return found


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
