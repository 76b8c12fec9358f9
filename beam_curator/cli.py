"""The `beam-curator` command: `curate` shards into curated shards, `make-sample` a dataset to try it on."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from beam_curator.decoding import DEFAULT_MAX_IMAGE_PIXELS  # the core modules import no Beam, no DALI
from beam_curator.webdataset import DEFAULT_MAX_MEMBER_BYTES

__all__ = ["RunStats", "build_parser", "build_pipeline", "build_stages", "curate", "main"]

DEFAULT_RUNNER = "FnApiRunner"  # local and offline; Beam's DirectRunner first tries to download Prism
_LOCAL_RUNNERS = {"FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner", "PortableRunner"}
PROGRESS_EVERY_S = 5.0
_ISOLATE_DECODER = {"auto": None, "always": True, "never": False}  # ImageReaderStage(isolate_decoder)


@dataclass
class RunStats:
    """What a curate run did; printed at the end and written to DIR/_stats.json.

    Every sample read ends up written, failed or filtered (dropped by a curation stage):
    samples_read == images_written + images_failed + images_filtered.
    """

    shards: int
    shards_read: int
    shards_failed: int  # damaged shards; their samples before the damage are counted as usual
    samples_read: int
    images_decoded: int
    images_failed: int  # samples with a failure record: not decodable, over a limit, no image, ...
    images_filtered: int
    images_written: int  # images in committed tars
    companions_failed: int  # companions left out (their images are written)
    members_failed: int  # link and device entries skipped
    tars_written: int
    seconds: float
    images_per_second: float

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

    def reconciliation(self) -> str:
        verdict = "ok" if self.reconciles else "MISMATCH: samples are unaccounted for"
        return (
            f"reconciliation: {self.samples_read} read = {self.images_written} written + {self.images_failed} "
            f"failed + {self.images_filtered} filtered: {verdict}"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beam-curator",
        description="Curate WebDataset image shards on Apache Beam. Unrecognised options "
        "(--runner, --direct_num_workers, --project, ...) go to Beam's PipelineOptions.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    curate = commands.add_parser("curate", help="read, decode and write curated tar + parquet shards")
    curate.add_argument("inputs", nargs="+", metavar="INPUT", help="shard files, directories or globs (local, gs://, s3://)")
    curate.add_argument("--output", required=True, metavar="DIR", help="output directory (local, gs://, s3://)")
    partitioning = curate.add_argument_group("FilePartitioningStage")
    partitioning.add_argument("--files-per-partition", type=int, default=1, help="shards per reader task")
    partitioning.add_argument("--file-extensions", default=".tar", help="comma-separated, e.g. .tar,.tar.gz")
    reader = curate.add_argument_group("ImageReaderStage")
    reader.add_argument("--dali-batch-size", type=int, default=100,
                        help="images per DALI batch and at most per ImageBatch")
    reader.add_argument("--num-threads", type=int, default=8, help="DALI decoding threads per worker process")
    reader.add_argument("--num-gpus-per-worker", type=float, default=0.25, help="0 forces CPU decoding")
    reader.add_argument("--reader-verbose", action=argparse.BooleanOptionalAction, default=True,
                        help="log one line per shard read")
    reader.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                        help="fail images whose header claims more pixels (default: Pillow's bomb limit)")
    reader.add_argument("--max-member-bytes", type=int, default=DEFAULT_MAX_MEMBER_BYTES,
                        help="fail tar members larger than this, unread")
    reader.add_argument("--isolate-decoder", choices=sorted(_ISOLATE_DECODER), default="auto",
                        help="decode in a child process, so a native decoder crash fails one image "
                        "(auto: on the GPU only)")
    writer = curate.add_argument_group("ImageWriterStage")
    writer.add_argument("--images-per-tar", type=int, default=1000,
                        help="images per output tar (every tar of a partition is full but its last)")
    writer.add_argument("--writer-verbose", action=argparse.BooleanOptionalAction, default=False,
                        help="log each tar written")
    writer.add_argument("--deterministic-name", action=argparse.BooleanOptionalAction, default=True,
                        help="same input and options give the same shard names")
    writer.add_argument("--remove-image-data", action=argparse.BooleanOptionalAction, default=False,
                        help="drop decoded pixels as soon as each image is written")
    writer.add_argument("--jpeg-quality", type=int, default=95, help="quality of re-encoded images")
    writer.add_argument("--force-reencode", action="store_true", help="re-encode every image from its pixels")
    writer.add_argument("--overwrite", action="store_true", help="replace the shards of an earlier run in DIR")
    writer.add_argument("--write-index", action="store_true", help="write DALI's index (.idx) beside each tar")
    curate.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show progress while running (default: on for local runners)")
    curate.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                        help="wait for the job to finish and print its summary (--no-wait: submit and return)")

    sample = commands.add_parser("make-sample", help="write a small sample WebDataset to try the pipeline on")
    sample.add_argument("directory", metavar="DIR")
    sample.add_argument("--shards", type=int, default=3)
    sample.add_argument("--images-per-shard", type=int, default=40)
    sample.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("beam_curator").setLevel(logging.INFO)
    args, beam_args = build_parser().parse_known_args(argv)
    if args.command == "make-sample":
        if beam_args:
            raise SystemExit(f"make-sample: unrecognized arguments: {' '.join(beam_args)}")
        from beam_curator.sample import make_sample_dataset

        paths = make_sample_dataset(
            args.directory, shards=args.shards, images_per_shard=args.images_per_shard, seed=args.seed
        )
        print(f"wrote {len(paths)} shard(s) of {args.images_per_shard} images to {args.directory}")
        return 0
    try:
        stats = curate(args, beam_args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"beam-curator: error: {error}", file=sys.stderr)
        return 2
    if stats is None:
        print("submitted; the summary is not available without --wait")
        return 0
    print(stats.summary())
    print(stats.reconciliation())
    return 0 if stats.reconciles else 3


def _runner_name(beam_args: list[str]) -> str | None:
    for index, arg in enumerate(beam_args):
        if arg.startswith("--runner="):
            return arg.split("=", 1)[1]
        if arg == "--runner" and index + 1 < len(beam_args):
            return beam_args[index + 1]
    return None


def build_stages(args: argparse.Namespace, *, progress_dir: str | None = None):
    """The (FilePartitioningStage, ImageReaderStage, ImageWriterStage) that `curate` args describe."""
    from beam_curator.transforms import FilePartitioningStage, ImageReaderStage, ImageWriterStage

    partitioning = FilePartitioningStage(
        args.inputs,
        files_per_partition=args.files_per_partition,
        file_extensions=[ext.strip() for ext in args.file_extensions.split(",") if ext.strip()],
    )
    reader = ImageReaderStage(
        dali_batch_size=args.dali_batch_size,
        verbose=args.reader_verbose,
        num_threads=args.num_threads,
        num_gpus_per_worker=args.num_gpus_per_worker,
        max_image_pixels=args.max_image_pixels,
        max_member_bytes=args.max_member_bytes,
        isolate_decoder=_ISOLATE_DECODER[args.isolate_decoder],
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
    )
    return partitioning, reader, writer


def build_pipeline(args: argparse.Namespace, beam_args: list[str], *, progress_dir: str | None = None):
    """The curate job as a Beam pipeline, built but not run: (pipeline, number of input shards).

    Touches no GPU: a Flex Template launcher, which has none, builds the job with this.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_curator.transforms import WriteFailures

    # The pipeline first: it hands its options (S3 endpoint, credentials, ...) to Beam's FileSystems,
    # which the listing of the inputs below already uses.
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
    partitioning, reader, writer = build_stages(args, progress_dir=progress_dir)
    total_shards = sum(len(task.data) for task in partitioning.partitions())
    _prepare_failures_dir(args.output, overwrite=args.overwrite)
    # ImageBatch, fused with the writer: pixels never cross a shuffle
    batches, read_failures = pipeline | "FilePartitioning" >> partitioning | "ImageReader" >> reader.with_exception_handling()
    # FileGroupTask of each committed tar + parquet pair
    _, write_failures = batches | "ImageWriter" >> writer.with_exception_handling()
    (read_failures, write_failures) | "AllFailures" >> beam.Flatten() | "WriteFailures" >> WriteFailures(args.output)
    return pipeline, total_shards


