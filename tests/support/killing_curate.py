"""`python -m tests.support.killing_curate POINT N CURATE_ARGS...`: `beam-curator curate` that SIGKILLs itself
at a chosen point of its Nth partition commit, from the real commit code (the FnApiRunner runs the job
in this process, so the patch reaches the writer):

- before-commit: as the Nth partition's commit starts (nothing of it renamed, no records written);
- before-manifest: after the Nth partition's tars and parquets have their final names, before its
  manifest is written.
"""

import os
import signal
import sys

from beam_curator import cli
from beam_curator.output import commit
from beam_curator.transforms.io import image_writer


def _kill_on(count: int, original):
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == count and WHERE == "before-commit":
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if len(calls) == count and WHERE == "before-manifest":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    return wrapper


if __name__ == "__main__":
    WHERE, nth, *curate_args = sys.argv[1:]
    if WHERE == "before-commit":
        image_writer.commit_partition = _kill_on(int(nth), image_writer.commit_partition)
    elif WHERE == "before-manifest":  # commit_partition renames through commit_shards, then writes the manifest
        commit.commit_shards = _kill_on(int(nth), commit.commit_shards)
    else:
        raise SystemExit(f"unknown kill point {WHERE!r}")
    sys.exit(cli.main(["curate", *curate_args]))
