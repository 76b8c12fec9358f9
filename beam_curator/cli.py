"""The `beam-curator` command: `curate` shards into curated shards, `make-sample` a dataset to try it on."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from beam_curator.decoding import DEFAULT_MAX_IMAGE_PIXELS  # the core modules import no Beam, no DALI
from beam_curator.leftovers import find_leftovers, make_progress_dir, remove_stale_progress_dirs, write_owner
from beam_curator.worker_output import worker_chatter_filtered
from beam_curator.webdataset import DEFAULT_MAX_MEMBER_BYTES

__all__ = ["RunStats", "build_parser", "build_pipeline", "build_stages", "console_main", "curate", "curate_parser", "main"]

DEFAULT_RUNNER = "FnApiRunner"  # local and offline; Beam's DirectRunner first tries to download Prism
_LOCAL_RUNNERS = {"FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner", "PortableRunner"}
_IN_PROCESS_RUNNERS = _LOCAL_RUNNERS - {"PortableRunner"}  # the job dies with the CLI's process
_LOG = logging.getLogger(__name__)
PROGRESS_EVERY_S = 30.0  # a plain progress line when stderr is not a terminal
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
    images_decoded_by_pillow: int = 0  # DALI refused them, or their structure kept them from DALI

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
    from beam_curator import __version__

    parser = argparse.ArgumentParser(
        prog="beam-curator",
        description="Curate WebDataset image shards on Apache Beam. Beam's own options "
        "(--runner, --direct_num_workers, --project, ...) go to Beam's PipelineOptions.",
    )
    parser.add_argument("--version", action="version", version=f"beam-curator {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    curate = commands.add_parser("curate", help="read, decode and write curated tar + parquet shards",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    reader.add_argument("--reader-verbose", action=argparse.BooleanOptionalAction, default=False,
                        help="log one line per shard read at INFO (else at DEBUG)")
    reader.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                        help="fail images whose header claims more pixels (default: Pillow's bomb limit)")
    reader.add_argument("--max-member-bytes", type=int, default=DEFAULT_MAX_MEMBER_BYTES,
                        help="fail tar members larger than this, unread")
    reader.add_argument("--max-failed-fraction", type=float, default=1.0,
                        help="fail the job when more than this fraction of the samples failed "
                        "(ImageReaderStage.with_exception_handling(threshold); 1.0: never)")
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
    writer.add_argument("--output-format", choices=["original", "jpg"], default="original",
                        help="jpg: every image a .jpg member (non-JPEG images encoded at --jpeg-quality), "
                        "so every sample has the same members; original: bytes pass through")
    curate.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show progress while running (default: on for local runners)")
    curate.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                        help="wait for the job to finish and print its summary (--no-wait: submit and return)")
    curate.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info",
                        help="info: a line per phase, warnings once; debug: also one line per shard and "
                        "Beam's own messages")

    for action in curate._actions:  # "N" reads better in --help than FILES_PER_PARTITION
        if action.metavar is None and action.type in (int, float):
            action.metavar = "N" if action.type is int else "X"

    sample = commands.add_parser("make-sample", help="write a small sample WebDataset to try the pipeline on",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sample.add_argument("directory", metavar="DIR")
    sample.add_argument("--shards", type=int, default=3)
    sample.add_argument("--images-per-shard", type=int, default=40)
    sample.add_argument("--seed", type=int, default=0)
    return parser


def curate_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `curate` subcommand's parser inside the one build_parser() returns."""
    (subparsers,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return subparsers.choices["curate"]


def unknown_options(beam_args: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """Messages for the options in beam_args that neither `curate` nor Beam's PipelineOptions knows,
    each with the closest known option; empty when all are known. Imports no Beam."""
    import difflib

    from beam_curator.beam_options import BEAM_OPTIONS

    ours = [option for action in curate_parser(parser)._actions for option in action.option_strings
            if option.startswith("--")]
    known = ours + [f"--{name}" for name in sorted(BEAM_OPTIONS)]
    messages = []
    for token in beam_args:
        if not token.startswith("-") or token == "-" or _is_number(token):
            continue  # a value of the option before it
        name = token.split("=", 1)[0]
        if name.startswith("--") and name[2:] in BEAM_OPTIONS:
            continue
        guesses = difflib.get_close_matches(name.replace("_", "-"), ours, n=1, cutoff=0.75) or \
            difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        messages.append(f"unrecognized option {name}" + (f" (did you mean {guesses[0]}?)" if guesses else ""))
    return messages


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


class _DropKnownNoise(logging.Filter):
    """Beam logs this on every import, about a GCP client library the job does not use."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("apitools not found")


def configure_logging(level: str = "info") -> None:
    """beam_curator's messages at `level`; Beam's at WARNING (INFO with debug); known noise dropped."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_DropKnownNoise())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    logging.getLogger("beam_curator").setLevel(getattr(logging, level.upper()))
    # The local job service repeats each worker warning as a proto dump: the worker's own line is enough.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(
        logging.INFO if level == "debug" else logging.ERROR)
    if level == "debug":
        logging.getLogger("apache_beam").setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    configure_logging(getattr(args, "log_level", "info"))
    if args.command == "curate":
        problems = unknown_options(beam_args, parser)
        if problems:  # before anything is imported or built: a typo must not start a job
            for problem in problems:
                print(f"beam-curator curate: error: {problem}", file=sys.stderr)
            print("(options that are not curate's must be Apache Beam pipeline options; see "
                  "beam-curator curate --help)", file=sys.stderr)
            return 2
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
    except Exception as error:
        # Runners that run workers elsewhere re-raise it as a RuntimeError holding its text.
        if "FailureThresholdExceeded" not in f"{type(error).__name__}: {error}":
            raise
        message = next((line for line in str(error).splitlines() if "samples failed" in line), str(error))
        print(f"beam-curator: error: {message.split('FailureThresholdExceeded: ')[-1]}", file=sys.stderr)
        return 4
    if stats is None:
        print("submitted; the summary is not available without --wait")
        return 0
    print(stats.summary())
    print(stats.reconciliation())
    return 0 if stats.reconciles else 3


def console_main() -> None:
    """The `beam-curator` command (and `python -m beam_curator`). It leaves without the interpreter's
    teardown, which takes ~0.6 s once Beam and DALI are loaded and has nothing left to do: every file
    is closed and the summary printed by then."""
    try:
        code = main()
    except SystemExit as stop:  # argparse's usage errors, --help, --version
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
        code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def _beam_option(beam_args: list[str], name: str) -> str | None:
    """The value of Beam option --name in beam_args (`--name=value` or `--name value`), or None."""
    for index, arg in enumerate(beam_args):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and index + 1 < len(beam_args):
            return beam_args[index + 1]
    return None


def _runner_name(beam_args: list[str]) -> str | None:
    return _beam_option(beam_args, "runner")


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
        output_format=None if args.output_format == "original" else args.output_format,
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
    _clean_leftovers(args.output)
    partitioning, reader, writer = build_stages(args, progress_dir=progress_dir)
    total_shards = sum(len(task.data) for task in partitioning.partitions())
    _prepare_failures_dir(args.output, overwrite=args.overwrite)
    # ImageBatch, fused with the writer: pixels never cross a shuffle
    batches, read_failures = pipeline | "FilePartitioning" >> partitioning | "ImageReader" >> reader.with_exception_handling(
        threshold=args.max_failed_fraction)
    # FileGroupTask of each committed tar + parquet pair
    _, write_failures = batches | "ImageWriter" >> writer.with_exception_handling()
    (read_failures, write_failures) | "AllFailures" >> beam.Flatten() | "WriteFailures" >> WriteFailures(args.output)
    runner = _runner_name(beam_args) or DEFAULT_RUNNER
    write_owner(writer.temp_dir, runner=runner, local=runner.split(".")[-1] in _IN_PROCESS_RUNNERS)
    return pipeline, total_shards


def _clean_leftovers(output: str) -> None:
    """Remove what crashed runs left (see beam_curator.leftovers); say what is kept and why."""
    from beam_curator import storage

    for leftover in find_leftovers(output):
        if leftover.removable:
            storage.delete_tree([leftover.path])
            _LOG.warning("removed %s, left by an earlier run that did not finish: %s", leftover.path, leftover.why)
        else:
            _LOG.warning("%s was left by another run and is kept, because %s; remove it yourself if no job "
                         "is writing into %s", leftover.path, leftover.why, output)


def curate(args: argparse.Namespace, beam_args: list[str]) -> RunStats | None:
    """Run the job; its RunStats, or None with --no-wait (the job was only submitted)."""
    from beam_curator import storage

    runner = _runner_name(beam_args)
    if runner is None:
        beam_args = [f"--runner={DEFAULT_RUNNER}", *beam_args]
        runner = DEFAULT_RUNNER
    show_progress = args.progress if args.progress is not None else runner.split(".")[-1] in _LOCAL_RUNNERS
    remove_stale_progress_dirs()
    progress_dir = make_progress_dir() if show_progress else None

    reporter = None
    worker_processes = _beam_option(beam_args, "direct_running_mode") == "multi_processing"
    try:
        pipeline, total_shards = build_pipeline(args, beam_args, progress_dir=progress_dir)
        with worker_chatter_filtered(worker_processes and args.log_level != "debug") as terminal:
            started = time.monotonic()
            reporter = _ProgressReporter(progress_dir, total_shards, started, terminal) if progress_dir else None
            if reporter:
                reporter.start()
            result = pipeline.run()
            if not args.wait:
                return None
            result.wait_until_finish()
            if reporter:
                reporter.stop()  # before the with block closes the stream it writes to
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
        images_decoded_by_pillow=values.get("images_decoded_by_pillow", 0),
    )