def curate(args: argparse.Namespace, beam_args: list[str]) -> RunStats | None:
    """Run the job; its RunStats, or None with --no-wait (the job was only submitted)."""
    from beam_curator import storage

    runner = _runner_name(beam_args)
    if runner is None:
        beam_args = [f"--runner={DEFAULT_RUNNER}", *beam_args]
        runner = DEFAULT_RUNNER
    show_progress = args.progress if args.progress is not None else runner.split(".")[-1] in _LOCAL_RUNNERS
    progress_dir = tempfile.mkdtemp(prefix="beam_curator-progress-") if show_progress else None

    reporter = None
    try:
        pipeline, total_shards = build_pipeline(args, beam_args, progress_dir=progress_dir)
        started = time.monotonic()
        reporter = _ProgressReporter(progress_dir, total_shards, started) if progress_dir else None
        if reporter:
            reporter.start()
        result = pipeline.run()
        if not args.wait:
            return None
        result.wait_until_finish()
    finally:
        if reporter:
            reporter.stop()
        if progress_dir:
            shutil.rmtree(progress_dir, ignore_errors=True)
    seconds = time.monotonic() - started
    stats = _stats_from_metrics(result, total_shards, seconds)
    with storage.create(storage.join(args.output, "_stats.json")) as handle:
        handle.write(json.dumps({**asdict(stats), "reconciles": stats.reconciles}, indent=2).encode())
    return stats


