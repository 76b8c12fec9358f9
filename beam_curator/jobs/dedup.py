"""The dedup job: curated outputs' parquet -> removal lists, and its summary `_dedup.json`.

`beam-curator dedup` builds and runs this; the pipeline's transforms are in
beam_curator.transforms.find_duplicates and the algorithms in beam_curator.dedup.algorithms.
"""

from __future__ import annotations

import argparse
import json
import time

from beam_curator import storage

__all__ = ["SUMMARY_FILE", "build_dedup_pipeline", "run_dedup", "summary_line"]

SUMMARY_FILE = "_dedup.json"


def _prepare_output(output: str, overwrite: bool) -> None:
    old = storage.match_files(storage.join(output, "duplicates-*.parquet"))
    if old and not overwrite:
        raise FileExistsError(f"{output} already holds {len(old)} removal file(s) of an earlier dedup run; choose "
                              "another directory or pass --overwrite")
    storage.delete_tree(old + storage.match_files(storage.join(output, SUMMARY_FILE)))


def build_dedup_pipeline(args: argparse.Namespace, beam_args: list[str]):
    """The dedup job as a Beam pipeline, built but not run."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_curator import __version__
    from beam_curator.transforms.find_duplicates import FindDuplicates, WriteDuplicates, list_parquet

    pipeline = beam.Pipeline(options=PipelineOptions(beam_args))  # first: it configures FileSystems
    files = list_parquet(args.inputs)
    find = FindDuplicates(files, args.method, max_hamming=args.max_hamming, eps=args.eps, n_clusters=args.n_clusters,
                          which_to_keep=args.which_to_keep, sample_size=args.sample_size, seed=args.seed)
    _prepare_output(args.output, args.overwrite)
    found = pipeline | "FindDuplicates" >> find
    written = found.duplicates | "WriteDuplicates" >> WriteDuplicates(args.output, args.method, args.output_shards)
    removed = found.duplicates | "Removed" >> beam.combiners.Count.Globally()
    groups = (found.duplicates | "KeptIds" >> beam.Map(lambda row: row["kept_id"]) | "Distinct" >> beam.Distinct()
              | "Groups" >> beam.combiners.Count.Globally())
    options = {name: value for name, value in sorted(vars(args).items()) if name not in ("inputs", "command")}
    summary = {"method": args.method, "inputs": list(args.inputs), "parquet_files": len(files), "options": options,
               "version": __version__, "started": time.time()}
    _ = (found.counts | "Summary" >> beam.Map(
        _write_summary, args.output, summary, beam.pvalue.AsSingleton(removed), beam.pvalue.AsSingleton(groups),
        beam.pvalue.AsList(written)))
    return pipeline


def _write_summary(counts, output: str, summary: dict, removed: int, groups: int, written: list[str]) -> None:
    images, without = counts
    summary = {**summary, "images": images, "images_without_fingerprint": without, "removed": removed,
               "duplicate_groups": groups, "files": sorted(path.rsplit("/", 1)[-1] for path in written),
               "finished": time.time()}
    storage.write_atomically(storage.join(output, SUMMARY_FILE), json.dumps(summary, indent=2, sort_keys=True).encode())


def run_dedup(args: argparse.Namespace, beam_args: list[str]) -> dict:
    """Run the job; its summary, as the job wrote it."""
    from beam_curator.jobs.curate import DEFAULT_RUNNER, _beam_option

    if _beam_option(beam_args, "runner") is None:
        beam_args = [f"--runner={DEFAULT_RUNNER}", *beam_args]
    pipeline = build_dedup_pipeline(args, beam_args)
    pipeline.run().wait_until_finish()
    with storage.open_read(storage.join(args.output, SUMMARY_FILE)) as handle:
        return json.loads(handle.read())


def summary_line(summary: dict) -> str:
    line = (f"dedup ({summary['method']}): images: {summary['images']}  duplicate groups: "
            f"{summary['duplicate_groups']}  removed: {summary['removed']}")
    if summary["images_without_fingerprint"]:
        column = {"exact": "sha256", "perceptual": "phash", "semantic": "embedding"}[summary["method"]]
        line += f"  skipped (no {column}): {summary['images_without_fingerprint']}"
    return line
