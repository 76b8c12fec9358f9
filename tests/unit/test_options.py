"""The options table (beam_curator.jobs.options) against everything made from it: argparse, curate(),
the Flex Template's metadata.json, docs/CLI.md; and its checks, spelled as the caller spells options."""

from __future__ import annotations

import json
import os

import pytest

from beam_curator import cli
from beam_curator.errors import CLI, PYTHON
from beam_curator.jobs import options as table

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _subparser(command: str):
    parser = cli.build_parser()
    (subparsers,) = [action for action in parser._actions if action.dest == "command"]
    return subparsers.choices[command]


@pytest.mark.parametrize("command", list(table.COMMANDS))
def test_every_option_is_in_argparse_with_the_same_default_and_nothing_else(command):
    actions = {action.dest: action for action in _subparser(command)._actions if action.dest != "help"}
    options = table.command_options(command)
    assert set(actions) == set(options)
    for name, option in options.items():
        assert actions[name].default == option.default, name
        assert actions[name].help.count("(default:") <= 1, name  # one default per option in --help


def test_curate_python_defaults_equal_the_command_lines():
    parsed, _ = cli.parse_command(["curate", "in", "--output", "out"])
    from_python = table.from_python("curate", {"inputs": ["in"], "output": "out"})
    names = table.command_options("curate")
    assert {name: getattr(parsed, name) for name in names} == {name: getattr(from_python, name) for name in names}


def test_metadata_json_and_cli_md_are_made_from_the_table():
    with open(os.path.join(ROOT, "metadata.json")) as handle:
        assert json.load(handle) == table.flex_template_metadata(), \
            "run: python -m beam_curator.jobs.options --metadata > metadata.json"
    with open(os.path.join(ROOT, "docs", "CLI.md")) as handle:
        assert handle.read() == table.cli_reference(), "run: python -m beam_curator.jobs.options --cli-md > docs/CLI.md"
    names = {parameter["name"] for parameter in table.flex_template_metadata()["parameters"]}
    assert names == {option.name for option in table.CURATE if option.template}
    assert {"log_level", "report"} <= names and not {"progress", "wait"} & names


@pytest.mark.parametrize("name, value, fragment", [
    ("nsfw_threshold", -1.0, "a probability from 0 to 1"),
    ("nsfw_threshold", 2.0, "a probability from 0 to 1"),
    ("clip_score_threshold", 5.0, "a cosine from -1 to 1"),
    ("aesthetic_threshold", 11.0, "a score from 0 to 10"),
    ("max_failed_fraction", 1.5, "a fraction from 0 to 1"),
    ("images_per_tar", 0, "a positive integer"),
    ("jpeg_quality", 101, "an integer from 1 to 100"),
    ("max_aspect_ratio", 0.5, "a ratio >= 1"),
    ("images_per_tar", 2.5, "takes an integer"),
    ("writer_mode", "sideways", "one of auto, fused, keyed"),
    ("overwrite", "yes", "True or False"),
])
def test_ranges_are_checked_and_named_as_the_caller_spells_them(name, value, fragment):
    option = table.command_options("curate")[name]
    with pytest.raises(table.OptionError, match=f"^--{name.replace('_', '-')} takes") as on_the_command_line:
        table.check_value(option, value, CLI)
    assert fragment in str(on_the_command_line.value)
    with pytest.raises(table.OptionError, match=f"^{name} takes"):
        table.check_value(option, value, PYTHON)


@pytest.mark.parametrize("values, cli_message, python_message", [
    ({"drop_uncaptioned": True, "model_dir": "m"}, "--drop-uncaptioned drops samples in the CLIP-score stage",
     "drop_uncaptioned drops samples"),
    ({"embed": True}, "--embed needs --model-dir MODEL_DIR", "embed needs model_dir='MODEL_DIR'"),
    ({"nsfw_threshold": 0.5, "scores": "clip"}, "--scores clip, --nsfw-threshold need --model-dir",
     "scores, nsfw_threshold need model_dir"),
    ({"scores": "beauty", "model_dir": "m"}, "--scores takes a comma-separated list", "scores takes a"),
    ({"resume": True, "overwrite": True}, "--resume keeps an earlier run's partitions and --overwrite",
     "resume keeps an earlier run's partitions and overwrite"),
    ({"resume": True, "deterministic_name": False}, "--resume needs --deterministic-name",
     "resume needs deterministic_name=True"),
])
def test_options_that_need_another_are_refused_with_what_to_add(values, cli_message, python_message):
    with pytest.raises(table.OptionError, match=cli_message.replace("(", r"\(")):
        table.check_dependencies("curate", values, CLI)
    with pytest.raises(table.OptionError, match=python_message.replace("(", r"\(")):
        table.check_dependencies("curate", values, PYTHON)


def test_unknown_python_options_name_the_closest():
    with pytest.raises(table.OptionError, match="curate\\(\\) has no option 'images_per_tarr' \\(did you mean "
                                                "'images_per_tar'\\?\\)"):
        table.from_python("curate", {"inputs": ["i"], "output": "o", "images_per_tarr": 5})


def test_shaping_values_are_the_options_marked_so():
    values = vars(table.from_python("curate", {"inputs": ["i"], "output": "o"}))
    shaping = table.shaping_values("curate", values)
    assert "images_per_tar" in shaping and "min_size" in shaping
    assert not {"dali_batch_size", "num_threads", "overwrite", "resume", "progress", "log_level"} & set(shaping)
