"""FilePartitioningStage: PBegin -> FileGroupTask, listing shards through Beam's FileSystems."""

from __future__ import annotations

import logging
import os
import posixpath
from collections import Counter
from collections.abc import Sequence

import apache_beam as beam

from beam_curator import storage
from beam_curator.tasks import FileGroupTask

__all__ = ["FilePartitioningStage", "list_input_files"]

_LOG = logging.getLogger(__name__)


def _has_extension(path: str, extensions: Sequence[str]) -> bool:
    lowered = path.lower()
    return any(lowered.endswith(extension.lower()) for extension in extensions)


def list_input_files(file_paths: str | Sequence[str], file_extensions: Sequence[str]) -> list[str]:
    """Expand directories, globs and file names into a sorted, de-duplicated list of files.

    A directory lists every file below it whose name ends with one of `file_extensions`
    (case-insensitively); local paths come back absolute. A pattern that matches nothing is an error
    naming the pattern.
    """
    patterns = [file_paths] if isinstance(file_paths, str) else list(file_paths)
    if not patterns:
        raise ValueError("file_paths is empty: give a directory, a glob or a list of shard files")
    # Local paths made absolute: the output names digest the source paths, so `in/` and `/data/in/`
    # must name the same files alike (a resumed run finds its partitions whatever the working directory).
    patterns = [pattern if "://" in pattern else os.path.abspath(pattern) for pattern in patterns]
    found: set[str] = set()
    for pattern in patterns:
        if storage.has_glob(pattern) or _has_extension(pattern, file_extensions):
            matches = storage.match_files(pattern)
        else:  # a directory
            matches = storage.match_files(storage.join(pattern, "**"))  # recursive
        matches = [path for path in matches if _has_extension(path, file_extensions)]
        if not matches:
            raise FileNotFoundError(
                f"no input file matches {pattern!r} with extensions {list(file_extensions)}; "
                "check the path, or set file_extensions"
            )
        found.update(matches)
    return sorted(found)


def _common_directory(paths: Sequence[str]) -> str:
    """The deepest directory holding every path (works for URLs too: it splits on '/')."""
    common = paths[0].split("/")[:-1]
    for path in paths[1:]:
        parts = path.split("/")[:-1]
        size = 0
        while size < min(len(common), len(parts)) and common[size] == parts[size]:
            size += 1
        common = common[:size]
    return "/".join(common)


def _source_ids(paths: Sequence[str], root: str, extensions: Sequence[str]) -> dict[str, str]:
    """Short unique names for the inputs: the path below `root`, without its shard extension.

    Used in image ids. Where dropping the extension would make two inputs alike (`a.tar` and
    `a.tar.gz`), those keep their extension.
    """
    relative = {path: path[len(root) :].lstrip("/") for path in paths}
    stripped = {}
    for path, rel in relative.items():
        matched = [ext for ext in extensions if rel.lower().endswith(ext.lower())]
        stripped[path] = rel[: -len(max(matched, key=len))] if matched else rel
    counts = Counter(stripped.values())
    return {path: (stripped[path] if counts[stripped[path]] == 1 else relative[path]) for path in paths}


class FilePartitioningStage(beam.PTransform):
    """List WebDataset shards and group them into FileGroupTasks of `files_per_partition` files.

    Files are listed when the pipeline is built, on the launcher: a missing input fails before any
    work starts, and the partitions are the same on every run of the same input.
    """

    def __init__(
        self,
        file_paths: str | Sequence[str],
        files_per_partition: int = 1,
        file_extensions: Sequence[str] = (".tar",),
        *,
        name: str = "file_partitioning",
    ):
        super().__init__(label=None)
        if not isinstance(files_per_partition, int) or files_per_partition < 1:
            raise ValueError(f"files_per_partition must be a positive integer, got {files_per_partition!r}")
        if isinstance(file_extensions, str) or not file_extensions:
            raise ValueError(f"file_extensions must be a non-empty list like ['.tar'], got {file_extensions!r}")
        self.file_paths = file_paths
        self.files_per_partition = files_per_partition
        self.file_extensions = list(file_extensions)
        self.stage_name = name
        self._tasks: list[FileGroupTask] | None = None
        self._skipped: frozenset[int] = frozenset()

    def partitions(self) -> list[FileGroupTask]:
        """The FileGroupTasks this stage emits (listing the input once)."""
        if self._tasks is None:
            self._tasks = self._build_tasks()
        return self._tasks

    def skip(self, indices) -> FilePartitioningStage:
        """Emit every partition but those of these indices (what an earlier run committed: `curate
        --resume`); the others keep their indices and names."""
        self._skipped = frozenset(indices)
        return self

    def _build_tasks(self) -> list[FileGroupTask]:
        files = list_input_files(self.file_paths, self.file_extensions)
        root = _common_directory(files)
        source_ids = _source_ids(files, root, self.file_extensions)
        dataset_name = posixpath.basename(root.rstrip("/")) or "dataset"
        groups = [files[i : i + self.files_per_partition] for i in range(0, len(files), self.files_per_partition)]
        _LOG.info("found %d shard(s) under %s in %d partition(s)", len(files), root, len(groups))
        return [
            FileGroupTask(
                task_id=f"{self.stage_name}_{index:06d}",
                dataset_name=dataset_name,
                data=group,
                _metadata={
                    "partition_index": index,
                    "total_partitions": len(groups),
                    "source_files": group,
                    "source_ids": [source_ids[path] for path in group],
                },
            )
            for index, group in enumerate(groups)
        ]

    def expand(self, pbegin):
        # FileGroupTask; Create's Reshuffle spreads the partitions over the workers.
        tasks = [task for index, task in enumerate(self.partitions()) if index not in self._skipped]
        return pbegin | "CreatePartitions" >> beam.Create(tasks)

    def display_data(self):
        return {
            "file_paths": str(self.file_paths),
            "files_per_partition": self.files_per_partition,
            "file_extensions": str(self.file_extensions),
            "partitions_skipped": len(self._skipped),
        }