class _ProgressReporter(threading.Thread):
    """Sums the workers' progress files: a progress bar on a terminal (refreshed every second), else a
    plain line every PROGRESS_EVERY_S seconds."""

    def __init__(self, directory: str, total_shards: int, started: float, stream=None):
        super().__init__(name="beam_curator-progress", daemon=True)
        self._directory = directory
        self._total = total_shards
        self._start_time = started
        self._stream = stream or sys.stderr
        self._done = threading.Event()

    def run(self) -> None:
        if not self._stream.isatty():
            while not self._done.wait(PROGRESS_EVERY_S):
                print(self.line(*self.read()), file=self._stream, flush=True)
            return
        from tqdm import tqdm

        with tqdm(total=self._total, unit="shard", file=self._stream, dynamic_ncols=True, leave=False) as bar:
            while True:
                stopping = self._done.wait(1.0)
                shards, images = self.read()
                elapsed = max(time.monotonic() - self._start_time, 1e-9)
                bar.update(shards - bar.n)
                bar.set_postfix_str(f"{images} images, {images / elapsed:.0f} images/s", refresh=True)
                if stopping:
                    return

    def line(self, shards: int, images: int) -> str:
        """`progress: 3/8 shards (38%), 750 images, 124.1 images/s, ETA 0:00:10`."""
        elapsed = max(time.monotonic() - self._start_time, 1e-9)
        percent = 100 * shards / self._total if self._total else 100.0
        eta = (f"{datetime.timedelta(seconds=round(elapsed * (self._total - shards) / shards))}"
               if 0 < shards < self._total else "-" if not shards else "0:00:00")
        return (f"progress: {shards}/{self._total} shards ({percent:.0f}%), {images} images, "
                f"{images / elapsed:.1f} images/s, ETA {eta}")

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
        if self.is_alive():
            self.join(timeout=5)