def _prepare_failures_dir(output: str, *, overwrite: bool) -> None:
    """Failure files of an earlier run are output too: stop, or with overwrite remove them."""
    from beam_curator import storage
    from beam_curator.transforms.failures import FAILURES_DIR

    old = storage.match_files(storage.join(output, FAILURES_DIR, "*.parquet"))
    if old and not overwrite:
        raise FileExistsError(
            f"{output} already holds {len(old)} failure file(s) of an earlier run under {FAILURES_DIR}/; "
            "choose another output directory or pass --overwrite"
        )
    storage.delete_tree(old)


def _stats_from_metrics(result, total_shards: int, seconds: float) -> RunStats:
    from beam_curator.transforms.metrics import query_counters

    values = query_counters(result)
    decoded = values.get("images_decoded", 0)
    write_failed = values.get("images_write_failed", 0)
    written = values.get("images_committed", 0)
    return RunStats(
        shards=total_shards,
        shards_read=values.get("shards_read", 0),
        shards_failed=values.get("shards_failed", 0),
        samples_read=values.get("samples_read", 0),
        images_decoded=decoded,
        images_failed=values.get("samples_failed", 0) + write_failed,
        images_filtered=decoded - values.get("images_written", 0) - write_failed,
        images_written=written,
        companions_failed=values.get("companions_failed", 0),
        members_failed=values.get("members_failed", 0),
        tars_written=values.get("tars_written", 0),
        seconds=round(seconds, 3),
        images_per_second=round(written / seconds, 2) if seconds > 0 else 0.0,
    )


class _ProgressReporter(threading.Thread):
    """Sums the workers' progress files and prints a line every PROGRESS_EVERY_S seconds."""

    def __init__(self, directory: str, total_shards: int, started: float):
        super().__init__(name="beam_curator-progress", daemon=True)
        self._directory = directory
        self._total = total_shards
        self._start_time = started
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(PROGRESS_EVERY_S):
            shards, images = self.read()
            elapsed = time.monotonic() - self._start_time
            print(
                f"progress: {shards}/{self._total} shards, {images} images, {images / elapsed:.1f} images/s",
                file=sys.stderr,
                flush=True,
            )

    def read(self) -> tuple[int, int]:
        shards = images = 0
        for name in os.listdir(self._directory):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(self._directory, name)) as handle:
                    figures = json.load(handle)
            except (OSError, ValueError):
                continue  # replaced while we read it; the next round sees it
            shards += figures["shards"]
            images += figures["images"]
        return shards, images

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=5)
