"""The owner of an output directory: what it holds, whether a run may write into it, and getting it
ready. The only module that deletes output files (layout.py names them).

A run into DIR is one of three modes:
- "new": DIR holds no output (no shard, manifest, record file, `_stats.json` or `_SUCCESS`); a run
  into a directory that does stops with OutputExistsError before anything is written.
- "overwrite": everything an earlier run wrote into DIR is removed before this run writes anything:
  shards, manifests, record files, `_stats.json`, `_SUCCESS`, the report. (Partitions are committed
  one by one, so the old output is not whole once the run starts anyway; and a killed overwrite can
  be resumed.) This is the one meaning of overwrite, for `curate --overwrite` and for
  `ImageWriterStage(overwrite=True)` alike.
- "resume": the partitions an earlier run committed (a manifest whose files are all there with their
  sizes) are kept; every other output file is removed (what the killed run left of the others).

check() answers before a job is built, on the launcher, from one listing; prepare() does the
removing, and runs as the writer's first step (in the job, so that building a pipeline never
deletes anything and a hand-built pipeline gets the same behaviour). It leaves a marker in the job's
own temporary directory: a runner that re-runs the whole job after a failure (Flink restarts a batch
job from the start when a TaskManager dies) finds it, and keeps what the job's first attempt committed
(committing a partition again is harmless, beam_curator.output.commit).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from beam_curator import storage
from beam_curator.output import layout

__all__ = ["MODES", "OutputExistsError", "OutputState", "check", "inspect", "prepare", "read_stats"]

_LOG = logging.getLogger(__name__)
MODES = ("new", "overwrite", "resume")
_OUTPUT_KINDS = ("shard", "manifest", "record", "stats", "success")
PREPARED_MARKER = "_prepared"  # in the job's temporary directory: prepare() ran for this job


class OutputExistsError(FileExistsError):
    """The output directory holds an earlier run's output and the run is neither an overwrite nor a resume."""


@dataclass
class OutputState:
    """One listing of an output directory: every file below it, with its size, by kind (layout.kind_of)."""

    path: str
    sizes: dict[str, int] = field(default_factory=dict)

    def relative(self, path: str) -> str:
        return path[len(self.path) + 1:]

    def of_kind(self, *kinds: str) -> list[str]:
        return sorted(path for path in self.sizes if layout.kind_of(self.relative(path)) in kinds)

    @property
    def output_files(self) -> list[str]:
        """What a run writes (shards, manifests, records, _stats.json, _SUCCESS)."""
        return self.of_kind(*_OUTPUT_KINDS)

    def describe(self) -> str:
        """What it holds, in a few words, e.g. "3 committed partition(s) (under _partitions/)"."""
        manifests, shards = self.of_kind("manifest"), self.of_kind("shard")
        if manifests:
            return f"{len(manifests)} committed partition(s) (under {layout.PARTITIONS_DIR}/)"
        if shards:
            return f"{len(shards)} shard file(s) of an earlier run (e.g. {shards[0]})"
        others = self.output_files
        return f"{len(others)} file(s) of an earlier run (e.g. {others[0]})" if others else "nothing"


def inspect(path: str) -> OutputState:
    """List the output directory once. NotADirectoryError when the path is an existing file."""
    path = path.rstrip("/")
    if "://" not in path and os.path.isfile(path):
        raise NotADirectoryError(f"the output {path} is a file; name a directory (it is created if missing)")
    return OutputState(path, storage.list_tree(path))


def check(state: OutputState, mode: str, *, overwrite_flag: str = "--overwrite",
          resume_flag: str = "--resume") -> None:
    """Whether a run of `mode` may write into the directory; OutputExistsError saying what to do when
    a "new" run finds an earlier one's output. The flags are how the caller's user spells the two other
    modes (`--overwrite` on the command line, `overwrite=True` in Python)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode != "new" or not state.output_files:
        return
    finish = f"finish that run with {resume_flag} (same inputs and options), " if state.of_kind("manifest") else ""
    raise OutputExistsError(f"{state.path} already holds {state.describe()}: {finish}replace it with {overwrite_flag}, "
                            "or choose another output directory")


def _resume_keep(state: OutputState) -> set[str]:
    """The files of the partitions an earlier run committed whole (their manifests included)."""
    from beam_curator.output.manifest import read_manifests

    keep: set[str] = set()
    for manifest in read_manifests(state.path):
        if not manifest.complete_in(state.path, state.sizes):
            keep.update(manifest.paths(state.path))
    return keep


def prepare(path: str, mode: str, *, own_temp_dir: str | None = None) -> list[str]:
    """Make the directory ready for a run of `mode` (see the module); the files removed. "new" checks
    again (another run may have written meanwhile). Never touches own_temp_dir (the running job's) nor
    the temporary directories of other jobs, which may be running (beam_curator.output.leftovers)."""
    state = inspect(path)
    marker = storage.join(own_temp_dir, PREPARED_MARKER) if own_temp_dir else None
    if marker and marker in state.sizes:
        _LOG.info("%s: prepared by an earlier attempt of this job; what it committed stays", path)
        return []
    check(state, mode)
    doomed = [] if mode == "new" else _doomed(state, mode, own_temp_dir)
    if doomed:
        _LOG.info("%s: removing %d file(s) an earlier run left in %s", mode, len(doomed), path)
        storage.delete_tree(doomed)
    if marker:  # not empty: an object store refuses an upload of no bytes
        storage.write_atomically(marker, f'{{"mode": "{mode}"}}\n'.encode())
    return doomed


def _doomed(state: OutputState, mode: str, own_temp_dir: str | None) -> list[str]:
    """What prepare() removes for an "overwrite" or a "resume" run."""
    if mode == "overwrite":
        doomed = state.of_kind(*_OUTPUT_KINDS, "report") + [
            p for p in state.of_kind("temporary") if not state.relative(p).startswith(layout.TEMP_DIR_PREFIX)]
    else:  # resume
        keep = _resume_keep(state)
        doomed = [p for p in state.of_kind("shard", "manifest", "record", "temporary")
                  if p not in keep and not state.relative(p).startswith(layout.TEMP_DIR_PREFIX)]
        doomed += state.of_kind("stats", "success")
    if own_temp_dir:
        doomed = [p for p in doomed if not p.startswith(own_temp_dir.rstrip("/") + "/")]
    return doomed


def read_stats(path: str):
    """The RunStats in `{path}/_stats.json`."""
    from beam_curator.output.stats import RunStats

    with storage.open_read(storage.join(path, layout.STATS_FILE)) as handle:
        return RunStats.from_json(handle.read().decode())
