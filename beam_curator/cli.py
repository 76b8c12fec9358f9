"""The `beam-curator` command: `curate` shards, `dedup` and `prune` curated output, `report` on it,
`export-models` for the model stages, `make-sample` a dataset to try it on.

The parsers are made from the option table (beam_curator.jobs.options). Every error a user can fix is
one line on stderr and a non-zero exit status (docs/CLI.md lists them), found before any output is
created; `--log-level debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import atexit
import difflib
import logging
import os
import sys
from collections.abc import Sequence

from beam_curator.errors import EXIT_STATUSES, job_error
from beam_curator.jobs.options import CLI, COMMANDS, OptionError, add_arguments, check_dependencies, command_options

__all__ = ["EXIT_STATUSES", "UsageError", "build_parser", "console_main", "main", "parse_command"]

_LOG = logging.getLogger(__name__)
# What a user can fix: one line, exit status 2.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, ImportError,
               PermissionError)
_BEAM_COMMANDS = ("curate", "dedup", "prune")  # the others take no Beam option


class UsageError(Exception):
    """A command line that cannot be run: the message is the whole line to print."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line (naming --help) instead of usage + error."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    from beam_curator import __version__

    parser = _Parser(
        prog="beam-curator",
        description="Curate WebDataset image shards on Apache Beam. Beam's own options "
        "(--runner, --direct_num_workers, --project, ...) go to Beam's PipelineOptions. Exit statuses: "
        + "; ".join(f"{code}: {text.split(':')[0].split(' (')[0].split(';')[0]}" for code, text in EXIT_STATUSES.items())
        + " (docs/CLI.md).",
    )
    parser.add_argument("--version", action="version", version=f"beam-curator {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command, (summary, _) in COMMANDS.items():
        sub = commands.add_parser(command, help=summary, description=summary[0].upper() + summary[1:] + ".")
        add_arguments(sub, command)
    return parser


def _unknown_options(argv: Sequence[str], command: str) -> list[str]:
    """Messages for the options in argv that neither the command nor (for curate, dedup and prune)
    Beam's PipelineOptions knows, each with the closest known option. Imports no Beam."""
    from beam_curator.jobs.beam_options import BEAM_OPTIONS, JOB_SERVER_OPTIONS

    ours = [option.flag for option in command_options(command).values() if option.kind not in ("inputs",)
            and option.name != "directory"]
    ours += [f"--no-{option.flag[2:]}" for option in command_options(command).values() if option.kind == "bool"]
    ours += ["--help", "-h"]
    beam = BEAM_OPTIONS | JOB_SERVER_OPTIONS if command in _BEAM_COMMANDS else frozenset()
    messages = []
    for token in argv:
        if not token.startswith("-") or token == "-" or _is_number(token):
            continue  # a value, or a positional
        name = token.split("=", 1)[0]
        if name in ours or (name.startswith("--") and name[2:] in beam):
            continue
        guesses = difflib.get_close_matches(name.replace("_", "-"), ours, n=1, cutoff=0.75) or \
            difflib.get_close_matches(name, [f"--{option}" for option in sorted(beam)], n=1, cutoff=0.75)
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
    # Its errors are the job's own failure, which the CLI reports in one line.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(
        logging.INFO if level == "debug" else logging.CRITICAL)
    if level == "debug":
        logging.getLogger("apache_beam").setLevel(logging.INFO)


