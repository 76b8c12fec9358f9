"""Resuming a killed `curate` run (`--resume`): which partitions it committed.

A partition is committed when its manifest (beam_curator.output.manifest) exists and every file it
lists is there with the size it lists: the resumed run skips it before reading anything, and counts it
from its manifest. Every other file the earlier run left in the output (tars, indexes, parquets and
records of partitions it had not committed, a manifest whose files do not match, half-written
temporary files) is removed when the job starts (beam_curator.output.directory.prepare, mode
"resume"); those partitions are written again, byte for byte what an uninterrupted run writes.
Sizes, not sha256, are compared: re-reading terabytes to resume would cost more than the run saved;
the sha256s in the manifests are there to verify an output at leisure. Planning reads; it removes
nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from beam_curator.errors import CLI, Spelling
from beam_curator.output.directory import OutputState
from beam_curator.output.layout import RECORD_DIRS, TEMP_DIR_PREFIX, name_digest, partition_hash, records_digest
from beam_curator.output.manifest import PartitionManifest, read_manifests
from beam_curator.output.stats import Counts
from beam_curator.tasks import FileGroupTask

__all__ = ["ResumePlan", "plan_resume"]

_LOG = logging.getLogger(__name__)


@dataclass
class ResumePlan:
    """skip: the indices of the partitions an earlier run committed; manifests: theirs; removed: the
    files of the earlier run that the job removes when it starts, because no committed partition holds
    them."""

    skip: set[int] = field(default_factory=set)
    manifests: list[PartitionManifest] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def counts(self) -> Counts:
        """The committed partitions' counts, summed."""
        return Counts.total(manifest.typed_counts() for manifest in self.manifests)

    def summary(self) -> dict[str, int]:
        """What `_stats.json` says of the skipped partitions (its `resumed` entry)."""
        counts = self.counts()
        read = sum(figures.get("samples_read", 0) for figures in counts.stages.values())
        return {"partitions": len(self.manifests),
                "shards": sum(len(manifest.source_files) for manifest in self.manifests),
                "samples_read": int(read), "images_written": int(counts.images_written)}


def _differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    return [f"{name}: {recorded.get(name)!r} then, {current.get(name)!r} now"
            for name in sorted(set(recorded) | set(current)) if recorded.get(name) != current.get(name)]


def _not_of_this_job(state: OutputState, digests: set[str], records: set[str]) -> list[str]:
    """The shard and record files whose names carry a digest no partition of this run has."""
    strangers = []
    for path in state.of_kind("shard", "record"):
        relative = state.relative(path)
        if name_digest(relative) not in (records if relative.startswith(RECORD_DIRS) else digests):
            strangers.append(path)
    return strangers


def _sources(task: FileGroupTask) -> list[str]:
    return list(task.partition.source_files if task.partition else task.data)


def plan_resume(state: OutputState, partitions: Sequence[FileGroupTask], naming_options: Mapping[str, Any],
                job_options: Mapping[str, Any], *, spell: Spelling = CLI) -> ResumePlan:
    """Find the partitions an earlier run into the output committed. naming_options: the writer's
    (PackingOptions.naming_options()); job_options: what this run records in its manifests. ValueError
    when the output is not an earlier run of this same job: a manifest of a partition this run does not
    have, other options, or files no partition of this run would write. spell: how the caller's user
    names an option (jobs.options.Spelling)."""
    output_dir = state.path
    resume, overwrite = spell("resume"), spell.setting("overwrite")
    digests = {partition_hash(_sources(task), dict(naming_options), deterministic=True): index
               for index, task in enumerate(partitions)}
    manifests = read_manifests(output_dir)
    foreign = [manifest for manifest in manifests if manifest.partition not in digests]
    if foreign:
        raise ValueError(
            f"{resume}: {output_dir} holds {len(foreign)} committed partition(s) that this run does not have (e.g. "
            f"the one of {', '.join(foreign[0].source_files)}; this run's first is of "
            f"{', '.join(_sources(partitions[0])) if partitions else 'nothing'}): "
            f"resume with the inputs, {spell('files_per_partition')} and writer options of the run that wrote it, or "
            f"start again with {overwrite}")
    for manifest in manifests:
        differences = _differences(manifest.options, job_options)
        if differences:
            raise ValueError(f"{resume}: the run that committed {output_dir} had other options ("
                             f"{'; '.join(differences)}); resume with the same options, or start again with "
                             f"{overwrite}")
    strangers = _not_of_this_job(state, set(digests), {records_digest(_sources(task)) for task in partitions})
    if strangers:
        raise ValueError(
            f"{resume}: {output_dir} holds {len(strangers)} file(s) that no partition of this run would write (e.g. "
            f"{strangers[0]}): written by a run with other inputs or options, random names or an older version; "
            f"resume with the inputs and options of the run that wrote them, or start again with {overwrite}")
    plan, keep = ResumePlan(), set()
    for manifest in manifests:
        wrong = manifest.complete_in(output_dir, state.sizes)
        if wrong:
            _LOG.warning("partition %s (%s) is redone: %d of its files are missing or of another size than its "
                         "manifest says (e.g. %s)", manifest.partition, ", ".join(manifest.source_files), len(wrong),
                         wrong[0])
            continue
        plan.skip.add(digests[manifest.partition])
        plan.manifests.append(manifest)
        keep.update(manifest.paths(output_dir))
    plan.removed = [path for path in state.of_kind("shard", "manifest", "record", "temporary", "stats", "success")
                    if path not in keep and not state.relative(path).startswith(TEMP_DIR_PREFIX)]
    _LOG.info("resume: %d of %d partition(s) were committed and are skipped; %d file(s) of the others are removed "
              "when the job starts", len(plan.skip), len(partitions), len(plan.removed))
    return plan
