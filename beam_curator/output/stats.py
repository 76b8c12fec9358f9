"""What a curate run did, counted as data: the per-stage tallies that travel with the batches, and
the RunStats the job writes to `DIR/_stats.json` as its last step.

Every sample read ends up written, failed or filtered, and each term is counted directly: samples
read by the reader's own count, written from the committed tars, failed and filtered from the records
themselves. An image lost without a record therefore shows as a mismatch, never as "filtered".
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from beam_curator.tasks import StagePerf

__all__ = ["STATS_FILE", "RunStats", "merge_tallies", "tally"]

STATS_FILE = "_stats.json"
# Figures only the reader counts (see ImageReaderStage); summed over the stages that report them.
# (Its failures are counted from the failure records instead.)
READER_COUNTS = ("samples_read", "decoded", "shards_read", "decoded_by_pillow")


def tally(perfs: Iterable[StagePerf], into: dict[str, dict[str, float]] | None = None) -> dict[str, dict[str, float]]:
    """Sum StagePerf entries per stage: {stage: {"seconds": s, "batches": n, count: value, ...}}."""
    result = into if into is not None else {}
    for perf in perfs:
        entry = result.setdefault(perf.stage, {})
        entry["seconds"] = entry.get("seconds", 0.0) + perf.seconds
        entry["batches"] = entry.get("batches", 0) + 1
        for name, value in perf.counts.items():
            entry[name] = entry.get(name, 0) + value
    return result


def merge_tallies(tallies: Iterable[Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    merged: dict[str, dict[str, float]] = {}
    for one in tallies:
        for stage, figures in one.items():
            entry = merged.setdefault(stage, {})
            for name, value in figures.items():
                entry[name] = entry.get(name, 0) + value
    return merged


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
    def from_counts(cls, *, stages: Mapping[str, Mapping[str, float]], written: int, tars: int,
                    failures_by_scope: Mapping[str, int], failed_by_stage: Mapping[str, int],
                    filtered_by_stage: Mapping[str, int], shards: int, seconds: float, **about: Any) -> RunStats:
        """The run's figures from what the job counted: the stages' tallies, the committed tars, and the
        numbers of failure and filter records."""
        reader = {name: int(sum(figures.get(name, 0) for figures in stages.values())) for name in READER_COUNTS}
        return cls(
            shards=shards,
            shards_read=reader["shards_read"],
            shards_failed=int(failures_by_scope.get("shard", 0)),
            samples_read=reader["samples_read"],
            images_decoded=reader["decoded"],
            images_failed=int(failures_by_scope.get("sample", 0)),
            images_filtered=int(sum(filtered_by_stage.values())),
            images_written=written,
            companions_failed=int(failures_by_scope.get("companion", 0)),
            members_failed=int(failures_by_scope.get("member", 0)),
            tars_written=tars,
            seconds=round(seconds, 3),
            # this run's own images (a resumed run's figures also hold what it skipped)
            images_per_second=round((written - about.get("resumed", {}).get("images_written", 0)) / seconds, 2)
            if seconds > 0 else 0.0,
            images_decoded_by_pillow=reader["decoded_by_pillow"],
            stages={stage: {name: round(value, 3) if name == "seconds" else int(value) for name, value in figures.items()}
                    for stage, figures in sorted(stages.items())},
            filtered_by_stage=dict(sorted(filtered_by_stage.items())),
            failed_by_stage=dict(sorted(failed_by_stage.items())),
            **about,
        )
