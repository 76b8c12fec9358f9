"""Every command's options, as data: the one table the CLI's parsers, `beam_curator.curate(**options)`,
prune, the Flex Template's metadata.json and docs/CLI.md are made from.

An Option has a name (the Python parameter; the flag is `--name-with-dashes`), a type, a default, the
range of values it takes, a help text, a group, and whether it shapes the output (recorded in each
partition's manifest, compared by --resume). Values are checked here, once, whoever gives them; a
message names the option as its user spelled it: `--nsfw-threshold` on the command line,
`nsfw_threshold` in Python (Spelling). Options that need another are checked by check_dependencies.

This module imports nothing heavy: `beam-curator --help` and a mistyped option stay fast.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from beam_curator.errors import CLI, PYTHON, Spelling

__all__ = ["COMMANDS", "Option", "OptionError", "Spelling", "check_dependencies", "check_value", "cli_reference",
           "command_options", "flex_template_metadata", "from_python", "shaping_values"]

# Defaults that other modules also use (kept here so that this module imports nothing).
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # Pillow's decompression-bomb limit (beam_curator.formats.decoding)
DEFAULT_MAX_MEMBER_BYTES = 256 * 1024 * 1024  # beam_curator.formats.webdataset
SCORES = ("aesthetic", "nsfw", "clip")
ISOLATE_DECODER = {"auto": None, "always": True, "never": False}  # ImageReaderStage(isolate_decoder)


class OptionError(ValueError):
    """An option's value is out of its range, of the wrong type, or needs another option."""




@dataclass(frozen=True)
class Option:
    """One option of a command.

    kind: "int", "float", "str", "path" (a path or URL), "flag" (off unless given), "bool" (on/off,
      `--x`/`--no-x`), "list" (repeatable), "inputs" (one or more positional paths), "choice".
    low, high: the inclusive range of a number (None: unbounded); open_high: high itself excluded.
    shapes_output: recorded in each partition's manifest (--resume compares them).
    template: a Flex Template parameter (False for what only makes sense on a terminal).
    """

    name: str
    kind: str
    default: Any = None
    help: str = ""
    group: str = ""
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    open_high: bool = False
    required: bool = False
    metavar: str | None = None
    shapes_output: bool = False
    template: bool = True
    range_text: str = ""  # how the range reads in messages and help, e.g. "a probability from 0 to 1"

    @property
    def flag(self) -> str:
        return CLI(self.name)

    def parse(self, text: str, spell: Spelling = CLI) -> Any:
        """A command-line or template value as this option's type, checked."""
        if self.kind in ("int", "float"):
            try:
                value = int(text) if self.kind == "int" else float(text)
            except ValueError:
                raise OptionError(f"{spell(self.name)} takes {'an integer' if self.kind == 'int' else 'a number'}, "
                                  f"got {text!r}") from None
            return check_value(self, value, spell)
        return check_value(self, text, spell)


def check_value(option: Option, value: Any, spell: Spelling = CLI) -> Any:
    """value, if the option takes it (a number in range, a known choice, the right type); OptionError
    naming the option as spelled and what it takes otherwise. None is the "not given" of optional ones."""
    name = spell(option.name)
    if value is None:
        if option.required:
            raise OptionError(f"{name} is required")
        return None
    if option.kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                option.kind == "int" and not isinstance(value, int)):
            raise OptionError(f"{name} takes {'an integer' if option.kind == 'int' else 'a number'}, got {value!r}")
        if not math.isfinite(value):
            raise OptionError(f"{name} takes a finite number, got {value!r}")
        too_low = option.low is not None and value < option.low
        too_high = option.high is not None and (value >= option.high if option.open_high else value > option.high)
        if too_low or too_high:
            raise OptionError(f"{name} takes {option.range_text or _range(option)}, got {value!r}")
        return float(value) if option.kind == "float" else value
    if option.kind == "choice":
        if value not in option.choices:
            raise OptionError(f"{name} takes one of {', '.join(option.choices)}, got {value!r}")
        return value
    if option.kind in ("flag", "bool"):
        if option.default is None and option.kind == "bool" and value is None:
            return None
        if not isinstance(value, bool):
            raise OptionError(f"{name} takes True or False, got {value!r}")
        return value
    if option.kind in ("list", "inputs"):
        values = [value] if isinstance(value, str) else list(value)
        if not all(isinstance(item, str) and item for item in values) or (option.kind == "inputs" and not values):
            raise OptionError(f"{name} takes {'one or more paths' if option.kind == 'inputs' else 'a list of text'}, "
                              f"got {value!r}")
        return values
    if not isinstance(value, str) or (option.kind == "path" and not value):
        value = str(value) if hasattr(value, "__fspath__") else value
        if not isinstance(value, str) or not value:
            raise OptionError(f"{name} takes {'a path' if option.kind == 'path' else 'text'}, got {value!r}")
    return value


