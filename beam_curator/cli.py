"""The `beam-curator` command: `curate` shards into curated shards, `export-models` for its model stages,
`make-sample` a dataset to try it on."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from beam_curator.errors import job_error
from beam_curator.formats.decoding import DEFAULT_MAX_IMAGE_PIXELS  # the core modules import no Beam, no DALI
from beam_curator.formats.webdataset import DEFAULT_MAX_MEMBER_BYTES
from beam_curator.jobs.curate import ISOLATE_DECODER, SCORES, build_pipeline, build_stages, run
from beam_curator.output.stats import RunStats

__all__ = ["RunStats", "build_parser", "build_pipeline", "build_stages", "console_main", "curate_parser", "main"]

_LOG = logging.getLogger(__name__)


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
    reader.add_argument("--isolate-decoder", choices=sorted(ISOLATE_DECODER), default="auto",
                        help="decode in a child process, so a native decoder crash fails one image "
                        "(auto: on the GPU only)")
    basic = curate.add_argument_group("basic filters", "ImageSizeFilterStage and CaptionFilterStage; each "
                                      "dropped image gets a filter record")
    basic.add_argument("--min-size", type=int, metavar="N", help="drop images whose shortest side is under N pixels")
    basic.add_argument("--max-aspect-ratio", type=float, metavar="R", help="drop images with max(w,h)/min(w,h) over R")
    basic.add_argument("--max-pixels", type=int, metavar="N", help="drop images of more than N pixels (w x h)")
    basic.add_argument("--min-caption-words", type=int, metavar="N",
                       help="drop samples whose .txt caption has fewer than N words (or no caption)")
    basic.add_argument("--min-caption-chars", type=int, metavar="N",
                       help="drop samples whose caption has fewer than N characters (or no caption)")
    basic.add_argument("--max-caption-chars", type=int, metavar="N", help="drop samples whose caption is longer")
    dedup = curate.add_argument_group("dedup", "fingerprints for `beam-curator dedup`, and removing what it found")
    dedup.add_argument("--phash", action="store_true",
                       help="store each image's 64-bit perceptual hash in the parquet's phash column (ImagePHashStage)")
    dedup.add_argument("--remove-duplicates", metavar="REMOVAL_DIR",
                       help="drop the images listed in REMOVAL_DIR/*.parquet (beam-curator dedup's output), each "
                       "with a filter record (ImageDuplicatesRemovalStage)")
    models = curate.add_argument_group(
        "models", "CLIP embeddings and the aesthetic, NSFW and CLIP-score filters (ImageEmbeddingStage, "
        "ImageAestheticFilterStage, ImageNSFWFilterStage, ImageTextSimilarityFilterStage) on the models of "
        "MODEL_DIR (beam-curator export-models); nothing here runs without --model-dir")
    models.add_argument("--model-dir", metavar="MODEL_DIR", help="the directory export-models wrote (local, gs://, s3://)")
    models.add_argument("--embed", action="store_true", help="store the CLIP embedding of each image in the parquet")
    models.add_argument("--scores", metavar="LIST", default="",
                        help=f"comma-separated scores to compute without filtering: {', '.join(SCORES)}")
    models.add_argument("--aesthetic-threshold", type=float, metavar="X",
                        help="keep images with aesthetic_score >= X")
    models.add_argument("--nsfw-threshold", type=float, metavar="X", help="keep images with nsfw_score < X")
    models.add_argument("--clip-score-threshold", type=float, metavar="X",
                        help="keep images whose CLIP image-caption similarity is >= X (samples without a caption "
                        "are kept unless --drop-uncaptioned)")
    models.add_argument("--drop-uncaptioned", action="store_true",
                        help="with the CLIP score: drop samples that have no .txt caption")
    models.add_argument("--model-batch-size", type=int, default=32,
                        help="images per model call (model_inference_batch_size)")
    curate.add_argument("--stage", action="append", metavar="MODULE:NAME",
                        help="a curation stage between reader and writer: an ImageBatch -> ImageBatch PTransform, "
                        "or a function of no arguments returning one (repeatable; applied in order)")
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
    writer.add_argument("--resume", action="store_true",
                        help="finish an earlier run into DIR that was killed: skip the partitions it committed "
                        "(same inputs and options; needs --deterministic-name)")
    writer.add_argument("--write-index", action="store_true", help="write DALI's index (.idx) beside each tar")
    writer.add_argument("--writer-mode", choices=["auto", "fused", "keyed"], default="auto",
                        help="fused: pack batches in the reader's bundles; keyed: gather each partition by a "
                        "shuffle of encoded bytes first (needed behind a Reshuffle); auto: chosen from the pipeline")
    writer.add_argument("--output-format", choices=["original", "jpg"], default="original",
                        help="jpg: every image a .jpg member (non-JPEG images encoded at --jpeg-quality), "
                        "so every sample has the same members; original: bytes pass through")
    curate.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show progress while running (default: on for local runners)")
    curate.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                        help="write DIR/_report/index.html, the run report, at the end (needs --wait)")
    curate.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                        help="wait for the job to finish and print its summary (--no-wait: submit and return)")
    curate.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info",
                        help="info: a line per phase, warnings once; debug: also one line per shard and "
                        "Beam's own messages")

    for action in curate._actions:  # "N" reads better in --help than FILES_PER_PARTITION
        if action.metavar is None and action.type in (int, float):
            action.metavar = "N" if action.type is int else "X"

    export = commands.add_parser(
        "export-models", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="export a Hugging Face CLIP checkpoint and the aesthetic and NSFW heads to ONNX (MODEL_DIR)",
        description="Export CLIP's image and text towers, the tokenizer and the heads to ONNX files plus a "
        "manifest, for curate --model-dir. Needs torch and transformers: pip install 'beam-curator[export]'.")
    export.add_argument("--clip", metavar="HF_DIR", help="a Hugging Face CLIP checkpoint directory "
                        "(config.json, weights, tokenizer and preprocessor files), e.g. openai/clip-vit-large-patch14")
    export.add_argument("--aesthetic", metavar="FILE", help="the LAION improved aesthetic predictor's state dict "
                        "(.safetensors or .pth)")
    export.add_argument("--nsfw", metavar="FILE", help="the LAION CLIP-based NSFW detector's state dict (torch port; "
                        ".safetensors or .pth)")
    export.add_argument("--fp16", action="store_true", help="the CLIP towers in float16 (for GPU workers)")
    export.add_argument("--from-hub", metavar="DOWNLOAD_DIR", help="download NeMo Curator's checkpoints "
                        "(ViT-L/14, the aesthetic and NSFW heads) into DOWNLOAD_DIR first (needs internet)")
    export.add_argument("--output", required=True, metavar="MODEL_DIR", help="where to write (local, gs://, s3://)")

    dedup = commands.add_parser(
        "dedup", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="find duplicate images in curated outputs (their parquet only) and write removal lists",
        description="Find duplicates among the images of curated output directories, from their parquet "
        "(sha256, phash or embedding; the tars are never opened), as a Beam pipeline (Beam's options as for "
        "curate), and write REMOVAL_DIR/duplicates-*.parquet (id, kept_id, method, distance) for "
        "curate --remove-duplicates and prune. docs/DEDUP.md explains the methods.")
    dedup.add_argument("inputs", nargs="+", metavar="DIR", help="directories curate wrote (local, gs://, s3://)")
    dedup.add_argument("--output", required=True, metavar="REMOVAL_DIR", help="where the removal lists go")
    dedup.add_argument("--method", choices=["exact", "perceptual", "semantic"], default="exact",
                       help="exact: same sha256; perceptual: phash within --max-hamming bits (curate --phash); "
                       "semantic: SemDeDup on the CLIP embeddings (curate --embed)")
    dedup.add_argument("--max-hamming", type=int, default=6, metavar="K", help="perceptual: most differing bits")
    dedup.add_argument("--eps", type=float, default=0.01, metavar="E",
                       help="semantic: cosine similarity >= 1 - E is a duplicate")
    dedup.add_argument("--n-clusters", type=int, default=None, metavar="N",
                       help="semantic: k-means clusters (default: one per 10,000 images, at least 1; the number "
                       "used is printed and written to _dedup.json)")
    dedup.add_argument("--keep", choices=["largest", "smallest-id", "hard", "easy", "random"], default="largest",
                       help="which copy of a duplicate group stays: largest (most pixels, then larger file, then "
                       "smaller id) or smallest-id; semantic also: hard (farthest from its centroid), easy (nearest), "
                       "random")
    dedup.add_argument("--sample-size", type=int, default=100_000, metavar="N",
                       help="semantic: embeddings k-means is fitted on")
    dedup.add_argument("--seed", type=int, default=0, help="semantic: k-means and random ranking seed")
    dedup.add_argument("--output-shards", type=int, default=16, metavar="N", help="removal files to spread ids over")
    dedup.add_argument("--overwrite", action="store_true", help="replace the removal lists of an earlier run")

    prune = commands.add_parser(
        "prune", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="apply a removal list to curated output without decoding: kept samples byte-identical",
        description="Repack curated output without the images a removal list (beam-curator dedup) names: no "
        "image is decoded, kept samples' members are byte-identical and their parquet rows keep every column; "
        "tars, names, commit, records (_filtered/) and _stats.json as curate writes them.")
    prune.add_argument("inputs", nargs="+", metavar="DIR", help="directories curate wrote (local, gs://, s3://)")
    prune.add_argument("--remove-duplicates", required=True, metavar="REMOVAL_DIR", help="what beam-curator dedup wrote")
    prune.add_argument("--output", required=True, metavar="OUT", help="where the pruned output goes")
    prune.add_argument("--images-per-tar", type=int, default=1000, metavar="N", help="images per output tar")
    prune.add_argument("--overwrite", action="store_true", help="replace the shards of an earlier run in OUT")

    report = commands.add_parser("report", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                 help="write the run report (DIR/_report/index.html) of an existing output")
    report.add_argument("directory", metavar="DIR", help="a directory curate or prune wrote (local, gs://, s3://)")
    report.add_argument("--sheet-size", type=int, default=48, metavar="N", help="thumbnails per contact sheet")

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


def unknown_options(beam_args: Sequence[str], parser: argparse.ArgumentParser, command: str = "curate") -> list[str]:
    """Messages for the options in beam_args that neither the command nor Beam's PipelineOptions knows,
    each with the closest known option; empty when all are known. Imports no Beam."""
    import difflib

    from beam_curator.jobs.beam_options import BEAM_OPTIONS

    (subparsers,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    ours = [option for action in subparsers.choices[command]._actions for option in action.option_strings
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
    if args.command in ("curate", "dedup", "prune"):
        problems = unknown_options(beam_args, parser, args.command)
        if problems:  # before anything is imported or built: a typo must not start a job
            for problem in problems:
                print(f"beam-curator {args.command}: error: {problem}", file=sys.stderr)
            print(f"(options that are not {args.command}'s must be Apache Beam pipeline options; see "
                  f"beam-curator {args.command} --help)", file=sys.stderr)
            return 2
    if args.command == "dedup":
        from beam_curator.jobs.dedup import run_dedup, summary_line

        try:
            summary = run_dedup(args, beam_args)
        except (ValueError, FileNotFoundError, FileExistsError) as error:
            print(f"beam-curator dedup: error: {error}", file=sys.stderr)
            return 2
        except Exception as error:
            found = job_error(error)
            if found is None:
                raise
            print(f"beam-curator dedup: error: {found[1]}", file=sys.stderr)
            return found[0].exit_status
        print(summary_line(summary))
        return 0
    if args.command == "prune":
        from beam_curator.transforms.io.curated_reader import CuratedShardReader

        curate_args = curate_parser(build_parser()).parse_args(
            [*args.inputs, "--output", args.output, "--images-per-tar", str(args.images_per_tar),
             "--remove-duplicates", args.remove_duplicates, "--no-progress", *(["--overwrite"] if args.overwrite else [])])
        curate_args.command = "prune"
        return _run_and_report(curate_args, beam_args, reader=CuratedShardReader(batch_size=args.images_per_tar))
    if args.command == "report":
        from beam_curator.report.page import write_report

        if beam_args:
            raise SystemExit(f"report: unrecognized arguments: {' '.join(beam_args)}")
        try:
            print(f"wrote {write_report(args.directory, sheet_size=args.sheet_size)}")
        except FileNotFoundError as error:
            print(f"beam-curator report: error: {args.directory} has no run to report on ({error})", file=sys.stderr)
            return 2
        return 0
    if args.command == "export-models":
        if beam_args:
            raise SystemExit(f"export-models: unrecognized arguments: {' '.join(beam_args)}")
        return _export_models(args)
    if args.command == "make-sample":
        if beam_args:
            raise SystemExit(f"make-sample: unrecognized arguments: {' '.join(beam_args)}")
        from beam_curator.sample import make_sample_dataset

        paths = make_sample_dataset(
            args.directory, shards=args.shards, images_per_shard=args.images_per_shard, seed=args.seed
        )
        print(f"wrote {len(paths)} shard(s) of {args.images_per_shard} images to {args.directory}")
        return 0
    return _run_and_report(args, beam_args)


def _run_and_report(args: argparse.Namespace, beam_args: list[str], reader=None) -> int:
    """Run a curate (or prune) job and print its summary; the command's exit status."""
    try:
        stats = run(args, beam_args, reader=reader)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"beam-curator: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        found = job_error(error)
        if found is None or found[0].__name__ == "JobFailed":
            raise
        kind, message = found
        print(f"beam-curator: error: {message}", file=sys.stderr)
        return kind.exit_status
    if stats is None:
        print("submitted; the summary is not available without --wait")
        return 0
    report = None
    if args.report:
        from beam_curator.report.page import write_report

        report = write_report(args.output)
    print(stats.summary())
    if stats.resumed_line():
        print(stats.resumed_line())
    for line in stats.stage_lines():
        print(line)
    removal = getattr(args, "remove_duplicates", None)
    listed = (stats.options.get("checked") or {}).get("image_dedup_filter")
    if removal and listed is not None:
        matched = int(stats.stages.get("image_dedup_filter", {}).get("dropped", 0))
        print(f"removal list {removal}: matched {matched} of {listed} listed id(s)")
    if report:
        print(f"report: {report}")
    print(stats.reconciliation())  # last: the run's verdict
    return 0 if stats.reconciles else 3


def _export_models(args: argparse.Namespace) -> int:
    from beam_curator.models.export import download_from_hub, export_models

    sources = None
    if args.from_hub:
        sources = download_from_hub(args.from_hub)
        args.clip, args.aesthetic, args.nsfw = (args.clip or sources["clip"], args.aesthetic or sources["aesthetic"],
                                                args.nsfw or sources["nsfw"])
    if not args.clip:
        print("beam-curator export-models: error: --clip HF_DIR (or --from-hub DOWNLOAD_DIR) is required",
              file=sys.stderr)
        return 2
    try:
        manifest = export_models(args.clip, args.output, aesthetic=args.aesthetic, nsfw=args.nsfw, sources=sources,
                                 fp16=args.fp16)
    except (ValueError, FileNotFoundError, ImportError, OSError) as error:
        print(f"beam-curator export-models: error: {error}", file=sys.stderr)
        return 2
    print(f"exported {', '.join(manifest['files'])} ({manifest['embedding_dim']}-dimensional embeddings, "
          f"{manifest['dtype']}) to {args.output}")
    return 0


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