def parse_command(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """The command's options (with `spelling`: how messages name them) and the Beam options;
    UsageError for anything else."""
    argv = list(argv)
    parser = build_parser()
    command = next((token for token in argv if not token.startswith("-")), None)
    if command in COMMANDS:
        problems = _unknown_options(argv[argv.index(command) + 1:], command)
        if problems:  # before argparse: a typo must be named even when a required option then looks missing
            hint = (f"; options that are not {command}'s must be Apache Beam pipeline options"
                    if command in _BEAM_COMMANDS else "")
            raise UsageError(f"beam-curator {command}: error: {'; '.join(problems)}{hint} (see beam-curator "
                             f"{command} --help)")
    args, beam_args = parser.parse_known_args(argv)
    if beam_args and args.command not in _BEAM_COMMANDS:
        raise UsageError(f"beam-curator {args.command}: error: unrecognized arguments: {' '.join(beam_args)}")
    args.spelling = CLI
    try:
        check_dependencies(args.command, vars(args), CLI)
    except OptionError as error:
        raise UsageError(f"beam-curator {args.command}: error: {error}") from None
    return args, beam_args


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status (EXIT_STATUSES)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, beam_args = parse_command(argv)
    except UsageError as error:
        print(error, file=sys.stderr)
        return 2
    configure_logging(getattr(args, "log_level", "info"))
    try:
        return _COMMANDS[args.command](args, beam_args)
    except USER_ERRORS as error:
        _LOG.debug("the error's traceback", exc_info=True)
        print(f"beam-curator {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:
        found = job_error(error)
        if found is not None:
            kind, message = found
            _LOG.debug("the error's traceback", exc_info=True)
            print(f"beam-curator {args.command}: error: {message}", file=sys.stderr)
            return kind.exit_status
        if args.log_level == "debug":
            raise
        print(f"beam-curator {args.command}: error: the job failed: {_one_line(error)} (--log-level debug shows "
              "the traceback)", file=sys.stderr)
        return 1


def _one_line(error: BaseException) -> str:
    from beam_curator.errors import one_line

    return one_line(error)


def _curate(args: argparse.Namespace, beam_args: list[str]) -> int:
    from beam_curator.jobs.curate import run

    return _run_and_report(args, beam_args, run)


def _prune(args: argparse.Namespace, beam_args: list[str]) -> int:
    from beam_curator.jobs.curate import prune_options, run
    from beam_curator.transforms.io.curated_reader import CuratedShardReader

    curate_args = prune_options(args)
    return _run_and_report(curate_args, beam_args, run, reader=CuratedShardReader(batch_size=args.images_per_tar))


def _dedup(args: argparse.Namespace, beam_args: list[str]) -> int:
    from beam_curator.jobs.dedup import run_dedup, summary_line

    print(summary_line(run_dedup(args, beam_args)))
    return 0


def _report(args: argparse.Namespace, beam_args: list[str]) -> int:
    from beam_curator.report.page import write_report

    print(f"wrote {write_report(args.directory, sheet_size=args.sheet_size)}")
    return 0


def _export_models(args: argparse.Namespace, beam_args: list[str]) -> int:
    from beam_curator.models.export import download_from_hub, export_models

    if args.tiny:
        from beam_curator.models.tiny import export_tiny_models

        manifest = export_tiny_models(args.output)
    else:
        sources = None
        if args.from_hub:
            sources = download_from_hub(args.from_hub)
            args.clip, args.aesthetic, args.nsfw = (args.clip or sources["clip"], args.aesthetic or sources["aesthetic"],
                                                    args.nsfw or sources["nsfw"])
        if not args.clip:
            raise ValueError("--clip HF_DIR is required (or --from-hub DOWNLOAD_DIR, or --tiny to try without weights)")
        manifest = export_models(args.clip, args.output, aesthetic=args.aesthetic, nsfw=args.nsfw, sources=sources,
                                 fp16=args.fp16)
    print(f"exported {', '.join(manifest['files'])} ({manifest['embedding_dim']}-dimensional embeddings, "
          f"{manifest['dtype']}) to {args.output}")
    return 0


def _make_sample(args: argparse.Namespace, beam_args: list[str]) -> int:
    from beam_curator.sample import make_sample_dataset

    paths = make_sample_dataset(args.directory, shards=args.shards, images_per_shard=args.images_per_shard,
                                seed=args.seed)
    print(f"wrote {len(paths)} shard(s) of {args.images_per_shard} images to {args.directory}")
    return 0


_COMMANDS = {"curate": _curate, "prune": _prune, "dedup": _dedup, "report": _report, "export-models": _export_models,
             "make-sample": _make_sample}


def _run_and_report(args: argparse.Namespace, beam_args: list[str], run, reader=None) -> int:
    """Run a curate (or prune) job and print its summary; the command's exit status."""
    stats = run(args, beam_args, reader=reader)
    if stats is None:
        print("submitted; the summary is not available without --wait")
        return 0
    print(stats.summary())
    if stats.resumed_line():
        print(stats.resumed_line())
    for line in stats.stage_lines():
        print(line)
    listed = (stats.options.get("checked") or {}).get("image_dedup_filter")
    if args.remove_duplicates and listed is not None:
        matched = int(stats.stages.get("image_dedup_filter", {}).get("dropped", 0))
        print(f"removal list {args.remove_duplicates}: matched {matched} of {listed} listed id(s)")
    if stats.report:
        print(f"report: {stats.report}")
    for warning in stats.warnings():
        print(f"beam-curator {args.command}: warning: {warning}", file=sys.stderr)
    print(stats.reconciliation())  # last: the run's verdict
    return 0 if stats.reconciles else 3


def console_main() -> None:
    """The `beam-curator` command (and `python -m beam_curator`). It leaves without the interpreter's
    teardown, which takes ~0.6 s once Beam and DALI are loaded and has nothing left to do: every file
    is closed and the summary printed by then. Before it leaves it waits for any redirection of fd 2
    (the decoder's, beam_curator.formats.decoding) to end, so that nothing printed is lost."""
    try:
        code = main()
    except SystemExit as stop:  # argparse's --help, --version
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
        code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
    from beam_curator.formats.decoding import stderr_settled

    if "apache_beam.runners.portability.job_server" in sys.modules:
        # FlinkRunner and SparkRunner stop the job-server JVM they started in an atexit handler, which
        # os._exit would skip: the JVM would outlive the command. (Other runs skip them: ~0.6 s.)
        atexit._run_exitfuncs()
    with stderr_settled():
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
