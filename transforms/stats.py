"""WriteRunStats: the job's last step, DIR/_stats.json from what the job itself counted.

It runs in the job (not in the launcher), after the commit and after the record files are written,
so template launches and `--no-wait` runs get the file too. Every figure comes from data: the stages'
tallies that travelled with the batches, the committed tars, and the failure and filter records.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam

from beam_curator import storage
from beam_curator.stats import STATS_FILE, RunStats, merge_tallies

__all__ = ["WriteRunStats"]


class _MergeTallies(beam.CombineFn):
    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, tally):
        return merge_tallies([accumulator, tally])

    def merge_accumulators(self, accumulators):
        return merge_tallies(accumulators)

    def extract_output(self, accumulator):
        return accumulator


def _utc(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="seconds")


def _sum_pairs(pairs) -> tuple[int, int]:
    images = tars = 0
    for more_images, more_tars in pairs:
        images, tars = images + more_images, tars + more_tars
    return images, tars


def _write_stats(_, *, output_dir, tallies, committed, failures_by_scope, failed_by_stage, filtered_by_stage,
                 records_written, shards, started, about):
    del records_written  # a side input only so that this runs after the record files are written
    finished = time.time()
    stats = RunStats.from_counts(
        stages=tallies, written=committed[0], tars=committed[1],
        failures_by_scope=failures_by_scope, failed_by_stage=failed_by_stage, filtered_by_stage=filtered_by_stage,
        shards=shards, seconds=finished - started, started=_utc(started), finished=_utc(finished), **about)
    return storage.write_atomically(storage.join(output_dir, STATS_FILE), stats.to_json().encode())


class WriteRunStats(beam.PTransform):
    """PBegin -> the path of `{output_dir}/_stats.json`, written once everything else is done.

    Args:
      output_dir: the curated output's directory.
      counts: the WriteResult's counts (per-bundle tallies of every stage).
      files: the WriteResult's files (FileGroupTask per committed tar).
      failures, filtered: every FailureRecord and FilterRecord of the job.
      after: PCollections that must be complete first (the written record files).
      shards: the number of input shards; started: the job's start (time.time()).
      inputs, options, version: written as they are.
    """

    def __init__(self, output_dir: str, *, counts, files, failures, filtered, after: Sequence = (), shards: int,
                 started: float, inputs: Sequence[str] = (), options: dict[str, Any] | None = None, version: str = ""):
        super().__init__()
        self._output_dir = output_dir
        self._inputs = dict(counts=counts, files=files, failures=failures, filtered=filtered)
        self._after = list(after)
        self._shards = shards
        self._started = started
        self._about = {"inputs": list(inputs), "options": dict(options or {}), "version": version}

    def expand(self, pbegin):
        counts, files, failures, filtered = (self._inputs[name] for name in ("counts", "files", "failures", "filtered"))
        tallies = counts | "MergeTallies" >> beam.CombineGlobally(_MergeTallies())
        committed = (files | "TarSizes" >> beam.Map(lambda task: (int(task._metadata["num_images"]), 1))
                     | "SumTars" >> beam.CombineGlobally(_sum_pairs))  # (images, tars)
        by_scope = (failures | "FailureScope" >> beam.Map(lambda record: record.scope)
                    | "CountByScope" >> beam.combiners.Count.PerElement())
        failed = (failures | "SampleFailures" >> beam.Filter(lambda record: record.scope == "sample")
                  | "FailedStage" >> beam.Map(lambda record: record.stage)
                  | "CountFailedByStage" >> beam.combiners.Count.PerElement())
        dropped = (filtered | "FilteredStage" >> beam.Map(lambda record: record.stage)
                   | "CountFilteredByStage" >> beam.combiners.Count.PerElement())
        after = self._after or [pbegin | "Nothing" >> beam.Create([])]
        done = tuple(after) | "RecordFiles" >> beam.Flatten() | "CountRecordFiles" >> beam.combiners.Count.Globally()
        side = beam.pvalue
        return (
            pbegin
            | "Once" >> beam.Create([None])
            | "Write" >> beam.Map(
                _write_stats, output_dir=self._output_dir, tallies=side.AsSingleton(tallies),
                committed=side.AsSingleton(committed), failures_by_scope=side.AsDict(by_scope),
                failed_by_stage=side.AsDict(failed), filtered_by_stage=side.AsDict(dropped),
                records_written=side.AsSingleton(done), shards=self._shards, started=self._started,
                about=self._about)
        )
