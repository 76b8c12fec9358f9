"""Errors a job raises on its workers for a reason its user can act on, and how the CLI finds them.

Runners that run workers in other processes (a worker pool, Flink, Dataflow) re-raise a worker's
exception in the launcher as a RuntimeError holding its text, so the CLI recognises these by their
class name in the text as well as by type (job_error), and prints the message alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["CLI", "EXIT_STATUSES", "PYTHON", "DuplicateIdsError", "FailureThresholdExceeded", "JobError", "JobFailed", "Spelling", "StageContractError", "job_error", "one_line"]


EXIT_STATUSES = {
    0: "the run succeeded (its counts reconcile; the output has _SUCCESS)",
    1: "the job failed: an error in a stage, in storage or in the runner (the message says which; --log-level "
       "debug adds the traceback); the output has no _SUCCESS",
    2: "a usage error: an unknown or impossible option, a wrong path or input, an output that holds an earlier run; "
       "found before anything is written",
    3: "the run finished but its counts do not reconcile (read != written + failed + filtered): a bug, please "
       "report it",
    4: "more samples failed than --max-failed-fraction allows; the output has no _SUCCESS",
}


@dataclass(frozen=True)
class Spelling:
    """How the user names options, for messages: flags on the command line, parameters in Python."""

    style: str = "cli"  # or "python"

    def __call__(self, name: str) -> str:
        return f"--{name.replace('_', '-')}" if self.style == "cli" else name

    def setting(self, name: str, value: Any = True) -> str:
        """How to set an option: `--overwrite` / `overwrite=True`, `--model-dir DIR` / `model_dir='DIR'`."""
        if self.style == "cli":
            return self(name) if value is True else f"{self(name)} {value}"
        return f"{name}={value!r}"


CLI, PYTHON = Spelling("cli"), Spelling("python")


class JobError(RuntimeError):
    """A job stopped for a reason its user can act on; exit_status is the CLI's."""

    exit_status = 1


class JobFailed(JobError):
    """The job raised on a worker (a stage's error, storage, the runner): the run failed."""

    exit_status = 1


class StageContractError(AssertionError):
    """A curation stage broke the contract of docs/STAGES.md (an image neither kept, dropped nor failed,
    or not a StageOutcome): the stage kit raises it, which fails the job, and check_stage_contract
    raises it for what it finds after a run."""


class FailureThresholdExceeded(JobError):
    """More samples failed than the run allows (curate --max-failed-fraction)."""

    exit_status = 4


class DuplicateIdsError(JobError):
    """Two images of a dedup run's inputs share an id: removal by id could remove the wrong one."""

    exit_status = 2


_KINDS = (FailureThresholdExceeded, DuplicateIdsError, JobFailed)


def _clean(message: str) -> str:
    """The first line of a message, without the step name Beam appends ("[while running '...']")."""
    line = message.splitlines()[0] if message else ""
    return line.split(" [while running '", 1)[0].strip().strip("'\"")


_EXCEPTION_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Exceeded|Exit|Interrupt|Failed)): \S")


def one_line(error: BaseException) -> str:
    """An error as one line: its class and its message's first line, without Beam's step suffix. A
    worker's error that a runner passes on as the text of a traceback gives the traceback's last
    exception line (the worker's own error), not "Traceback (most recent call last):"."""
    text = str(error)
    if "Traceback (most recent call last)" in text:
        found = [line.strip() for line in text.splitlines() if _EXCEPTION_LINE.match(line)]
        if found:  # "beam_curator.errors.StageContractError: ..." -> "StageContractError: ..."
            name, _, message = found[-1].partition(": ")
            return _clean(f"{name.rsplit('.', 1)[-1]}: {message}")
    text = _clean(text)
    name = type(error).__name__
    return text if text.startswith(name) or (isinstance(error, (JobError, OSError)) and text) else f"{name}: {text}"


def job_error(error: BaseException) -> tuple[type[JobError], str] | None:
    """(the JobError class, its message) when error is or holds one, else None."""
    for kind in _KINDS:
        if isinstance(error, kind):
            return kind, _clean(str(error)) or kind.__name__
    text = f"{type(error).__name__}: {error}"
    for kind in _KINDS:
        marker = f"{kind.__name__}: "
        if marker in text:
            return kind, _clean(text.split(marker, 1)[1])
    return None
