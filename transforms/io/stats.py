"""WriteRunStats: the job's last step, DIR/_stats.json from what the job itself counted.

It runs in the job (not in the launcher), after the commit and after the record files are written,
so template launches and `--no-wait` runs get the file too. Every figure comes from data: the stages'
tallies that travelled with the batches, the committed tars, and the failure and filter records; on a
resumed run also the counts of the partitions an earlier run committed, from their manifests. All of
it goes through one combine (a few pipeline stages, not one per figure: each costs start-up).
"""

from __future__ import annotations

import datetime
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import apache_beam as beam

from beam_curator import storage
from beam_curator.output.manifest import empty_counts
from beam_curator.output.stats import STATS_FILE, RunStats, merge_tallies

__all__ = ["WriteRunStats"]


class _RunFigures(beam.CombineFn):
    """(kind, value) events -> the figures RunStats is made of."""

    def create_accumulator(self):
        return {"tallies": {}, "images": 0, "tars": 0, "scopes": Counter(), "failed": Counter(),
                "filtered": Counter(), "done": 0}

    def add_input(self, figures, event):
        kind, value = event
        if kind == "tally":
            figures["tallies"] = merge_tallies([figures["tallies"], value])
        elif kind == "tar":
            figures["images"] += value
            figures["tars"] += 1
        elif kind == "failure":
            scope, stage = value
            figures["scopes"][scope] += 1
            if scope == "sample":
                figures["failed"][stage] += 1
        elif kind == "filtered":
            figures["filtered"][value] += 1
        elif kind == "committed":  # partitions an earlier run committed (beam_curator.output.manifest counts)
            figures["tallies"] = merge_tallies([figures["tallies"], value["stages"]])
            figures["images"] += value["written"]
            figures["tars"] += value["tars"]
            figures["scopes"].update(value["failures_by_scope"])
            figures["failed"].update(value["failed_by_stage"])
            figures["filtered"].update(value["filtered_by_stage"])
        else:  # "done": a record file was written
            figures["done"] += 1
        return figures

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for figures in accumulators:
            merged["tallies"] = merge_tallies([merged["tallies"], figures["tallies"]])
            for name in ("images", "tars", "done"):
                merged[name] += figures[name]
            for name in ("scopes", "failed", "filtered"):
                merged[name].update(figures[name])
        return merged

    def extract_output(self, figures):
        return figures


def _utc(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="seconds")


def _write_stats(figures, *, output_dir, shards, started, about):
    finished = time.time()
    stats = RunStats.from_counts(
        stages=figures["tallies"], written=figures["images"], tars=figures["tars"],
        failures_by_scope=figures["scopes"], failed_by_stage=figures["failed"], filtered_by_stage=figures["filtered"],
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
      committed: the summed manifest counts of partitions an earlier run committed, which this run
        skipped (beam_curator.output.resume.ResumePlan.counts()); resumed: its summary, written as it is.
    """

    def __init__(self, output_dir: str, *, counts, files, failures, filtered, after: Sequence = (), shards: int,
                 started: float, inputs: Sequence[str] = (), options: dict[str, Any] | None = None, version: str = "",
                 committed: dict[str, Any] | None = None, resumed: dict[str, int] | None = None):
        super().__init__()
        self._output_dir = output_dir
        self._inputs = (counts, files, failures, filtered, *after)
        self._shards = shards
        self._started = started
        self._committed = committed or empty_counts()
        self._about = {"inputs": list(inputs), "options": dict(options or {}), "version": version,
                       "resumed": dict(resumed or {})}

    def expand(self, pbegin):
        counts, files, failures, filtered, *after = self._inputs
        events = [
            # Always one event, so the combine has input even when an earlier run committed everything.
            pbegin | "Committed" >> beam.Create([("committed", self._committed)]),
            counts | "Tallies" >> beam.Map(lambda tally: ("tally", tally)),
            files | "Tars" >> beam.Map(lambda task: ("tar", int(task._metadata["num_images"]))),
            failures | "Failures" >> beam.Map(lambda record: ("failure", (record.scope, record.stage))),
            filtered | "Filtered" >> beam.Map(lambda record: ("filtered", record.stage)),
            *[pcoll | f"Done{index}" >> beam.Map(lambda _: ("done", 1)) for index, pcoll in enumerate(after)],
        ]
        return (
            tuple(events)
            | "Events" >> beam.Flatten()
            | "Figures" >> beam.CombineGlobally(_RunFigures()).without_defaults()
            | "Write" >> beam.Map(_write_stats, output_dir=self._output_dir, shards=self._shards,
                                  started=self._started, about=self._about)
        )
