"""What a run did, counted as data, in one vocabulary: the Counts of each partition (which its manifest
records and the writer emits with its commit), their sum, and the RunStats the job writes to
`DIR/_stats.json` from that sum as its last step.

Every sample read ends up written, failed or filtered, and each term is counted directly: samples
read by the reader's own count, written from the committed tars, failed and filtered from the records
themselves. An image lost without a record therefore shows as a mismatch, never as "filtered".

The names are the same everywhere: a stage's own counts (the reader's `samples_read`, `shards_read`,
`images_decoded`, `images_decoded_by_pillow`, `{scope}s_failed`; a curation stage's `in`, `kept`,
`dropped`, `failed`; the writer's `in`, `written`, `failed`) are the names of its Beam metrics too, and
the run's totals are RunStats' fields.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from beam_curator.output.layout import STATS_FILE
from beam_curator.records import FailureRecord, FilterRecord
from beam_curator.tasks import StagePerf

__all__ = ["STATS_FILE", "Counts", "RunStats", "Timings", "utc", "write_success"]

# Figures only the readers count; summed over the stages that report them.
READER_COUNTS = ("samples_read", "images_decoded", "shards_read", "images_decoded_by_pillow")


def _add_into(into: dict, other: Mapping) -> None:
    for name, value in other.items():
        if isinstance(value, Mapping):
            _add_into(into.setdefault(name, {}), value)
        else:
            into[name] = into.get(name, 0) + value


def _sorted(values: Mapping) -> dict:
    return {name: _sorted(value) if isinstance(value, Mapping) else value for name, value in sorted(values.items())}


@dataclass
class Counts:
    """A partition's counts, or the sum of several: the one reduction of the run's figures.

    stages: each stage's own integer counts (see the module), without timings.
    images_written, tars_written: in the partition's committed tars.
    failed_by_scope: failure records by scope (sample, companion, member, shard).
    failed_by_stage: sample failure records by the stage that failed them.
    filtered_by_stage: filter records by the stage that dropped them.
    """

    stages: dict[str, dict[str, int]] = field(default_factory=dict)
    images_written: int = 0
    tars_written: int = 0
    failed_by_scope: dict[str, int] = field(default_factory=dict)
    failed_by_stage: dict[str, int] = field(default_factory=dict)
    filtered_by_stage: dict[str, int] = field(default_factory=dict)

    def add_perfs(self, perfs: Iterable[StagePerf]) -> None:
        """Add the stages' own counts (never their timings: a manifest must not depend on time)."""
        for perf in perfs:
            _add_into(self.stages.setdefault(perf.stage, {}), {name: int(value) for name, value in perf.counts.items()})

    def add_records(self, records: Iterable[FailureRecord | FilterRecord]) -> None:
        for record in records:
            if isinstance(record, FilterRecord):
                _add_into(self.filtered_by_stage, {record.stage: 1})
                continue
            _add_into(self.failed_by_scope, {record.scope: 1})
            if record.scope == "sample":
                _add_into(self.failed_by_stage, {record.stage: 1})

    def add_written(self, images: int, tars: int) -> None:
        self.images_written += int(images)
        self.tars_written += int(tars)

    def add(self, other: Counts) -> Counts:
        """This plus other, figure by figure (in place; returns self)."""
        merged = self.to_dict()
        _add_into(merged, other.to_dict())
        self.__dict__.update(Counts.from_dict(merged).__dict__)
        return self

    @classmethod
    def total(cls, parts: Iterable[Counts]) -> Counts:
        result = cls()
        for part in parts:
            result.add(part)
        return result

    def to_dict(self) -> dict[str, Any]:
        return _sorted(asdict(self))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Counts:
        return cls(**{name: values[name] for name in cls.__dataclass_fields__ if name in values})


class Timings(dict):
    """Per stage: {"seconds": wall seconds, "batches": batches} (what _stats.json adds to the counts)."""

    def add_perfs(self, perfs: Iterable[StagePerf]) -> Timings:
        for perf in perfs:
            entry = self.setdefault(perf.stage, {"seconds": 0.0, "batches": 0})
            entry["seconds"] += perf.seconds
            entry["batches"] += 1
        return self

    def add(self, other: Mapping[str, Mapping[str, float]]) -> Timings:
        _add_into(self, other)
        return self


