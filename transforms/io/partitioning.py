"""FilePartitioningStage: PBegin -> FileGroupTask, listing shards through Beam's FileSystems.

What an input names is read; what a beam_curator output holds is read only when that output is itself
an input. Listing a directory (or the fixed part of a glob) skips every beam_curator output below it
(a directory holding `_partitions/`, `_stats.json`, ...: output.layout.MARKERS), and the run's own
output always: an output written inside its input is never read back by the next run. A shard of a
beam_curator output that is read (the output given as an input, or its shards named) comes with the
parquet beside it, whose rows give its samples' ids (beam_curator.identity).
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field

import apache_beam as beam

from beam_curator import storage
from beam_curator.identity import canonical_path
from beam_curator.output import layout
from beam_curator.tasks import FileGroupTask, PartitionInfo

__all__ = ["FilePartitioningStage", "InputListing", "list_input_files", "list_inputs"]

_LOG = logging.getLogger(__name__)


def _has_extension(path: str, extensions: Sequence[str]) -> bool:
    lowered = path.lower()
    return any(lowered.endswith(extension.lower()) for extension in extensions)


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _static_prefix(pattern: str) -> str:
    """The directory part of a glob before its first wildcard."""
    parts = pattern.split("/")
    for index, part in enumerate(parts):
        if storage.has_glob(part):
            return "/".join(parts[:index])
    return posixpath.dirname(pattern)


@dataclass
class InputListing:
    """What the inputs name: files (sorted, canonical), the parquet beside each shard of a beam_curator
    output (its ids are read from there), and what was left out because it is a beam_curator output."""

    files: list[str]
    metadata: dict[str, str] = field(default_factory=dict)
    skipped_files: int = 0
    skipped_outputs: list[str] = field(default_factory=list)


def _output_roots_of(directories: set[str]) -> set[str]:
    """Which of these directories are beam_curator outputs (one small listing each)."""
    roots = set()
    for directory in directories:
        names = [path.rsplit("/", 1)[-1] for path in storage.match_files(storage.join(directory, "_*"))]
        nested = storage.match_files(storage.join(directory, layout.PARTITIONS_DIR, "*"))
        if nested or any(name in layout.MARKERS for name in names):
            roots.add(directory)
    return roots


def list_inputs(file_paths: str | Sequence[str], file_extensions: Sequence[str], *,
                exclude: Sequence[str] = ()) -> InputListing:
    """Expand directories, globs and file names into the shards to read (see the module).

    exclude: directories never read (the run's output); an input inside one is a ValueError. A pattern
    that matches nothing is a FileNotFoundError naming the pattern.
    """
    patterns = [file_paths] if isinstance(file_paths, str) else list(file_paths)
    if not patterns:
        raise ValueError("file_paths is empty: give a directory, a glob or a list of shard files")
    excluded = [canonical_path(path).rstrip("/") for path in exclude]
    listing = InputListing(files=[])
    found: set[str] = set()
    for given in patterns:
        # Canonical: the output names and image ids digest the source paths, so `in/` and `/data/in/`
        # must name the same files alike (and a resumed run find its partitions) whatever the spelling.
        pattern = canonical_path(given).rstrip("/") if not storage.has_glob(given) else canonical_path(given)
        inside = next((out for out in excluded if _inside(pattern if not storage.has_glob(pattern)
                                                             else _static_prefix(pattern), out)), None)
        if inside is not None:
            raise ValueError(f"the input {given} is inside the output directory {inside}: a run never reads "
                             "what it writes; write to another directory")
        if storage.has_glob(pattern) or _has_extension(pattern, file_extensions):
            root = _static_prefix(pattern)
            sizes = {path: 0 for path in storage.match_files(pattern)}
            candidates = {posixpath.dirname(path) for path in sizes}
            outputs = _output_roots_of(candidates)
            if not storage.has_glob(pattern):
                outputs.discard(posixpath.dirname(pattern))  # a shard named by the user is read
                root = posixpath.dirname(pattern)
        else:  # a directory, listed recursively
            root = pattern
            sizes = storage.list_tree(pattern)
            relative = [path[len(pattern) + 1:] for path in sizes]
            outputs = {storage.join(pattern, sub) if sub else pattern for sub in layout.output_root(relative)}
        matches = sorted(path for path in sizes if _has_extension(path, file_extensions))
        for path in matches:
            holder = next((out for out in excluded if _inside(path, out)), None) or next(
                (out for out in sorted(outputs) if out != root and _inside(path, out)), None)
            if holder is None and f"/{layout.TEMP_DIR_PREFIX}" in path:  # a running or killed job's files
                holder = path.split(f"/{layout.TEMP_DIR_PREFIX}", 1)[0]
            if holder is not None:
                listing.skipped_files += 1
                if holder not in listing.skipped_outputs:
                    listing.skipped_outputs.append(holder)
                continue
            found.add(path)
            twin = path[: -len(".tar")] + ".parquet" if path.endswith(".tar") else None
            in_output = any(_inside(path, out) for out in outputs)
            if twin and in_output and layout.kind_of(posixpath.basename(path)) == "shard" and (
                    twin in sizes or storage.match_files(twin)):
                listing.metadata[path] = twin
        if not matches:
            raise FileNotFoundError(
                f"no input file matches {given!r} with extensions {list(file_extensions)}; check the path, "
                "or the file extensions (--file-extensions, file_extensions=)")
    listing.files = sorted(found)
    if not listing.files:
        raise FileNotFoundError(
            f"every shard under {', '.join(patterns)} is inside a beam_curator output "
            f"({', '.join(listing.skipped_outputs[:3])}), which is read only when given as an input itself")
    return listing


def list_input_files(file_paths: str | Sequence[str], file_extensions: Sequence[str]) -> list[str]:
    """The shard files list_inputs finds (without the parquet of curated ones)."""
    return list_inputs(file_paths, file_extensions).files


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


class FilePartitioningStage(beam.PTransform):
    """List WebDataset shards and group them into FileGroupTasks of `files_per_partition` files, each
    with its PartitionInfo (index, source files, the parquet of curated ones).

    Files are listed when the pipeline is built, on the launcher: a missing input fails before any
    work starts, and the partitions are the same on every run of the same input. exclude: directories
    never read, such as the run's output (see the module).
    """

    def __init__(
        self,
        file_paths: str | Sequence[str],
        files_per_partition: int = 1,
        file_extensions: Sequence[str] = (".tar",),
        *,
        name: str = "file_partitioning",
        exclude: Sequence[str] = (),
    ):
        super().__init__(label=None)
        if not isinstance(files_per_partition, int) or isinstance(files_per_partition, bool) or files_per_partition < 1:
            raise ValueError(f"files_per_partition must be a positive integer, got {files_per_partition!r}")
        if isinstance(file_extensions, str) or not file_extensions:
            raise ValueError(f"file_extensions must be a non-empty list like ['.tar'], got {file_extensions!r}")
        self.file_paths = file_paths
        self.files_per_partition = files_per_partition
        self.file_extensions = list(file_extensions)
        self.exclude = list(exclude)
        self.stage_name = name
        self._tasks: list[FileGroupTask] | None = None
        self._skipped: frozenset[int] = frozenset()
        self.listing: InputListing | None = None

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
        self.listing = listing = list_inputs(self.file_paths, self.file_extensions, exclude=self.exclude)
        files = listing.files
        root = _common_directory(files)
        dataset_name = posixpath.basename(root.rstrip("/")) or "dataset"
        groups = [files[i : i + self.files_per_partition] for i in range(0, len(files), self.files_per_partition)]
        _LOG.info("found %d shard(s) under %s in %d partition(s)", len(files), root, len(groups))
        if listing.skipped_files:
            _LOG.info("left out %d file(s) of %d beam_curator output(s) inside the inputs (e.g. %s): an output is "
                      "read only when given as an input itself", listing.skipped_files, len(listing.skipped_outputs),
                      listing.skipped_outputs[0])
        return [
            FileGroupTask(
                task_id=f"{self.stage_name}_{index:06d}",
                dataset_name=dataset_name,
                data=group,
                partition=PartitionInfo(index=index, source_files=tuple(group),
                                        metadata_files=tuple(listing.metadata.get(path) for path in group)),
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
