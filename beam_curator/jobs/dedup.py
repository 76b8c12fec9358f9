"""The dedup job: curated outputs' parquet -> removal lists, and its summary `_dedup.json`.

`beam-curator dedup` builds and runs this; the pipeline's transforms are in
beam_curator.transforms.find_duplicates and the algorithms in beam_curator.dedup.algorithms.
Before anything runs, the launcher reads the parquet footers (row counts, null counts) to refuse what
cannot work: the same output given twice, a method whose fingerprint no input has, and to choose the
default number of clusters of semantic dedup from the number of images.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

from beam_curator import storage
from beam_curator.identity import canonical_path
from beam_curator.output.layout import DEDUP_SUMMARY_FILE
from beam_curator.output.stats import utc

__all__ = ["SUMMARY_FILE", "build_dedup_pipeline", "run_dedup", "summary_line"]

SUMMARY_FILE = DEDUP_SUMMARY_FILE
_HINT = {"phash": "curate with --phash", "embedding": "curate with --model-dir and --embed"}


def _prepare_output(output: str, overwrite: bool) -> None:
    old = storage.match_files(storage.join(output, "duplicates-*.parquet"))
    if old and not overwrite:
        raise FileExistsError(f"{output} already holds {len(old)} removal file(s) of an earlier dedup run; choose "
                              "another directory or pass --overwrite")
    storage.delete_tree(old + storage.match_files(storage.join(output, SUMMARY_FILE)))


def check_inputs(inputs: list[str]) -> list[str]:
    """The inputs, each once; ValueError when one is given twice (its images would all be duplicates of
    themselves under the same ids)."""
    seen: dict[str, str] = {}
    for given in inputs:
        canonical = canonical_path(given).rstrip("/")
        if canonical in seen:
            raise ValueError(f"{given} is given twice (as {seen[canonical]} too): give each output once")
        seen[canonical] = given
    return list(inputs)


@dataclass
class _Footers:
    rows: int = 0
    without: int = 0  # rows whose method column is null, where the footers say (else 0)
    known: bool = True  # False when some file had no null-count statistics for the column


def _footers(files: list[str], column: str) -> _Footers:
    """Row and null counts of the method's column, from the parquet footers alone."""
    import pyarrow.parquet as pq

    found = _Footers()
    for path in files:
        with storage.open_read(path) as handle:
            metadata = pq.ParquetFile(handle).metadata
        found.rows += metadata.num_rows
        leaves = [i for i in range(metadata.num_columns)
                  if metadata.schema.column(i).path.split(".")[0] == column]
        if not leaves:
            found.without += metadata.num_rows
            continue
        for group in range(metadata.num_row_groups):
            chunk = metadata.row_group(group).column(leaves[0])
            stats = chunk.statistics
            if stats is None or not stats.has_null_count:
                found.known = False
                continue
            # A null value is one null leaf entry, whatever the column's nesting (an embedding's list too).
            if stats.null_count == chunk.num_values:
                found.without += metadata.row_group(group).num_rows
    return found


def build_dedup_pipeline(args: argparse.Namespace, beam_args: list[str]):
    """The dedup job as a Beam pipeline, built but not run; (pipeline, the number of clusters asked of
    semantic dedup, or None)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_curator import __version__
    from beam_curator.dedup.algorithms import default_clusters
    from beam_curator.transforms.find_duplicates import COLUMNS, FindDuplicates, WriteDuplicates, list_parquet

    pipeline = beam.Pipeline(options=PipelineOptions(beam_args))  # first: it configures FileSystems
    inputs = check_inputs(list(args.inputs))
    files = list_parquet(inputs)
    column = COLUMNS[args.method]
    footers = _footers(files, column)
    if footers.known and footers.rows and footers.without == footers.rows:
        raise ValueError(f"no image of {', '.join(inputs)} has a value in the {column} column, which {args.method} "
                         "dedup compares: "
                         f"{_HINT.get(column, 'curate it again')} first")
    n_clusters = None
    if args.method == "semantic":
        n_clusters = args.n_clusters if args.n_clusters is not None else default_clusters(footers.rows - footers.without,
                                                                               args.sample_size)
    find = FindDuplicates(files, args.method, max_hamming=args.max_hamming, eps=args.eps,
                          n_clusters=1 if n_clusters is None else n_clusters,
                          keep=args.keep, sample_size=args.sample_size, seed=args.seed)
    _prepare_output(args.output, args.overwrite)
    found = pipeline | "FindDuplicates" >> find
    written = found.duplicates | "WriteDuplicates" >> WriteDuplicates(args.output, args.method, args.output_shards,
                                                                      gate=found.checked)
    removed = found.duplicates | "Removed" >> beam.combiners.Count.Globally()
    groups = (found.duplicates | "KeptIds" >> beam.Map(lambda row: row["kept_id"]) | "Distinct" >> beam.Distinct()
              | "Groups" >> beam.combiners.Count.Globally())
    options = {name: value for name, value in sorted(vars(args).items()) if name not in ("inputs", "command",
                                                                                          "spelling")}
    summary = {"method": args.method, "keep": args.keep, "inputs": list(args.inputs), "parquet_files": len(files),
               "options": options, "version": __version__, "started": utc(time.time())}
    if n_clusters is not None:
        summary["n_clusters_asked"] = n_clusters
    clusters = [beam.pvalue.AsSingleton(found.clusters)] if found.clusters is not None else []
    _ = (found.counts | "Summary" >> beam.Map(
        _write_summary, args.output, summary, beam.pvalue.AsSingleton(removed), beam.pvalue.AsSingleton(groups),
        beam.pvalue.AsList(written), *clusters))
    return pipeline, n_clusters


def _write_summary(counts, output: str, summary: dict, removed: int, groups: int, written: list[str],
                   clusters: int | None = None) -> None:
    images, without = counts
    summary = {**summary, "images": images, "images_without_fingerprint": without, "removed": removed,
               "duplicate_groups": groups, "files": sorted(path.rsplit("/", 1)[-1] for path in written),
               "finished": utc(time.time())}
    if clusters is not None:
        summary["n_clusters"] = clusters
    storage.write_atomically(storage.join(output, SUMMARY_FILE), json.dumps(summary, indent=2, sort_keys=True).encode())


def run_dedup(args: argparse.Namespace, beam_args: list[str]) -> dict:
    """Run the job; its summary, as the job wrote it."""
    from beam_curator.jobs.beam_options import DEFAULT_RUNNER, beam_option

    if beam_option(beam_args, "runner") is None:
        beam_args = [f"--runner={DEFAULT_RUNNER}", *beam_args]
    pipeline, _ = build_dedup_pipeline(args, beam_args)
    pipeline.run().wait_until_finish()
    with storage.open_read(storage.join(args.output, SUMMARY_FILE)) as handle:
        return json.loads(handle.read())


def summary_line(summary: dict) -> str:
    line = (f"dedup ({summary['method']}, keep {summary.get('keep', 'smallest-id')}): images: {summary['images']}  "
            f"duplicate groups: {summary['duplicate_groups']}  removed: {summary['removed']}")
    if summary.get("n_clusters") is not None:
        line += f"  clusters: {summary['n_clusters']}"
    if summary["images_without_fingerprint"]:
        column = {"exact": "sha256", "perceptual": "phash", "semantic": "embedding"}[summary["method"]]
        line += f"  skipped (no {column}): {summary['images_without_fingerprint']}"
    return line
