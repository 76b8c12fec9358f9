"""DALI decoding in a child process, so that a native crash loses one image instead of the worker.

The structural check (beam_curator.formats.image_structure) kept DALI's CPU decoder alive through 20,000
malformed images, but a native decoder can still fail in ways no header check foresees: on an NVIDIA
H200 the GPU decoder segfaulted on one case in 300 that the first version of the check let through
(docs/ROBUSTNESS.md). `IsolatedDecoder` runs a `DaliImageDecoder` in a child process:

- encoded bytes go to the child through a pipe; decoded pixels come back in a shared-memory segment
  that the parent views without copying; the child reuses a segment once every array viewing it is
  gone (fresh pages cost more to fault in than the copy itself);
- when the child dies (or hangs past `timeout_s`), a new child decodes that batch again one image at
  a time; the image it dies on fails alone (an ImageDecodeError naming the signal) and the rest are
  decoded as usual.

It has DaliImageDecoder's interface (`decode`, `submit`, `batch_size`, `num_threads`, `device`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from beam_curator.formats.decoding import DecoderBase, ImageDecodeError

__all__ = ["DecoderProcessDied", "IsolatedDecoder"]

_LOG = logging.getLogger(__name__)
_HEADER = struct.Struct("<Q")  # length of the JSON message that follows
_SHM_PREFIX = "beam_curator-decoded-"


class DecoderProcessDied(RuntimeError):
    """The decoding child process exited, was killed by a signal, or stopped answering."""


def _shared_memory_dir(size: int) -> str:
    """/dev/shm when it has room (containers often give it only 64 MB), else the temp directory."""
    try:
        stats = os.statvfs("/dev/shm")
        if stats.f_bavail * stats.f_frsize > 2 * size:
            return "/dev/shm"
    except OSError:
        pass
    return tempfile.gettempdir()


def _send(stream, message: dict, payload: bytes | memoryview = b"") -> None:
    encoded = json.dumps(message).encode()
    stream.write(_HEADER.pack(len(encoded)) + encoded)
    if payload:
        stream.write(payload)
    stream.flush()


def _read_exactly(stream, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = stream.read(remaining)  # a raw pipe may return less than asked
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _receive(stream) -> dict:
    (size,) = _HEADER.unpack(_read_exactly(stream, _HEADER.size))
    return json.loads(_read_exactly(stream, size))


class IsolatedDecoder(DecoderBase):
    """A DaliImageDecoder in a child process; thread-safe, one batch in flight at a time."""

    def __init__(self, *, batch_size: int, num_threads: int, use_gpu: bool, device_id: int = 0,
                 timeout_s: float = 600.0, _check_structure: bool = True):
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.device = "mixed" if use_gpu else "cpu"
        self.restarts = 0
        self._options = {"batch_size": batch_size, "num_threads": num_threads, "use_gpu": use_gpu,
                         "device_id": device_id, "_check_structure": _check_structure}
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._child: subprocess.Popen | None = None
        # The child's shared-memory segments as this process maps them, by id; the ids whose arrays are
        # all gone are sent back with the next request, for the child to reuse (no new pages to fault).
        self._segments: dict[int, mmap.mmap] = {}
        self._released: list[tuple[int, int]] = []  # (child pid, segment id); appended by finalizers
        self._start_child()

    def _start_child(self) -> None:
        self._child = subprocess.Popen(
            [sys.executable, "-m", "beam_curator.formats.isolated_decoding", json.dumps(self._options)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
        )
        _LOG.info("started DALI %s decoding process %d", self.device, self._child.pid)

    def close(self) -> None:
        child, self._child = self._child, None
        if child is not None and child.poll() is None:
            if child.stdin is not None:
                child.stdin.close()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def __del__(self):
        with contextlib.suppress(Exception):  # interpreter teardown
            self.close()

    def decode(self, images: Sequence[bytes]) -> list[np.ndarray | ImageDecodeError]:
        """Decode `images`; each result is an array or the error that stopped that image alone."""
        with self._lock:
            try:
                return self._decode_in_child(images)
            except DecoderProcessDied as died:
                _LOG.warning("the decoding process died (%s) on a batch of %d image(s); decoding it again "
                             "one image at a time", died, len(images))
                self._restart()
            results: list[np.ndarray | ImageDecodeError] = []
            for data in images:
                try:
                    results.extend(self._decode_in_child([data]))
                except DecoderProcessDied as died:
                    _LOG.warning("the decoding process died (%s) on one image: it fails alone", died)
                    results.append(ImageDecodeError(f"the decoding process died on this image ({died})"))
                    self._restart()
            return results

    def _restart(self) -> None:
        self._segments.clear()  # arrays still viewing them keep their own mappings
        if self._child is not None:
            self._child.kill()
            self._child.wait()
            _remove_leftovers(self._child.pid)
        self.restarts += 1
        self._start_child()

    def _decode_in_child(self, images: Sequence[bytes]) -> list[np.ndarray | ImageDecodeError]:
        child = self._child
        assert child is not None and child.stdin is not None and child.stdout is not None  # started with pipes
        sizes = [len(data) for data in images]
        free = []
        while self._released:  # pop: a finalizer may append from another thread meanwhile
            pid, segment = self._released.pop()
            if pid == child.pid:
                free.append(segment)
        try:
            _send(child.stdin, {"sizes": sizes, "free": free}, b"".join(images))
            ready, _, _ = select.select([child.stdout], [], [], self._timeout_s)
            if not ready:
                child.kill()
                raise DecoderProcessDied(f"no answer in {self._timeout_s:.0f} s")
            reply = _receive(child.stdout)
        except (BrokenPipeError, EOFError, OSError):
            raise DecoderProcessDied(_exit_reason(child)) from None
        return self._results_from(reply, child.pid)

    def _results_from(self, reply: dict, pid: int) -> list[np.ndarray | ImageDecodeError]:
        """Arrays viewing the reply's shared-memory segment, and ImageDecodeErrors."""
        whole: np.ndarray | None = None
        self._count_pillow(reply["pillow"])
        for segment in reply["dropped"]:
            self._segments.pop(segment, None)
        if reply["segment"] is not None:
            segment = reply["segment"]
            if reply.get("path"):  # a new segment: map it, then remove its name (the mappings live on)
                with open(reply["path"], "rb") as handle:
                    self._segments[segment] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
                os.unlink(reply["path"])
            whole = np.frombuffer(self._segments[segment], dtype=np.uint8, count=reply["bytes"])
            # Every image is a view of `whole`: when the last is gone, the child may reuse the segment.
            weakref.finalize(whole, self._released.append, (pid, segment))
        results: list[np.ndarray | ImageDecodeError] = []
        for item in reply["results"]:
            if "error" in item:
                results.append(ImageDecodeError(item["error"]))
            else:
                assert whole is not None  # a reply with images has a segment
                shape = tuple(item["shape"])
                start = item["offset"]
                results.append(whole[start : start + int(np.prod(shape))].reshape(shape))
        return results


