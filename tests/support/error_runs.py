"""Run a beam-curator command many times, each in a forked child of one warm process, and collect each
run's exit status and stderr: what reached the user, whatever the decoder's threads did meanwhile.

    python -m tests.support.error_runs RUNS PARALLEL -- curate IN --output OUT/{run} ...

`{run}` in an argument becomes the run's number. Forking after the imports makes a run cost its
pipeline only (about a second), not an interpreter start-up; nothing in the parent starts a thread.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile


def run_many(argv: list[str], runs: int, parallel: int = 2) -> list[tuple[int, str]]:
    """[(exit status, stderr)] of `beam-curator *argv` run `runs` times, `parallel` at a time."""
    import apache_beam  # noqa: F401 - imported once, before the forks
    import nvidia.dali  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from beam_curator import cli

    results: dict[int, tuple[int, str]] = {}
    running: dict[int, tuple[int, str]] = {}  # pid -> (run, stderr file)
    scratch = tempfile.mkdtemp(prefix="beam_curator-error-runs-")
    next_run = 0
    while len(results) < runs:
        while next_run < runs and len(running) < parallel:
            err = os.path.join(scratch, f"{next_run}.err")
            pid = os.fork()
            if pid == 0:  # the child: one CLI run, stderr into a file, then it leaves (console_main exits)
                try:
                    os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
                    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
                    sys.argv = ["beam-curator", *[arg.replace("{run}", str(next_run)) for arg in argv]]
                    cli.console_main()
                finally:
                    os._exit(99)  # console_main did not leave: a harness error
            running[pid] = (next_run, err)
            next_run += 1
        pid, status = os.wait()
        run, err = running.pop(pid)
        with open(err, errors="replace") as handle:
            results[run] = (os.waitstatus_to_exitcode(status), handle.read())
    return [results[run] for run in range(runs)]


if __name__ == "__main__":
    runs, parallel, separator, *command = sys.argv[1:]
    assert separator == "--", "usage: python -m tests.support.error_runs RUNS PARALLEL -- COMMAND..."
    print(json.dumps(run_many(command, int(runs), int(parallel))))
