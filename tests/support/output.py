"""Reading an output directory back in tests: every file's sha256, the images it holds, its rows, and
whether anything temporary was left. One place, so every test compares outputs the same way."""

from __future__ import annotations

import glob
import hashlib
import os
import tarfile

import pyarrow.parquet as pq

__all__ = ["digests", "image_digests", "rows", "temporary_files"]

RUN_FILES = ("_stats.json", "_SUCCESS")  # what a run writes about itself: times, its status


def digests(directory, *, run_files: bool = True, report: bool = True) -> dict[str, str]:
    """Every file below directory (hidden ones too), path relative to it -> the sha256 of its bytes.
    run_files=False leaves out _stats.json and _SUCCESS, report=False the report."""
    found = {}
    for folder, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, directory)
            if (not run_files and relative in RUN_FILES) or (not report and relative.startswith("_report")):
                continue
            with open(path, "rb") as handle:
                found[relative] = hashlib.sha256(handle.read()).hexdigest()
    return found


def image_digests(directory, extensions=("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")) -> list[str]:
    """The sha256 of every image member of the output's tars, sorted: what survived, by content."""
    found = []
    for path in sorted(glob.glob(os.path.join(str(directory), "images-*.tar"))):
        with tarfile.open(path) as archive:
            for member in archive.getmembers():
                if member.name.rsplit(".", 1)[-1].lower() in extensions:
                    found.append(hashlib.sha256(archive.extractfile(member).read()).hexdigest())
    return sorted(found)


def rows(directory, pattern: str = "images-*.parquet") -> list[dict]:
    """The rows of the output's parquet files matching pattern (default: the shards' metadata)."""
    files = sorted(glob.glob(os.path.join(str(directory), pattern)))
    return pq.read_table(files).to_pylist() if files else []


def temporary_files(directory) -> list[str]:
    """What a writer left half-done: `.beam_curator-temp-*` directories and `.{name}.tmp-*` files."""
    return [path for path in glob.glob(os.path.join(str(directory), "**", "*"), recursive=True)
            + glob.glob(os.path.join(str(directory), "**", ".*"), recursive=True)
            if ".beam_curator-temp-" in path or ".tmp-" in path]
