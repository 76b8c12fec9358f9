"""The curate job: partition -> read -> your stages -> write, plus the records, `_stats.json`, the
report and `_SUCCESS`.

`curate(inputs, output, stages=[...], **options)` is the Python entry point; the `beam-curator curate`
and `prune` commands and the Flex Template build the same pipeline with build_pipeline. Options come
from one table (beam_curator.jobs.options); messages name them as the caller spelled them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

from beam_curator.jobs.beam_options import DEFAULT_RUNNER, beam_option
from beam_curator.jobs.options import CLI, ISOLATE_DECODER, PYTHON, SCORES, Spelling, from_python, shaping_values
from beam_curator.jobs.worker_output import worker_chatter_filtered
from beam_curator.output.leftovers import find_leftovers, make_progress_dir, remove_stale_progress_dirs, write_owner
from beam_curator.output.stats import RunStats

__all__ = ["DEFAULT_RUNNER", "build_curation_stages", "build_model_stages", "build_pipeline", "build_stages",
           "curate", "load_stage", "prune_options", "run"]

_LOCAL_RUNNERS = {"FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner", "PortableRunner"}
_IN_PROCESS_RUNNERS = _LOCAL_RUNNERS - {"PortableRunner"}  # the job dies with the CLI's process
_LOG = logging.getLogger(__name__)


def _spelling(args: argparse.Namespace) -> Spelling:
    return getattr(args, "spelling", CLI)


def load_stage(spec: str):
    """The stage `MODULE:NAME` names: an ImageBatch -> ImageBatch PTransform, or a zero-argument
    callable returning one. The current directory is searched first, as `python -m` does."""
    import apache_beam as beam

    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ValueError(f"--stage wants MODULE:NAME (e.g. my_filters:drop_small), got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"--stage {spec}: cannot import {module_name!r}: {error}") from error
    target: Any = module
    for part in name.split("."):
        if not hasattr(target, part):
            raise ValueError(f"--stage {spec}: {module_name} has no {name!r}")
        target = getattr(target, part)
    stage = target
    if not isinstance(stage, beam.PTransform) and callable(stage):
        try:
            stage = target()
        except TypeError as error:  # it wants arguments: not a stage factory
            raise ValueError(f"--stage {spec}: {name} must be an ImageBatch -> ImageBatch PTransform or a function "
                             f"of no arguments returning one; calling it failed: {error}") from error
    if not isinstance(stage, beam.PTransform):
        raise ValueError(f"--stage {spec}: {name} must be an ImageBatch -> ImageBatch PTransform or a function "
                         f"of no arguments returning one, got {type(stage).__name__}")
    return stage


def job_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of a curate run that shape its output (what each partition's manifest records), as
    JSON values (the table says which: beam_curator.jobs.options)."""
    return shaping_values("curate", vars(args))


def build_stages(args: argparse.Namespace, *, progress_dir: str | None = None):
    """The (FilePartitioningStage, ImageReaderStage, ImageWriterStage) that `curate` args describe."""
    from beam_curator.transforms import FilePartitioningStage, ImageReaderStage, ImageWriterStage

    partitioning = FilePartitioningStage(
        args.inputs,
        files_per_partition=args.files_per_partition,
        file_extensions=[ext.strip() for ext in args.file_extensions.split(",") if ext.strip()],
        exclude=[args.output],
    )
    reader = ImageReaderStage(
        dali_batch_size=args.dali_batch_size,
        verbose=args.reader_verbose,
        num_threads=args.num_threads,
        num_gpus_per_worker=args.num_gpus_per_worker,
        max_image_pixels=args.max_image_pixels,
        max_member_bytes=args.max_member_bytes,
        isolate_decoder=ISOLATE_DECODER[args.isolate_decoder],
        progress_dir=progress_dir,
    )
    writer = ImageWriterStage(
        args.output,
        images_per_tar=args.images_per_tar,
        verbose=args.writer_verbose,
        deterministic_name=args.deterministic_name,
        remove_image_data=args.remove_image_data,
        jpeg_quality=args.jpeg_quality,
        force_reencode=args.force_reencode,
        overwrite=args.overwrite,
        write_index=args.write_index,
        output_format=None if args.output_format == "original" else args.output_format,
        mode=args.writer_mode,
        # With --model-dir, embeddings are stored only when asked for (--embed): filters need them, readers may not.
        write_embeddings=bool(args.embed or not args.model_dir),
        resume=bool(getattr(args, "resume", False)),
        job_options=job_options(args),
    )
    return partitioning, reader, writer


