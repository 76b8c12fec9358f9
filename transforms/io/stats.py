"""WriteRunStats: the job's last step: its verdict, DIR/_stats.json, the report, and `_SUCCESS` last.

It runs in the job (not in the launcher), after the commit, so template launches and `--no-wait` runs
get the files too. Its figures are the sum of the partitions' Counts (beam_curator.output.stats), the
same Counts each committed partition's manifest records, plus the stages' timings; on a resumed run
the counts of the partitions an earlier run committed, from their manifests, are added. One reduction,
one vocabulary. The verdict: a run in which more than max_failed_fraction of the samples read failed
has failed: `_stats.json` and the report say so (status, reason), `_SUCCESS` is not written, and the
step raises FailureThresholdExceeded, which fails the job.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import apache_beam as beam

from beam_curator import storage
from beam_curator.errors import FailureThresholdExceeded
from beam_curator.output.layout import REPORT_DIR, STATS_FILE
from beam_curator.output.stats import Counts, RunStats, Timings, utc, write_success

if TYPE_CHECKING:
    from beam_curator.output.commit import PartitionOutput

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


def _verdict(stats: RunStats, max_failed_fraction: float, failure_option: str) -> str:
    """Why the run failed, or "" when it did not."""
    read, failed = stats.samples_read, stats.images_failed
    if read and failed / read > max_failed_fraction:
        return (f"{failed} of {read} samples failed ({failed / read:.1%}), over {failure_option}; the failure "
                "records in _failures/ say why")
    return ""


def _write_stats(summed, *_after, output_dir: str, committed: dict, shards: int, started: float, about: dict,
                 max_failed_fraction: float, failure_option: str, report: bool) -> str:
    counts, timings = summed
    finished = time.time()
    stats = RunStats.from_counts(counts.add(Counts.from_dict(committed)), timings=timings, shards=shards,
                                 seconds=finished - started, started=utc(started), finished=utc(finished), **about)
    reason = _verdict(stats, max_failed_fraction, failure_option)
    if reason:
        stats.status, stats.reason = "failed", reason
    if report:
        stats.report = storage.join(output_dir, REPORT_DIR, "index.html")
    path = storage.write_atomically(storage.join(output_dir, STATS_FILE), stats.to_json().encode())
    if report:
        from beam_curator.report.page import write_report

        write_report(output_dir)
    if reason:
        raise FailureThresholdExceeded(reason)
    write_success(output_dir)  # last: the output is complete
    return path


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
      max_failed_fraction: above this fraction of failed samples the run fails (see the module);
        failure_option: how the user set it, for the message (`--max-failed-fraction 0.05`).
      report: write `DIR/_report/index.html` after `_stats.json`.
    """

    def __init__(self, output_dir: str, *, partitions, after: Sequence = (), shards: int, started: float,
                 inputs: Sequence[str] = (), options: dict[str, Any] | None = None, version: str = "",
                 committed: Counts | None = None, resumed: dict[str, int] | None = None,
                 max_failed_fraction: float = 1.0, failure_option: str = "max_failed_fraction", report: bool = False):
        super().__init__()
        self._output_dir = output_dir
        self._partitions, self._after = partitions, list(after)
        self._shards = shards
        self._started = started
        self._committed = (committed or Counts()).to_dict()
        self._about = {"inputs": list(inputs), "options": dict(options or {}), "version": version,
                       "resumed": dict(resumed or {})}
        self._verdict = {"max_failed_fraction": float(max_failed_fraction), "failure_option": failure_option,
                         "report": bool(report)}

    def expand(self, pbegin):
        # PartitionOutput -> (Counts, Timings), once (a run whose partitions were all committed
        # earlier has none: the combine's default is the empty sum)
        summed = self._partitions | "SumPartitions" >> beam.CombineGlobally(_SumPartitions())
        done = [beam.pvalue.AsList(pcoll | f"Done{index}" >> beam.Map(lambda _: 1))
                for index, pcoll in enumerate(self._after)]
        return summed | "Write" >> beam.Map(_write_stats, *done, output_dir=self._output_dir,
                                            committed=self._committed, shards=self._shards, started=self._started,
                                            about=self._about, **self._verdict)
