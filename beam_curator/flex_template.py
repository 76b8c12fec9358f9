"""Entry point of the Dataflow Flex Template (FLEX_TEMPLATE_PYTHON_PY_FILE in the Dockerfile).

The template launcher calls this file with the job's parameters as `--name=value`, named as in
metadata.json (the curate options of beam_curator.jobs.options with underscores, `inputs` and `stage`
as comma-separated lists), plus Beam's pipeline options (`--runner`, `--project`, `--region`, ...). It
turns them into a `beam-curator curate` command line and submits the job without waiting for it to
finish. metadata.json is made from the same table (`python -m beam_curator.jobs.options --metadata`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from beam_curator.jobs.options import CURATE, Option

__all__ = ["main", "template_parameters", "to_cli_args"]

_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no", ""}


def template_parameters() -> dict[str, Option]:
    """Template parameter name -> its curate Option (those a template launch takes)."""
    return {option.name: option for option in CURATE if option.template}


def _split(argv: Sequence[str], names) -> tuple[dict[str, str], list[str]]:
    """(the template's parameters given, `--name=value` or `--name value`; the rest, for Beam)."""
    given, rest, index = {}, [], 0
    while index < len(argv):
        name, equals, value = argv[index].partition("=")
        if name.startswith("--") and name[2:] in names:
            if not equals:
                index += 1
                value = argv[index] if index < len(argv) else ""
            given[name[2:]] = value
        else:
            rest.append(argv[index])
        index += 1
    return given, rest


def to_cli_args(argv: Sequence[str]) -> list[str]:
    """`--inputs=a,b --images_per_tar=5 --overwrite=true --project=p` -> a `curate` command line."""
    parameters = template_parameters()
    given, beam_args = _split(list(argv), parameters)
    if not given.get("inputs") or not given.get("output"):
        raise SystemExit("flex template: the parameters inputs and output are required")
    args = ["curate", *[path.strip() for path in given["inputs"].split(",") if path.strip()]]
    for name, option in parameters.items():
        value = given.get(name)
        if name == "inputs" or value is None:
            continue
        if option.kind in ("flag", "bool"):
            lowered = value.strip().lower()
            if lowered not in _TRUE | _FALSE:
                raise SystemExit(f"flex template: {name} must be true or false, got {value!r}")
            if lowered in _TRUE:
                args.append(option.flag)
            elif option.kind == "bool":
                args.append(f"--no-{option.flag[2:]}")
        elif option.kind == "list":
            for item in value.split(","):
                if item.strip():
                    args += [option.flag, item.strip()]
        else:
            args += [option.flag, value]
    return [*args, *beam_args]


def main(argv: Sequence[str] | None = None) -> int:
    from beam_curator import cli

    return cli.main([*to_cli_args(sys.argv[1:] if argv is None else argv), "--no-wait"])


if __name__ == "__main__":
    raise SystemExit(main())