def _range(option: Option) -> str:
    kind = "an integer" if option.kind == "int" else "a number"
    if option.low is not None and option.high is not None:
        return f"{kind} from {option.low:g} to {option.high:g}{' (excluded)' if option.open_high else ''}"
    if option.low is not None:
        return f"{kind} >= {option.low:g}"
    return f"{kind} <= {option.high:g}"


# --- the table --------------------------------------------------------------------------------------

def _positive(name, default, help_text, group, *, shapes=False, metavar="N", template=True) -> Option:
    return Option(name, "int", default, help_text, group, low=1, range_text="a positive integer", metavar=metavar,
                  shapes_output=shapes, template=template)


OUTPUT = Option("output", "path", None, "output directory (local, gs://, s3://; created if missing)", "input and output",
                required=True, metavar="DIR")
LOG_LEVEL = Option("log_level", "choice", "info", "info: a line per phase, warnings once; debug: also one line per "
                   "shard, Beam's own messages and tracebacks of errors", "run", choices=("debug", "info", "warning",
                                                                                        "error"))
PROGRESS = Option("progress", "bool", None, "show progress while running (default: on for local runners)", "run",
                  template=False)
WAIT = Option("wait", "bool", True, "wait for the job to finish and print its summary (--no-wait: submit and return)",
              "run", template=False)
REPORT = Option("report", "bool", True, "write DIR/_report/index.html, the run report, as the job's last step", "run")