def build_curation_stages(args: argparse.Namespace) -> list:
    """The stages `curate`'s own options ask for, in the order they run: duplicate removal
    (--remove-duplicates), the basic filters, the perceptual hash (--phash), then the model stages.
    Cheap drops come first, so the later stages see fewer images."""
    from beam_curator.transforms import (
        CaptionFilterStage,
        ImageDuplicatesRemovalStage,
        ImagePHashStage,
        ImageSizeFilterStage,
    )

    stages: list[Any] = [ImageDuplicatesRemovalStage(args.remove_duplicates)] if args.remove_duplicates else []
    if args.min_size is not None or args.max_aspect_ratio is not None or args.max_pixels is not None:
        stages.append(ImageSizeFilterStage(args.min_size, args.max_aspect_ratio, args.max_pixels))
    if args.min_caption_words is not None or args.min_caption_chars is not None or args.max_caption_chars is not None:
        stages.append(CaptionFilterStage(args.min_caption_words, args.min_caption_chars, args.max_caption_chars))
    if args.phash:
        stages.append(ImagePHashStage())
    return stages + build_model_stages(args)


def build_model_stages(args: argparse.Namespace) -> list:
    """The model stages `curate` args ask for, in order: ImageEmbeddingStage, then the aesthetic, NSFW
    and CLIP-score stages that --scores or a threshold name. Empty without --model-dir (and then
    nothing model-related is imported). The options were checked (jobs.options.check_dependencies)."""
    scores = [name.strip() for name in (args.scores or "").split(",") if name.strip()]
    thresholds = {"aesthetic": args.aesthetic_threshold, "nsfw": args.nsfw_threshold, "clip": args.clip_score_threshold}
    wanted = [name for name in SCORES if name in scores or thresholds[name] is not None]
    if not args.model_dir:
        return []
    from beam_curator.transforms import (
        ImageAestheticFilterStage,
        ImageEmbeddingStage,
        ImageNSFWFilterStage,
        ImageTextSimilarityFilterStage,
    )

    common = {"num_gpus_per_worker": args.num_gpus_per_worker, "model_inference_batch_size": args.model_batch_size}
    stages: list[Any] = [ImageEmbeddingStage(args.model_dir, **common)]
    filters = {"aesthetic": ImageAestheticFilterStage, "nsfw": ImageNSFWFilterStage}
    for name in wanted:
        if name == "clip":
            stages.append(ImageTextSimilarityFilterStage(args.model_dir, **common, score_threshold=thresholds[name],
                                                         drop_without_caption=args.drop_uncaptioned))
        else:
            stages.append(filters[name](args.model_dir, **common, score_threshold=thresholds[name]))
    return stages


def _stage_label(stage, index: int) -> str:
    return f"Stage{index}_{getattr(stage, 'stage_name', None) or type(stage).__name__}"


