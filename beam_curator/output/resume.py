"""Resuming a killed `curate` run (`--resume`): which partitions it committed, and what it left of the rest.

A partition is committed when its manifest (beam_curator.output.manifest) exists and every file it lists is
there with the size it lists: the resumed run skips it before reading anything, and counts it from its
manifest. Every other file the earlier run left in the output (tars, indexes, parquets and records of
partitions it had not committed, a manifest whose files do not match, half-written temporary files)
is removed first; those partitions are written again, byte for byte what an uninterrupted run writes.
Sizes, not sha256, are compared: re-reading terabytes to resume would cost more than the run saved;
the sha256s in the manifests are there to verify an output at leisure.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from beam_curator import storage
from beam_curator.output.commit import records_digest
from beam_curator.output.layout import SHARD_PREFIX, name_digest, partition_hash
from beam_curator.output.manifest import PARTITIONS_DIR, PartitionManifest, manifest_path, merge_counts, read_manifests
from beam_curator.records import RECORD_DIRS
from beam_curator.tasks import FileGroupTask

__all__ = ["ResumePlan", "plan_resume"]

_LOG = logging.getLogger(__name__)


@dataclass
class ResumePlan:
    """skip: the indices of the partitions an earlier run committed; manifests: theirs; removed: the
    files of the earlier run that were removed because no committed partition holds them."""

    skip: set[int] = field(default_factory=set)
    manifests: list[PartitionManifest] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        """The committed partitions' counts, summed (beam_curator.output.manifest.merge_counts)."""
        return merge_counts(manifest.counts for manifest in self.manifests)

    def summary(self) -> dict[str, int]:
        """What `_stats.json` says of the skipped partitions (its `resumed` entry)."""
        counts = self.counts()
        read = sum(figures.get("samples_read", 0) for figures in counts["stages"].values())
        return {"partitions": len(self.manifests),
                "shards": sum(len(manifest.source_files) for manifest in self.manifests),
                "samples_read": int(read), "images_written": int(counts["written"])}


def _differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    return [f"{name}: {recorded.get(name)!r} then, {current.get(name)!r} now"
            for name in sorted(set(recorded) | set(current)) if recorded.get(name) != current.get(name)]


def _output_files(output_dir: str) -> dict[str, int]:
    """Every file of the output a run writes, with its size: shards, records, manifests, and the
    temporary files of atomic writes a kill interrupted."""
    patterns = [f"{SHARD_PREFIX}-*.{extension}" for extension in ("tar", "parquet", "idx")] + [".*.tmp-*"]
    for directory in (*RECORD_DIRS, PARTITIONS_DIR):
        patterns += [f"{directory}/*", f"{directory}/.*.tmp-*"]
    sizes: dict[str, int] = {}
    for pattern in patterns:
        sizes.update(storage.file_sizes(storage.join(output_dir, pattern)))
    return sizes


def _not_of_this_job(output_dir: str, sizes: Mapping[str, int], digests: set[str], records: set[str]) -> list[str]:
    """The shard and record files whose names carry a digest no partition of this run has (the
    half-written temporary files of atomic writes are this job's and are not counted)."""
    strangers = []
    for path in sorted(sizes):
        relative = path[len(output_dir.rstrip("/")) + 1:]
        if relative.rsplit("/", 1)[-1].startswith(".") or relative.startswith(f"{PARTITIONS_DIR}/"):
            continue  # temporary files; manifests were checked already
        if name_digest(relative) not in (records if relative.startswith(RECORD_DIRS) else digests):
            strangers.append(path)
    return strangers


def _sources(task: FileGroupTask) -> list[str]:
    return list(task._metadata.get("source_files", task.data))


def plan_resume(output_dir: str, partitions: Sequence[FileGroupTask], naming_options: Mapping[str, Any],
                job_options: Mapping[str, Any]) -> ResumePlan:
    """Find the partitions an earlier run into output_dir committed, and remove what it left of the
    others. naming_options: the writer's (PackingOptions.naming_options()); job_options: what this run
    records in its manifests. ValueError when the output is not an earlier run of this same job: a
    manifest of a partition this run does not have, or other options."""
    digests = {partition_hash(_sources(task), dict(naming_options), deterministic=True): index
               for index, task in enumerate(partitions)}
    manifests = read_manifests(output_dir)
    foreign = [manifest for manifest in manifests if manifest.partition not in digests]
    if foreign:
        raise ValueError(
            f"--resume: {output_dir} holds {len(foreign)} committed partition(s) that this run does not have (e.g. "
            f"the one of {', '.join(foreign[0].source_files)}; this run's first is of "
            f"{', '.join(_sources(partitions[0])) if partitions else 'nothing'}): "
            "resume with the inputs, --files-per-partition and writer options of the run that wrote it, or start "
            "again with --overwrite")
    for manifest in manifests:
        differences = _differences(manifest.options, job_options)
        if differences:
            raise ValueError(f"--resume: the run that committed {output_dir} had other options ("
                             f"{'; '.join(differences)}); resume with the same options, or start again with --overwrite")
    sizes = _output_files(output_dir)
    strangers = _not_of_this_job(output_dir, sizes, set(digests), {records_digest(_sources(task)) for task in partitions})
    if strangers:
        raise ValueError(
            f"--resume: {output_dir} holds {len(strangers)} file(s) that no partition of this run would write (e.g. "
            f"{strangers[0]}): written by a run with other inputs or options, random names or an older version; "
            "resume with the inputs and options of the run that wrote them, or start again with --overwrite")
    plan, keep = ResumePlan(), set()
    for manifest in manifests:
        wanted = {storage.join(output_dir, name): size for name, size in manifest.file_sizes().items()}
        wrong = [path for path, size in wanted.items() if sizes.get(path) != size]
        if wrong:
            _LOG.warning("partition %s (%s) is redone: %d of its files are missing or of another size than its "
                         "manifest says (e.g. %s)", manifest.partition, ", ".join(manifest.source_files), len(wrong),
                         wrong[0])
            continue
        plan.skip.add(digests[manifest.partition])
        plan.manifests.append(manifest)
        keep.update(wanted)
        keep.add(manifest_path(output_dir, manifest.partition))
    plan.removed = sorted(path for path in sizes if path not in keep)
    storage.delete_tree(plan.removed)
    _LOG.info("resume: %d of %d partition(s) were committed and are skipped; removed %d file(s) of the others",
              len(plan.skip), len(partitions), len(plan.removed))
    return plan
