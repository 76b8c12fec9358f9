"""WriteRunStats: the job's last step, DIR/_stats.json from what the job itself counted.

It runs in the job (not in the launcher), after the commit, so template launches and `--no-wait` runs
get the file too. Its figures are the sum of the partitions' Counts (beam_curator.output.stats), the
same Counts each committed partition's manifest records, plus the stages' timings; on a resumed run
the counts of the partitions an earlier run committed, from their manifests, are added. One reduction,
one vocabulary.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam

from beam_curator import storage
from beam_curator.output.commit import PartitionOutput
from beam_curator.output.layout import STATS_FILE
from beam_curator.output.stats import Counts, RunStats, Timings

__all__ = ["WriteRunStats"]


class _SumPartitions(beam.CombineFn):
    """PartitionOutput -> (Counts, Timings) of them all."""

    def create_accumulator(self):
        return Counts(), Timings()

    def add_input(self, accumulator, partition: PartitionOutput):
        counts, timings = accumulator
        return counts.add(partition.counts), timings.add(partition.timings)

    def merge_accumulators(self, accumulators):
        counts, timings = self.create_accumulator()
        for more_counts, more_timings in accumulators:
            counts.add(more_counts)
            timings.add(more_timings)
        return counts, timings

    def extract_output(self, accumulator):
        return accumulator


def _utc(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="seconds")


def _write_stats(summed, *_after, output_dir: str, committed: dict, shards: int, started: float,
                 about: dict) -> str:
    counts, timings = summed
    finished = time.time()
    stats = RunStats.from_counts(counts.add(Counts.from_dict(committed)), timings=timings, shards=shards,
                                 seconds=finished - started, started=_utc(started), finished=_utc(finished), **about)
    return storage.write_atomically(storage.join(output_dir, STATS_FILE), stats.to_json().encode())


class WriteRunStats(beam.PTransform):
    """PBegin -> the path of `{output_dir}/_stats.json`, written once everything else is done.

    Args:
      output_dir: the curated output's directory.
      partitions: the WriteResult's partitions (a PartitionOutput per partition written).
      after: PCollections that must be complete first (the WriteResult's files: the commit is done).
      shards: the number of input shards; started: the job's start (time.time()).
      inputs, options, version: written as they are.
      committed: the summed Counts of the partitions an earlier run committed, which this run skipped
        (beam_curator.output.resume.ResumePlan.counts()); resumed: its summary, written as it is.
    """

    def __init__(self, output_dir: str, *, partitions, after: Sequence = (), shards: int, started: float,
                 inputs: Sequence[str] = (), options: dict[str, Any] | None = None, version: str = "",
                 committed: Counts | None = None, resumed: dict[str, int] | None = None):
        super().__init__()
        self._output_dir = output_dir
        self._partitions, self._after = partitions, list(after)
        self._shards = shards
        self._started = started
        self._committed = (committed or Counts()).to_dict()
        self._about = {"inputs": list(inputs), "options": dict(options or {}), "version": version,
                       "resumed": dict(resumed or {})}

    def expand(self, pbegin):
        # PartitionOutput -> (Counts, Timings), once (a run whose partitions were all committed
        # earlier has none: the combine's default is the empty sum)
        summed = self._partitions | "SumPartitions" >> beam.CombineGlobally(_SumPartitions())
        done = [beam.pvalue.AsList(pcoll | f"Done{index}" >> beam.Map(lambda _: 1))
                for index, pcoll in enumerate(self._after)]
        return summed | "Write" >> beam.Map(_write_stats, *done, output_dir=self._output_dir,
                                            committed=self._committed, shards=self._shards, started=self._started,
                                            about=self._about)