def build_pipeline(args: argparse.Namespace, beam_args: list[str], *, progress_dir: str | None = None,
                   stages: Sequence = (), reader=None):
    """The curate job as a Beam pipeline, built but not run: (pipeline, number of input shards it will
    read: all of them, but on a resumed run those of the partitions an earlier run committed). It
    reads (the inputs' listing, the output directory, a resumed run's manifests) and writes nothing:
    the writer's first step gets the output ready when the job runs (beam_curator.output.directory).
    ValueError, FileNotFoundError or FileExistsError when the job cannot run as asked.

    stages: PTransforms applied between reader and writer, after those args.stage names.
    reader: in place of the ImageReaderStage args describe (prune reads curated output without decoding).
    Touches no GPU: a Flex Template launcher, which has none, builds the job with this.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_curator import __version__
    from beam_curator.output import directory
    from beam_curator.output.resume import ResumePlan, plan_resume
    from beam_curator.transforms.io.stats import WriteRunStats

    # The pipeline first: it hands its options (S3 endpoint, credentials, ...) to Beam's FileSystems,
    # which the model stages' manifest and the listing of the inputs below already use.
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
    all_stages = (build_curation_stages(args) + [load_stage(spec) for spec in (getattr(args, "stage", None) or [])]
                  + list(stages))
    partitioning, image_reader, writer = build_stages(args, progress_dir=progress_dir)
    # Pixels and a model input only where a stage (or the writer, re-encoding) uses them.
    reader = reader or image_reader.for_stages([*all_stages, writer])
    spell = _spelling(args)
    total_shards = sum(len(task.data) for task in partitioning.partitions())  # first: is an input inside the output?
    state = directory.inspect(args.output)
    directory.check(state, writer.output_mode, overwrite_flag=spell.setting("overwrite"),
                    resume_flag=spell.setting("resume"))
    resume = ResumePlan()
    if writer.resume:
        resume = plan_resume(state, partitioning.partitions(), writer.packing_options.naming_options(),
                             writer.job_options, spell=spell)
        partitioning.skip(resume.skip)
    if hasattr(reader, "check_input"):
        reader.check_input(partitioning.partitions())
    from beam_curator.transforms.stages.kit import check_needs

    carried = any(any(task.partition.metadata_files) for task in partitioning.partitions())
    check_needs(all_stages, getattr(reader, "provides", ()), carried=carried)
    checked = {}
    for stage in all_stages:
        check = getattr(stage, "check_input", None)
        if check is not None:  # a stage that can tell before the run whether it will do anything
            checked[getattr(stage, "stage_name", stage.label)] = check(partitioning.partitions())
    batches = pipeline | "FilePartitioning" >> partitioning | "ImageReader" >> reader
    for index, stage in enumerate(all_stages):
        batches = batches | _stage_label(stage, index) >> stage  # ImageBatch -> ImageBatch
    # The writer writes each partition's records (the reader's included) with the partition's commit.
    written = batches | "ImageWriter" >> writer
    options = {name: value for name, value in sorted(vars(args).items()) if name not in ("inputs", "command",
                                                                                          "spelling")}
    options["stages"] = [getattr(stage, "stage_name", None) or stage.label for stage in all_stages]
    if checked:
        options["checked"] = checked  # e.g. how many ids a removal list holds (the CLI says how many matched)
    pipeline | "RunStats" >> WriteRunStats(
        args.output, partitions=written.partitions, after=[written.files], shards=total_shards, started=time.time(),
        inputs=args.inputs, options=options, version=__version__, committed=resume.counts(),
        resumed=resume.summary() if writer.resume else None, max_failed_fraction=args.max_failed_fraction,
        failure_option=spell.setting("max_failed_fraction", args.max_failed_fraction), report=args.report)
    skipped_shards = sum(len(manifest.source_files) for manifest in resume.manifests)
    return pipeline, total_shards - skipped_shards, writer


def _clean_leftovers(output: str) -> None:
    """Remove what crashed runs left (see beam_curator.output.leftovers); say what is kept and why."""
    from beam_curator import storage

    for leftover in find_leftovers(output):
        if leftover.removable:
            storage.delete_tree([leftover.path])
            _LOG.warning("removed %s, left by an earlier run that did not finish: %s", leftover.path, leftover.why)
        else:
            _LOG.warning("%s was left by another run and is kept, because %s; remove it yourself if no job "
                         "is writing into %s", leftover.path, leftover.why, output)




def run(args: argparse.Namespace, beam_args: list[str], *, stages: Sequence = (), reader=None) -> RunStats | None:
    """Run the job; its RunStats (as the job wrote them to `_stats.json`), or None with --no-wait.
    A job that fails on its workers raises JobFailed (FailureThresholdExceeded when too many samples
    failed); on a local runner `_stats.json` then says `status: failed` and why (the job's own last step
    writes it when it gets that far), and the output has no `_SUCCESS`."""
    from beam_curator.errors import JobFailed, job_error, one_line
    from beam_curator.jobs.progress import ProgressReporter

    runner = beam_option(beam_args, "runner")
    if runner is None:
        beam_args = [f"--runner={DEFAULT_RUNNER}", *beam_args]
        runner = DEFAULT_RUNNER
    show_progress = args.progress if args.progress is not None else runner.split(".")[-1] in _LOCAL_RUNNERS
    remove_stale_progress_dirs()
    progress_dir = make_progress_dir() if show_progress else None

    reporter = None
    worker_processes = beam_option(beam_args, "direct_running_mode") == "multi_processing"
    started = time.time()
    try:
        pipeline, total_shards, writer = build_pipeline(args, beam_args, progress_dir=progress_dir, stages=stages,
                                                        reader=reader)
        _clean_leftovers(args.output)  # after the pipeline: its options configure FileSystems (credentials)
        write_owner(writer.temp_dir, runner=runner, local=runner.split(".")[-1] in _IN_PROCESS_RUNNERS)
        with worker_chatter_filtered(worker_processes and args.log_level != "debug") as terminal:
            reporter = ProgressReporter(progress_dir, total_shards, time.monotonic(), terminal) if progress_dir else None
            if reporter:
                reporter.start()
            try:
                result = pipeline.run()
                if not args.wait:
                    return None
                result.wait_until_finish()
            except Exception as error:
                if job_error(error) is None:
                    reason = one_line(error)
                    _record_failure(args, reason, started)
                    raise JobFailed(f"the job failed: {reason}") from error
                raise
            finally:
                if reporter:
                    reporter.stop()  # before the with block closes the stream it writes to
    finally:
        if reporter:
            reporter.stop()
        if progress_dir:
            shutil.rmtree(progress_dir, ignore_errors=True)
    from beam_curator.output.directory import read_stats

    return read_stats(args.output)


def _record_failure(args: argparse.Namespace, reason: str, started: float) -> None:
    """A failed run's `_stats.json` (status failed, the reason, and the counts of the partitions it
    committed, from their manifests) and report, written by the launcher: the job did not get to its
    last step. So on local runners and `--wait` runs only."""
    from beam_curator import storage
    from beam_curator.output.layout import REPORT_DIR, STATS_FILE
    from beam_curator.output.manifest import read_manifests
    from beam_curator.output.stats import Counts, utc

    try:
        counts = Counts.total(manifest.typed_counts() for manifest in read_manifests(args.output))
        finished = time.time()
        stats = RunStats.from_counts(counts, timings={}, shards=0, seconds=finished - started, started=utc(started),
                                     finished=utc(finished), inputs=list(args.inputs), status="failed",
                                     reason=f"{reason} (the figures count the partitions committed before it failed)")
        if args.report:
            stats.report = storage.join(args.output, REPORT_DIR, "index.html")
        storage.write_atomically(storage.join(args.output, STATS_FILE), stats.to_json().encode())
        if args.report:
            from beam_curator.report.page import write_report

            write_report(args.output)
    except Exception:  # the run's own error is the one to report
        _LOG.warning("could not record the failure in %s", args.output, exc_info=True)


def prune_options(args: argparse.Namespace) -> argparse.Namespace:
    """The curate job's options for a `prune` command: its own, and curate's defaults for the rest."""
    own = {name: getattr(args, name) for name in ("inputs", "output", "remove_duplicates", "images_per_tar",
                                                  "overwrite", "resume", "max_failed_fraction", "progress", "report",
                                                  "wait", "log_level")}
    options = from_python("curate", own)
    options.command, options.spelling = "prune", _spelling(args)
    return options


def curate(inputs: str | Sequence[str], output: str, *, stages: Sequence = (), pipeline_args: Sequence[str] = (),
           **options: Any) -> RunStats:
    """Curate shards in Python: the `beam-curator curate` job, with `stages` (ImageBatch -> ImageBatch
    PTransforms) between reader and writer. options are the command's, with underscores
    (images_per_tar=500, overwrite=True, ...; docs/CLI.md lists them); pipeline_args are Beam's
    (["--direct_num_workers=2"]). Returns the run's RunStats. OptionError (a ValueError) names an
    unknown option or an impossible value; JobFailed or FailureThresholdExceeded when the job fails."""
    given = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    values = {"progress": False, **options, "inputs": [os.fspath(path) for path in given], "output": os.fspath(output)}
    args = from_python("curate", values)
    args.spelling = PYTHON
    stats = run(args, list(pipeline_args), stages=stages)
    assert stats is not None  # curate() waits for the job
    return stats
