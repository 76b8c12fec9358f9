"""Keep the output of Beam's local worker processes to what a user needs.

With `--direct_running_mode=multi_processing` Beam starts worker processes that inherit the CLI's
stderr and log about 20 lines of harness start-up and shut-down each, at INFO, with their own logging
set-up (the CLI's does not reach them). While such a job runs, the CLI's stderr goes through a pipe,
and lines of that chatter are dropped; so is the traceback a worker logs when a step fails (Beam's own
ERROR record, with its continuation lines): the job's failure reaches the CLI, which prints it in one
line. Everything else (warnings, beam_curator's own lines) passes through unchanged. `--log-level
debug` turns the filter off.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading

__all__ = ["worker_chatter_filtered"]

_BEAM_ERROR = re.compile(rb"^ERROR:apache_beam\.")  # a worker's log of a failed step, traceback follows
_RECORD_START = re.compile(rb"^(?:[A-Z]+:[\w.]+:|\d{4}-\d\d-\d\d )")  # the start of any log record
_CHATTER = re.compile(
    rb"^(?:(?:INFO|DEBUG):(?!beam_curator)"  # the harness's and Beam's INFO lines, not ours
    rb"|WARNING:root:apitools not found"  # about a GCP client the job does not use
    rb"|WARNING:__main__:No semi_persistent_directory found)"  # local workers never have one
)


@contextlib.contextmanager
def worker_chatter_filtered(enabled: bool):
    """While the block runs, drop worker chatter from this process's stderr (fd 2, which the worker
    processes inherit). Yields a stream on the real stderr (for a progress bar)."""
    if not enabled:
        yield sys.stderr
        return
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    terminal = os.fdopen(os.dup(original), "w", buffering=1)

    def pump() -> None:
        in_error = False  # inside a worker's error record (its traceback lines)
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:  # until every holder of the write end (workers included) has closed it
                if _RECORD_START.match(line) or line.startswith(b"beam-curator"):
                    in_error = bool(_BEAM_ERROR.match(line))
                if not in_error and not _CHATTER.match(line):
                    os.write(original, line)

    thread = threading.Thread(target=pump, name="beam_curator-worker-output", daemon=True)
    thread.start()
    try:
        yield terminal
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # this process no longer writes into the pipe
        thread.join(timeout=5)  # the workers have exited with the job; their last lines drain
        terminal.close()
        if not thread.is_alive():
            os.close(original)