def _exit_reason(child: subprocess.Popen) -> str:
    try:
        code = child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        child.kill()
        code = child.wait()
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _remove_leftovers(pid: int) -> None:
    """A child killed while writing its reply leaves the file behind."""
    for directory in {"/dev/shm", tempfile.gettempdir()}:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            if name.startswith(f"{_SHM_PREFIX}{pid}-"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))


# --- the child ------------------------------------------------------------------------------------


class _ChildSegments:
    """The child's shared-memory segments: reused once the parent has released them."""

    def __init__(self):
        self._mapped: dict[int, np.ndarray] = {}  # id -> the whole segment, writable
        self._free: set[int] = set()
        self._next = 0
        self.dropped: list[int] = []  # segments let go since the last reply: the parent unmaps them too

    def release(self, segments: list[int]) -> None:
        self._free.update(segments)

    def take(self, size: int) -> tuple[int, np.ndarray, str | None]:
        """(id, segment, path if it is new) with room for `size` bytes."""
        fitting = sorted((self._mapped[s].nbytes, s) for s in self._free if self._mapped[s].nbytes >= size)
        if fitting:
            segment = fitting[0][1]
            self._free.discard(segment)
            return segment, self._mapped[segment], None
        for segment in [s for s in self._free]:  # too small to reuse: let them go
            self._free.discard(segment)
            del self._mapped[segment]
            self.dropped.append(segment)
        segment, self._next = self._next, self._next + 1
        capacity = size + size // 4  # batches vary in size: leave room to reuse it
        path = os.path.join(_shared_memory_dir(capacity), f"{_SHM_PREFIX}{os.getpid()}-{segment}")
        with open(path, "wb+") as handle:
            handle.truncate(capacity)
            self._mapped[segment] = np.frombuffer(mmap.mmap(handle.fileno(), capacity), dtype=np.uint8)
        return segment, self._mapped[segment], path


def _serve(options: dict) -> None:
    """Decode batches from stdin until it closes; reply with the pixels in a shared-memory segment."""
    from beam_curator.formats.decoding import DaliImageDecoder

    decoder = DaliImageDecoder(**options)
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write to the reply stream
    segments = _ChildSegments()
    while True:
        try:
            request = _receive(requests)
        except EOFError:
            return
        segments.release(request["free"])
        payload = _read_exactly(requests, sum(request["sizes"]))
        images, offset = [], 0
        for size in request["sizes"]:
            images.append(payload[offset : offset + size])
            offset += size
        del payload
        results = decoder.decode(images)
        layout: list[dict[str, Any]] = []
        total = 0
        for result in results:
            if isinstance(result, ImageDecodeError):
                layout.append({"error": str(result)})
            else:
                layout.append({"shape": list(result.shape), "offset": total})
                total += result.nbytes
        reply: dict[str, Any] = {"results": layout, "bytes": total, "segment": None, "path": None,
                                 "pillow": decoder.take_pillow_count()}
        if total:
            reply["segment"], whole, reply["path"] = segments.take(total)
        reply["dropped"], segments.dropped = segments.dropped, []
        if total:
            for result, where in zip(results, layout):
                if isinstance(result, np.ndarray):
                    whole[where["offset"] : where["offset"] + result.nbytes] = result.reshape(-1)
        del results
        _send(replies, reply)


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
