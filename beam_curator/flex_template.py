"""Entry point of the Dataflow Flex Template (FLEX_TEMPLATE_PYTHON_PY_FILE in the Dockerfile).

The template launcher calls this file with the job's parameters as `--name=value`, named as in
metadata.json (the CLI's option names with underscores, `inputs` as a comma-separated list), plus
Beam's pipeline options (`--runner`, `--project`, `--region`, ...). It turns them into a
`beam-curator curate` command line and submits the job without waiting for it to finish.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from beam_curator import cli

__all__ = ["LAUNCHER_ONLY", "main", "template_parameters", "to_cli_args"]

_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no", ""}


def _curate_actions() -> list[argparse.Action]:
    actions = cli.curate_parser(cli.build_parser())._actions
    return [a for a in actions if not isinstance(a, argparse._HelpAction)]


# CLI options about the terminal the CLI runs in, which a template launcher does not have.
LAUNCHER_ONLY = {"progress", "wait", "log_level", "report"}  # how the launching process behaves, not the job


def template_parameters() -> dict[str, argparse.Action]:
    """Template parameter name -> the CLI option it sets (`inputs` for the positional INPUT...)."""
    return {action.dest: action for action in _curate_actions() if action.dest not in LAUNCHER_ONLY}


def _flag(action: argparse.Action) -> str:
    return next(option for option in action.option_strings if not option.startswith("--no-"))


def to_cli_args(argv: Sequence[str]) -> list[str]:
    """`--inputs=a,b --images_per_tar=5 --overwrite=true --project=p` -> a `curate` command line."""
    parameters = template_parameters()
    parser = argparse.ArgumentParser(add_help=False)
    for name in parameters:
        parser.add_argument(f"--{name}")
    known, beam_args = parser.parse_known_args(list(argv))
    if not known.inputs or not known.output:
        raise SystemExit("flex template: the parameters inputs and output are required")
    args = ["curate", *[path.strip() for path in known.inputs.split(",") if path.strip()]]
    for name, action in parameters.items():
        value = getattr(known, name)
        if name == "inputs" or value is None:
            continue
        if isinstance(action, (argparse.BooleanOptionalAction, argparse._StoreTrueAction)):
            lowered = value.strip().lower()
            if lowered not in _TRUE | _FALSE:
                raise SystemExit(f"flex template: {name} must be true or false, got {value!r}")
            if lowered in _TRUE:
                args.append(_flag(action))
            elif isinstance(action, argparse.BooleanOptionalAction):
                args.append(f"--no-{_flag(action)[2:]}")
        elif isinstance(action, argparse._AppendAction):  # --stage: a comma-separated list
            for item in value.split(","):
                if item.strip():
                    args += [_flag(action), item.strip()]
        else:
            args += [_flag(action), value]
    return [*args, *beam_args]


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main([*to_cli_args(sys.argv[1:] if argv is None else argv), "--no-wait"])


if __name__ == "__main__":
    raise SystemExit(main())