CURATE = [
    Option("inputs", "inputs", None, "shard files, directories or globs (local, gs://, s3://); a beam_curator output "
           "found inside a directory is left out", "input and output", required=True, metavar="INPUT"),
    OUTPUT,
    _positive("files_per_partition", 1, "shards per reader task", "FilePartitioningStage", shapes=True),
    Option("file_extensions", "str", ".tar", "comma-separated, e.g. .tar,.tar.gz", "FilePartitioningStage",
           shapes_output=True, metavar="LIST"),
    _positive("dali_batch_size", 100, "images per DALI batch and at most per ImageBatch", "ImageReaderStage"),
    _positive("num_threads", 8, "DALI decoding threads per worker process", "ImageReaderStage"),
    Option("num_gpus_per_worker", "float", 0.25, "0 forces CPU decoding and models", "ImageReaderStage", low=0,
           range_text="a number >= 0", metavar="X"),
    Option("reader_verbose", "bool", False, "log one line per shard read at INFO (else at DEBUG)", "ImageReaderStage"),
    _positive("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS, "fail images whose header claims more pixels (Pillow's "
              "bomb limit by default)", "ImageReaderStage", shapes=True),
    _positive("max_member_bytes", DEFAULT_MAX_MEMBER_BYTES, "fail tar members larger than this, unread",
              "ImageReaderStage", shapes=True),
    Option("max_failed_fraction", "float", 1.0, "fail the run when more than this fraction of the samples read failed "
           "(1.0: never); the output is then not marked _SUCCESS", "ImageReaderStage", low=0, high=1,
           range_text="a fraction from 0 to 1", metavar="X"),
    Option("isolate_decoder", "choice", "auto", "decode in a child process, so a native decoder crash fails one image "
           "(auto: on the GPU only)", "ImageReaderStage", choices=tuple(ISOLATE_DECODER)),
    _positive("min_size", None, "drop images whose shortest side is under N pixels", "basic filters", shapes=True),
    Option("max_aspect_ratio", "float", None, "drop images with max(w,h)/min(w,h) over R", "basic filters", low=1,
           range_text="a ratio >= 1", metavar="R", shapes_output=True),
    _positive("max_pixels", None, "drop images of more than N pixels (w x h)", "basic filters", shapes=True),
    _positive("min_caption_words", None, "drop samples whose .txt caption has fewer than N words (or no caption)",
              "basic filters", shapes=True),
    _positive("min_caption_chars", None, "drop samples whose caption has fewer than N characters (or no caption)",
              "basic filters", shapes=True),
    _positive("max_caption_chars", None, "drop samples whose caption is longer", "basic filters", shapes=True),
    Option("phash", "flag", False, "store each image's 64-bit perceptual hash in the parquet's phash column "
           "(ImagePHashStage)", "dedup", shapes_output=True),
    Option("remove_duplicates", "path", None, "drop the images listed in REMOVAL_DIR/*.parquet (beam-curator dedup's "
           "output), each with a filter record (ImageDuplicatesRemovalStage)", "dedup", metavar="REMOVAL_DIR",
           shapes_output=True),
    Option("model_dir", "path", None, "the directory export-models wrote (local, gs://, s3://); the options below need "
           "it", "models", metavar="MODEL_DIR", shapes_output=True),
    Option("embed", "flag", False, "store the CLIP embedding of each image in the parquet", "models",
           shapes_output=True),
    Option("scores", "str", "", f"comma-separated scores to compute without filtering: {', '.join(SCORES)}",
           "models", metavar="LIST", shapes_output=True),
    Option("aesthetic_threshold", "float", None, "keep images with aesthetic_score >= X (LAION's predictor scores "
           "about 1 to 10)", "models", low=0, high=10, range_text="a score from 0 to 10", metavar="X",
           shapes_output=True),
    Option("nsfw_threshold", "float", None, "keep images with nsfw_score < X (a probability)", "models", low=0,
           high=1, range_text="a probability from 0 to 1", metavar="X", shapes_output=True),
    Option("clip_score_threshold", "float", None, "keep images whose CLIP image-caption cosine similarity is >= X "
           "(samples without a caption are kept unless --drop-uncaptioned)", "models", low=-1, high=1,
           range_text="a cosine from -1 to 1", metavar="X", shapes_output=True),
    Option("drop_uncaptioned", "flag", False, "with the CLIP score (--clip-score-threshold or --scores clip): drop "
           "samples that have no .txt caption", "models", shapes_output=True),
    _positive("model_batch_size", 32, "images per model call (model_inference_batch_size)", "models"),
    Option("stage", "list", None, "a curation stage between reader and writer: an ImageBatch -> ImageBatch "
           "PTransform, or a function of no arguments returning one (repeatable; applied in order)", "stages",
           metavar="MODULE:NAME", shapes_output=True),
    _positive("images_per_tar", 1000, "images per output tar (every tar of a partition is full but its last)",
              "ImageWriterStage", shapes=True),
    Option("writer_verbose", "bool", False, "log each tar written", "ImageWriterStage"),
    Option("deterministic_name", "bool", True, "same input and options give the same shard names", "ImageWriterStage",
           shapes_output=True),
    Option("remove_image_data", "bool", False, "drop decoded pixels as soon as each image is written",
           "ImageWriterStage", shapes_output=True),
    Option("jpeg_quality", "int", 95, "quality of re-encoded images", "ImageWriterStage", low=1, high=100,
           range_text="an integer from 1 to 100", metavar="N", shapes_output=True),
    Option("force_reencode", "flag", False, "re-encode every image from its pixels", "ImageWriterStage",
           shapes_output=True),
    Option("overwrite", "flag", False, "remove what an earlier run wrote into DIR before writing", "ImageWriterStage"),
    Option("resume", "flag", False, "finish an earlier run into DIR that was killed: skip the partitions it committed "
           "(same inputs and options; needs --deterministic-name)", "ImageWriterStage"),
    Option("write_index", "flag", False, "write DALI's index (.idx) beside each tar", "ImageWriterStage",
           shapes_output=True),
    Option("writer_mode", "choice", "auto", "fused: pack batches in the reader's bundles; keyed: gather each partition "
           "by a shuffle first, the image bytes spilled to the temporary directory (needed behind a Reshuffle, and on "
           "Flink and Spark); auto: chosen from the pipeline",
           "ImageWriterStage", choices=("auto", "fused", "keyed")),
    Option("output_format", "choice", "original", "jpg: every image a .jpg member (non-JPEG images encoded at "
           "--jpeg-quality), so every sample has the same members; original: bytes pass through", "ImageWriterStage",
           choices=("original", "jpg"), shapes_output=True),
    PROGRESS, REPORT, WAIT, LOG_LEVEL,
]

PRUNE = [
    Option("inputs", "inputs", None, "directories curate or prune wrote (local, gs://, s3://)", "input and output",
           required=True, metavar="DIR"),
    Option("remove_duplicates", "path", None, "what beam-curator dedup wrote", "input and output", required=True,
           metavar="REMOVAL_DIR", shapes_output=True),
    Option("output", "path", None, "where the pruned output goes", "input and output", required=True, metavar="OUT"),
    _positive("images_per_tar", 1000, "images per output tar", "ImageWriterStage", shapes=True),
    Option("overwrite", "flag", False, "remove what an earlier run wrote into OUT before writing", "ImageWriterStage"),
    Option("resume", "flag", False, "finish an earlier prune into OUT that was killed: skip the partitions it "
           "committed (same inputs and options)", "ImageWriterStage"),
    Option("max_failed_fraction", "float", 1.0, "fail the run when more than this fraction of the samples read failed "
           "(1.0: never)", "ImageReaderStage", low=0, high=1, range_text="a fraction from 0 to 1", metavar="X"),
    PROGRESS, REPORT, WAIT, LOG_LEVEL,
]

DEDUP = [
    Option("inputs", "inputs", None, "directories curate or prune wrote (local, gs://, s3://)", "input and output",
           required=True, metavar="DIR"),
    Option("output", "path", None, "where the removal lists go", "input and output", required=True,
           metavar="REMOVAL_DIR"),
    Option("method", "choice", "exact", "exact: same sha256; perceptual: phash within --max-hamming bits (curate "
           "--phash); semantic: SemDeDup on the CLIP embeddings (curate --embed)", "dedup",
           choices=("exact", "perceptual", "semantic")),
    Option("keep", "choice", "largest", "which copy of a duplicate group stays: largest (most pixels, then larger "
           "file, then smaller id) or smallest-id; semantic also: hard (farthest from its centroid), easy (nearest), "
           "random", "dedup", choices=("largest", "smallest-id", "hard", "easy", "random")),
    Option("max_hamming", "int", 6, "perceptual: most differing bits", "dedup", low=0, high=31,
           range_text="an integer from 0 to 31", metavar="K"),
    Option("eps", "float", 0.01, "semantic: cosine similarity >= 1 - E is a duplicate", "dedup", low=0, high=1,
           open_high=True, range_text="a number from 0 to 1 (1 excluded)", metavar="E"),
    _positive("n_clusters", None, "semantic: k-means clusters (default: one per 10,000 images, at least 1; the "
              "number used is printed and written to _dedup.json)", "dedup"),
    _positive("sample_size", 100_000, "semantic: embeddings k-means is fitted on", "dedup"),
    Option("seed", "int", 0, "semantic: k-means and random ranking seed", "dedup", metavar="N"),
    _positive("output_shards", 16, "removal files to spread ids over", "dedup"),
    Option("overwrite", "flag", False, "replace the removal lists of an earlier run", "dedup"),
    LOG_LEVEL,
]

REPORT_COMMAND = [
    Option("directory", "path", None, "a directory curate or prune wrote (local, gs://, s3://)", "input and output",
           required=True, metavar="DIR"),
    _positive("sheet_size", 48, "thumbnails per contact sheet", "report"),
    LOG_LEVEL,
]

EXPORT = [
    Option("clip", "path", None, "a Hugging Face CLIP checkpoint directory (config.json, weights, tokenizer and "
           "preprocessor files), e.g. openai/clip-vit-large-patch14", "models", metavar="HF_DIR"),
    Option("aesthetic", "path", None, "the LAION improved aesthetic predictor's state dict (.safetensors or .pth)",
           "models", metavar="FILE"),
    Option("nsfw", "path", None, "the LAION CLIP-based NSFW detector's state dict (torch port; .safetensors or .pth)",
           "models", metavar="FILE"),
    Option("fp16", "flag", False, "the CLIP towers in float16 (for GPU workers)", "models"),
    Option("from_hub", "path", None, "download NeMo Curator's checkpoints (ViT-L/14, the aesthetic and NSFW heads) "
           "into DOWNLOAD_DIR first (needs internet)", "models", metavar="DOWNLOAD_DIR"),
    Option("tiny", "flag", False, "no checkpoint: export a tiny randomly initialised CLIP and heads of the real "
           "architectures, to try the model path without weights (its scores mean nothing)", "models"),
    Option("output", "path", None, "where to write MODEL_DIR (local, gs://, s3://)", "models", required=True,
           metavar="MODEL_DIR"),
    LOG_LEVEL,
]

MAKE_SAMPLE = [
    Option("directory", "path", None, "where to write the shards", "sample", required=True, metavar="DIR"),
    _positive("shards", 3, "how many tar shards to write", "sample"),
    _positive("images_per_shard", 40, "images (with a caption and a json each) per shard", "sample"),
    Option("seed", "int", 0, "the random seed of the images and captions", "sample", metavar="N"),
]

COMMANDS: dict[str, tuple[str, list[Option]]] = {
    "curate": ("read, decode, curate and write tar + parquet shards", CURATE),
    "dedup": ("find duplicate images in curated outputs (their parquet only) and write removal lists", DEDUP),
    "prune": ("apply a removal list to curated output without decoding: kept samples byte-identical", PRUNE),
    "report": ("write the run report (DIR/_report/index.html) of an existing output", REPORT_COMMAND),
    "export-models": ("export a Hugging Face CLIP checkpoint and the aesthetic and NSFW heads to ONNX (MODEL_DIR)",
                      EXPORT),
    "make-sample": ("write a small sample WebDataset to try the pipeline on", MAKE_SAMPLE),
}


def command_options(command: str) -> dict[str, Option]:
    return {option.name: option for option in COMMANDS[command][1]}


# --- checks across options ----------------------------------------------------------------------------

def _wanted_scores(values: Mapping[str, Any], spell: Spelling) -> list[str]:
    scores = [name.strip() for name in (values.get("scores") or "").split(",") if name.strip()]
    unknown = sorted(set(scores) - set(SCORES))
    if unknown:
        raise OptionError(f"{spell('scores')} takes a comma-separated list of {', '.join(SCORES)}; unknown: "
                          f"{', '.join(unknown)}")
    return scores


def check_dependencies(command: str, values: Mapping[str, Any], spell: Spelling = CLI) -> None:
    """Options that need another one, or exclude another one; OptionError saying what to add or drop."""
    if command not in ("curate", "prune"):
        return
    if values.get("resume") and values.get("overwrite"):
        raise OptionError(f"{spell('resume')} keeps an earlier run's partitions and {spell('overwrite')} removes "
                          "them: choose one")
    if command == "prune":
        return
    if values.get("resume") and values.get("deterministic_name") is False:
        raise OptionError(f"{spell('resume')} needs {spell.setting('deterministic_name')}: with random names a run "
                          "cannot tell which partitions an earlier run committed")
    scores = _wanted_scores(values, spell)
    model_options = [spell(name) for name in ("embed",) if values.get(name)]
    model_options += [f"{spell('scores')} {values['scores']}" if spell.style == "cli" else "scores"] if scores else []
    model_options += [spell(name) for name in ("aesthetic_threshold", "nsfw_threshold", "clip_score_threshold")
                      if values.get(name) is not None]
    if model_options and not values.get("model_dir"):
        raise OptionError(f"{', '.join(model_options)} {'needs' if len(model_options) == 1 else 'need'} "
                          f"{spell.setting('model_dir', 'MODEL_DIR')} (the directory `beam-curator export-models` "
                          "wrote)")
    if values.get("drop_uncaptioned") and values.get("clip_score_threshold") is None and "clip" not in scores:
        raise OptionError(f"{spell('drop_uncaptioned')} drops samples in the CLIP-score stage, which runs only with "
                          f"{spell('clip_score_threshold')} or {spell.setting('scores', 'clip')}: add one of them")


def shaping_values(command: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The values of the options that shape the output (what each manifest records), as JSON values."""
    shaping = {name: values.get(name) for name, option in sorted(command_options(command).items())
               if option.shapes_output}
    return json.loads(json.dumps(shaping, default=str))


def from_python(command: str, values: Mapping[str, Any]) -> argparse.Namespace:
    """The options of `command` from Python keyword arguments (curate(**options)): defaults filled in,
    each value checked; OptionError naming the parameter for an unknown one (with the closest known)."""
    options = command_options(command)
    for name in values:
        if name not in options:
            guess = difflib.get_close_matches(name, list(options), n=1)
            raise OptionError(f"{command}() has no option {name!r}" + (f" (did you mean {guess[0]!r}?)" if guess else ""))
    result = argparse.Namespace(command=command)
    for name, option in options.items():
        value = values.get(name, option.default)
        setattr(result, name, check_value(option, value, PYTHON))
    check_dependencies(command, vars(result), PYTHON)
    return result


# --- made from the table: argparse, the Flex Template's metadata.json, docs/CLI.md ----------------------

def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """The command's options on an argparse parser, in groups, each value checked by its Option."""
    groups: dict[str, Any] = {}
    for option in COMMANDS[command][1]:
        target = parser
        if option.group and option.kind != "inputs":
            if option.group not in groups:
                groups[option.group] = parser.add_argument_group(option.group)
            target = groups[option.group]
        shown = _default_text(option)
        help_text = option.help + (f" (default: {shown})" if shown else "")
        if option.kind == "inputs":
            target.add_argument(option.name, nargs="+", metavar=option.metavar, help=help_text)
        elif option.name == "directory":
            target.add_argument(option.name, metavar=option.metavar, help=help_text)
        elif option.kind == "flag":
            target.add_argument(option.flag, action="store_true", help=help_text)
        elif option.kind == "bool":
            target.add_argument(option.flag, action=argparse.BooleanOptionalAction, default=option.default,
                                help=help_text)
        elif option.kind == "list":
            target.add_argument(option.flag, action="append", metavar=option.metavar, help=help_text)
        elif option.kind == "choice":
            target.add_argument(option.flag, choices=option.choices, default=option.default, help=help_text,
                                type=_parser_of(option))
        else:
            target.add_argument(option.flag, type=_parser_of(option), default=option.default,
                                required=option.required, help=help_text,
                                metavar=option.metavar or ("N" if option.kind == "int" else "X"
                                                           if option.kind == "float" else None))


def _parser_of(option: Option) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return option.parse(text)
        except OptionError as error:  # argparse reports "argument --x: <message>"
            raise argparse.ArgumentTypeError(str(error).removeprefix(f"{option.flag} ")) from None

    parse.__name__ = option.kind
    return parse


def _default_text(option: Option) -> str:
    if option.default is None or option.kind in ("flag", "inputs") or option.default == "":
        return ""
    if option.kind == "bool":
        return "on" if option.default else "off"
    return f"{option.default:,}" if isinstance(option.default, int) and option.default >= 10_000 else str(option.default)


def flex_template_metadata() -> dict[str, Any]:
    """The Flex Template's metadata.json: a parameter per curate option a template launch takes."""
    parameters = []
    for option in CURATE:
        if not option.template:
            continue
        shown = _default_text(option)
        help_text = option.help[0].upper() + option.help[1:]
        if option.kind == "inputs":
            help_text = "Comma-separated " + option.help
        elif option.kind == "list":
            help_text += " (comma-separated)"
        if option.choices:
            help_text += f"; one of {', '.join(option.choices)}"
        if option.kind in ("flag", "bool"):
            help_text += "; true or false"
        parameters.append({
            "name": option.name,
            "label": option.name.replace("_", " ").capitalize(),
            "helpText": help_text + (f" (default: {shown})" if shown else ""),
            "isOptional": not option.required,
            "regexes": [_regex(option)],
        })
    return {"name": "beam-curator curate",
            "description": "Curate WebDataset image shards: decode with NVIDIA DALI, write curated tar + parquet "
                           "shards.",
            "parameters": parameters}


def _regex(option: Option) -> str:
    if option.kind == "int":
        return "^-?[0-9]+$"
    if option.kind == "float":
        return "^-?[0-9]*\\.?[0-9]+([eE][-+]?[0-9]+)?$"
    if option.kind in ("flag", "bool"):
        return "^(true|false|True|False|1|0|yes|no)$"
    if option.choices:
        return f"^({'|'.join(option.choices)})$"
    return "^.+$"


def cli_reference() -> str:
    """docs/CLI.md: every command's options, from the table."""
    lines = ["# Command-line reference", "",
             "Generated from `beam_curator/jobs/options.py` (`python -m beam_curator.jobs.options --cli-md`); a test "
             "fails when this file and the table differ. The same options are `beam_curator.curate()`'s keyword "
             "arguments (with underscores) and the Flex Template's parameters (`metadata.json`). Options that are "
             "not a command's own go to Apache Beam (`--runner`, `--direct_num_workers`, `--project`, ...).", ""]
    for command, (summary, options) in COMMANDS.items():
        lines += [f"## `beam-curator {command}`", "", summary[0].upper() + summary[1:] + ".", "",
                  "| option | default | what it does | shapes the output |", "|---|---|---|---|"]
        for option in options:
            spelled = (option.metavar if option.kind == "inputs" or option.name == "directory" else
                       f"`{option.flag}`" if option.kind != "bool" else f"`{option.flag}` / `--no-{option.flag[2:]}`")
            if option.kind in ("inputs",) or option.name == "directory":
                spelled = f"`{option.metavar}`"
            text = option.help + (f" ({option.range_text})" if option.range_text else "")
            if option.choices:
                text += f"; one of `{'`, `'.join(option.choices)}`"
            lines.append(f"| {spelled} | {_default_text(option) or ('required' if option.required else '-')} "
                         f"| {text} | {'yes' if option.shapes_output else ''} |")
        lines.append("")
    from beam_curator.errors import EXIT_STATUSES

    lines += ["## Exit statuses", "", "Every error a user can fix is one line on stderr, found before any output is "
              "created; `--log-level debug` adds the traceback.", "", "| status | meaning |", "|---|---|"]
    lines += [f"| {code} | {text} |" for code, text in EXIT_STATUSES.items()]
    lines.append("")
    return "\n".join(lines)


def _main(argv: Sequence[str] | None = None) -> None:
    import sys

    what = (argv if argv is not None else sys.argv[1:]) or ["--help"]
    if what[0] == "--metadata":
        print(json.dumps(flex_template_metadata(), indent=2))
    elif what[0] == "--cli-md":
        print(cli_reference(), end="")
    else:
        print("python -m beam_curator.jobs.options --metadata | --cli-md")


def unknown_names(given: Iterable[str], command: str) -> list[str]:
    return [name for name in given if name not in command_options(command)]


if __name__ == "__main__":
    _main()
