"""What a crashed run leaves behind, and when it is safe to remove.

A `curate` run writes its tars under `{output}/.beam_curator-temp-{uuid}/` and renames each partition's
into place as the partition completes; a run killed before its end leaves the folder behind. The CLI writes `_owner.json` into the folder of
each run it starts (host, process id, runner). A later run into the same output removes a leftover
folder only when it can tell that no job owns it any more: its owner ran on a local runner (the job
lived inside the CLI's process) on this host, and that process is gone. A folder whose owner was a
remote runner (Dataflow, Flink: the job outlives the CLI) or that has no owner file is never removed,
only reported. The CLI's progress folders (`beam_curator-progress-{pid}-*` in the temp directory) are
removed when their process is gone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass

__all__ = ["Leftover", "find_leftovers", "make_progress_dir", "remove_stale_progress_dirs", "write_owner"]

from beam_curator.output.layout import OWNER_FILE, TEMP_DIR_PREFIX

_LOG = logging.getLogger(__name__)
_PROGRESS_PREFIX = "beam_curator-progress-"


@dataclass(frozen=True)
class Leftover:
    path: str
    owner: dict | None
    removable: bool
    why: str


def write_owner(temp_dir: str, *, runner: str, local: bool) -> None:
    """Record who owns a run's temporary folder (written before the job starts)."""
    from beam_curator import storage

    owner = {"host": socket.gethostname(), "pid": os.getpid(), "runner": runner, "local": local,
             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with storage.create(storage.join(temp_dir, OWNER_FILE)) as handle:
        handle.write(json.dumps(owner).encode())


def find_leftovers(output: str) -> list[Leftover]:
    """The temporary folders of earlier runs under `output`, each with whether it may be removed."""
    from beam_curator import storage

    folders: set[str] = set()
    for path in storage.match_files(storage.join(output, f"{TEMP_DIR_PREFIX}*", "**")):
        relative = path[len(output.rstrip("/")) + 1 :]
        folders.add(storage.join(output, relative.split("/", 1)[0]))
    if os.path.isdir(output):  # local: empty folders too
        folders.update(entry.path for entry in os.scandir(output)
                       if entry.is_dir() and entry.name.startswith(TEMP_DIR_PREFIX))
    return [_judge(folder) for folder in sorted(folders)]


def _judge(folder: str) -> Leftover:
    from beam_curator import storage

    try:
        with storage.open_read(storage.join(folder, OWNER_FILE)) as handle:
            owner = json.loads(handle.read())
    except Exception:  # no owner file (an older version, or the Python API): we cannot tell
        return Leftover(folder, None, False, "it has no owner record")
    if not owner.get("local"):
        return Leftover(folder, owner, False, f"its job ran on {owner.get('runner')} and may still be running")
    if owner.get("host") != socket.gethostname():
        return Leftover(folder, owner, False, f"its job ran on host {owner.get('host')}")
    if _alive(int(owner.get("pid", 0))):
        return Leftover(folder, owner, False, f"its process {owner.get('pid')} is still running")
    return Leftover(folder, owner, True, f"its process {owner.get('pid')} (started {owner.get('started')}) is gone")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_progress_dir() -> str:
    return tempfile.mkdtemp(prefix=f"{_PROGRESS_PREFIX}{os.getpid()}-")


def remove_stale_progress_dirs() -> int:
    """Remove progress folders whose CLI process is gone; how many were removed."""
    removed = 0
    directory = tempfile.gettempdir()
    for name in os.listdir(directory):
        if not name.startswith(_PROGRESS_PREFIX):
            continue
        pid = name[len(_PROGRESS_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
            removed += 1
    return removed