@dataclass
class RunStats:
    """What a curate run did; the job writes it to DIR/_stats.json and the CLI prints it.

    samples_read == images_written + images_failed + images_filtered, every term counted directly.
    """

    shards: int
    shards_read: int
    shards_failed: int  # damaged shards; their samples before the damage are counted as usual
    samples_read: int
    images_decoded: int
    images_failed: int  # sample failure records: not decodable, over a limit, failed by a stage, ...
    images_filtered: int  # filter records: dropped on purpose by a curation stage
    images_written: int  # images in committed tars
    companions_failed: int  # companions left out (their images are written)
    members_failed: int  # link and device entries skipped
    tars_written: int
    seconds: float
    images_per_second: float
    images_decoded_by_pillow: int = 0  # DALI refused them, or their structure kept them from DALI
    stages: dict[str, dict[str, float]] = field(default_factory=dict)  # per stage: seconds, batches, counts
    filtered_by_stage: dict[str, int] = field(default_factory=dict)
    failed_by_stage: dict[str, int] = field(default_factory=dict)
    started: str = ""  # ISO 8601, UTC
    finished: str = ""
    version: str = ""
    inputs: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    # With --resume: what an earlier run had committed, which this run skipped and counts from its
    # manifests (partitions, shards, samples_read, images_written); every other figure covers both runs.
    resumed: dict[str, int] = field(default_factory=dict)
    status: str = "succeeded"  # or "failed": then reason says why, and the output has no _SUCCESS
    reason: str = ""
    report: str = ""  # the run report's path, when the job wrote one

    @property
    def reconciles(self) -> bool:
        return self.samples_read == self.images_written + self.images_failed + self.images_filtered

    def summary(self) -> str:
        return (
            f"shards: {self.shards_read}/{self.shards} ({self.shards_failed} damaged)  "
            f"images read: {self.samples_read}  decoded: {self.images_decoded}  failed: {self.images_failed}  "
            f"filtered: {self.images_filtered}  written: {self.images_written}  tars: {self.tars_written}  "
            f"seconds: {self.seconds:.1f}  images/s: {self.images_per_second:.1f}"
        )

    def resumed_line(self) -> str | None:
        """`resumed: ...` on a resumed run, else None."""
        if not self.resumed:
            return None
        return (f"resumed: {self.resumed.get('partitions', 0)} partition(s) committed earlier were skipped "
                f"({self.resumed.get('shards', 0)} shards, {self.resumed.get('images_written', 0)} images written); "
                f"this run read {self.shards_read - self.resumed.get('shards', 0)} shard(s); the figures cover both")

    def stage_lines(self) -> list[str]:
        """One line per curation stage that dropped or failed anything: `  min_size: 3 filtered, 1 failed`."""
        lines = []
        for stage in sorted(set(self.filtered_by_stage) | set(self.failed_by_stage)):
            lines.append(f"  {stage}: {self.filtered_by_stage.get(stage, 0)} filtered, "
                         f"{self.failed_by_stage.get(stage, 0)} failed")
        return lines

    def warnings(self) -> list[str]:
        """What a run that succeeded should still tell its user: damaged shards, nothing written."""
        found = []
        if self.shards_failed:
            found.append(f"{self.shards_failed} of {self.shards} shard(s) could not be read to their end (damaged "
                         "or missing; what was read before the damage is in the output): see _failures/")
        if self.samples_read and not self.images_written:
            what = "filtered" if self.images_filtered and not self.images_failed else "failed or filtered"
            found.append(f"no image was written: all {self.samples_read} samples read {what} (see _filtered/ and "
                         "_failures/)")
        elif self.images_failed:
            found.append(f"{self.images_failed} sample(s) failed (see _failures/)")
        return found

    def reconciliation(self) -> str:
        verdict = "ok" if self.reconciles else "MISMATCH: samples are unaccounted for"
        return (
            f"reconciliation: {self.samples_read} read = {self.images_written} written + {self.images_failed} "
            f"failed + {self.images_filtered} filtered: {verdict}"
        )

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "reconciles": self.reconciles}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunStats:
        values = json.loads(text)
        values.pop("reconciles", None)
        known = cls.__dataclass_fields__
        return cls(**{name: value for name, value in values.items() if name in known})

    @classmethod
    def from_counts(cls, counts: Counts, *, timings: Mapping[str, Mapping[str, float]], shards: int, seconds: float,
                    **about: Any) -> RunStats:
        """The run's figures from the sum of its partitions' Counts and its stages' timings."""
        stages = counts.stages
        reader = {name: int(sum(figures.get(name, 0) for figures in stages.values())) for name in READER_COUNTS}
        scopes = counts.failed_by_scope
        written_now = counts.images_written - about.get("resumed", {}).get("images_written", 0)
        figures = {stage: {**dict(timings.get(stage, {})), **stages.get(stage, {})}
                   for stage in sorted(set(stages) | set(timings))}
        return cls(
            shards=shards,
            shards_read=reader["shards_read"],
            shards_failed=int(scopes.get("shard", 0)),
            samples_read=reader["samples_read"],
            images_decoded=reader["images_decoded"],
            images_failed=int(scopes.get("sample", 0)),
            images_filtered=int(sum(counts.filtered_by_stage.values())),
            images_written=counts.images_written,
            companions_failed=int(scopes.get("companion", 0)),
            members_failed=int(scopes.get("member", 0)),
            tars_written=counts.tars_written,
            seconds=round(seconds, 3),
            # this run's own images (a resumed run's figures also hold what it skipped)
            images_per_second=round(written_now / seconds, 2) if seconds > 0 else 0.0,
            images_decoded_by_pillow=reader["images_decoded_by_pillow"],
            stages={stage: {name: round(value, 3) if name == "seconds" else int(value) for name, value in values.items()}
                    for stage, values in figures.items()},
            filtered_by_stage=dict(sorted(counts.filtered_by_stage.items())),
            failed_by_stage=dict(sorted(counts.failed_by_stage.items())),
            **about,
        )


def utc(seconds: float) -> str:
    """seconds since the epoch as ISO 8601 UTC, to the second."""
    import datetime

    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds")


def write_success(output_dir: str) -> str:
    """`DIR/_SUCCESS`, written last and only when the run succeeded (the Hadoop convention: loaders
    check for it before reading). Not empty: Beam's S3 client cannot write an empty object."""
    from beam_curator import storage
    from beam_curator.output.layout import SUCCESS_FILE

    return storage.write_atomically(storage.join(output_dir, SUCCESS_FILE), b"beam-curator\n")
