"""Errors a job raises on its workers for a reason its user can act on, and how the CLI finds them.

Runners that run workers in other processes (a worker pool, Flink, Dataflow) re-raise a worker's
exception in the launcher as a RuntimeError holding its text, so the CLI recognises these by their
class name in the text as well as by type (job_error), and prints the message alone.
"""

from __future__ import annotations

__all__ = ["DuplicateIdsError", "FailureThresholdExceeded", "JobError", "JobFailed", "job_error", "one_line"]


class JobError(RuntimeError):
    """A job stopped for a reason its user can act on; exit_status is the CLI's."""

    exit_status = 1


class JobFailed(JobError):
    """The job raised on a worker (a stage's error, storage, the runner): the run failed."""

    exit_status = 1


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


def one_line(error: BaseException) -> str:
    """An error as one line: its class and its message's first line, without Beam's step suffix (the
    step is named separately where it matters)."""
    text = _clean(str(error))
    name = type(error).__name__
    return text if text.startswith(name) or isinstance(error, (JobError, OSError)) and text else f"{name}: {text}"


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
