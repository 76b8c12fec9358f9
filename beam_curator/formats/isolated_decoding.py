"""DALI decoding in a child process, so that a native crash loses one image instead of the worker.

The structural check (beam_curator.formats.image_structure) kept DALI's CPU decoder alive through 20,000
malformed images, but a native decoder can still fail in ways no header check foresees: on an NVIDIA
H200 the GPU decoder segfaulted on one case in 300 that the first version of the check let through
(docs/ROBUSTNESS.md). `IsolatedDecoder` runs a `DaliImageDecoder` in a child process:

- encoded bytes go to the child through a pipe; decoded pixels and model inputs (those DecodeOutputs
  asks for) come back in a shared-memory segment that the parent views without copying (a model input
  made on the GPU comes back through host memory: a child's GPU memory cannot outlive it); the child reuses a segment once every array viewing it is
  gone (fresh pages cost more to fault in than the copy itself);
- when the child dies (or hangs past `timeout_s`), a new child decodes that batch again one image at
  a time; the image it dies on fails alone (an ImageDecodeError naming the signal) and the rest are
  decoded as usual.

It has DaliImageDecoder's interface (`decode`, `submit`, `batch_size`, `num_threads`, `device`, `outputs`).
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from beam_curator.formats.decoding import Decoded, DecodeOutputs, DecoderBase, ImageDecodeError
from beam_curator.formats.model_input import DeviceRow, ModelInput

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
                 outputs: DecodeOutputs = DecodeOutputs(), timeout_s: float = 600.0, _check_structure: bool = True):
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.device = "mixed" if use_gpu else "cpu"
        self.outputs = outputs
        self.restarts = 0
        self._options = {"batch_size": batch_size, "num_threads": num_threads, "use_gpu": use_gpu,
                         "device_id": device_id, "_check_structure": _check_structure,
                         "outputs": dataclasses.asdict(outputs)}
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
        try:  # noqa: SIM105 - at interpreter teardown contextlib itself may be gone
            self.close()
        except Exception:
            pass

    def decode(self, images: Sequence[bytes]) -> list[Decoded | ImageDecodeError]:
        """Decode `images`; each result is a Decoded or the error that stopped that image alone."""
        with self._lock:
            try:
                return self._decode_in_child(images)
            except DecoderProcessDied as died:
                _LOG.warning("the decoding process died (%s) on a batch of %d image(s); decoding it again "
                             "one image at a time", died, len(images))
                self._restart()
            results: list[Decoded | ImageDecodeError] = []
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

    def _decode_in_child(self, images: Sequence[bytes]) -> list[Decoded | ImageDecodeError]:
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

    def _results_from(self, reply: dict, pid: int) -> list[Decoded | ImageDecodeError]:
        """Decoded images whose arrays view the reply's shared-memory segment, and ImageDecodeErrors."""
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
            # Every array is a view of `whole`: when the last is gone, the child may reuse the segment.
            weakref.finalize(whole, self._released.append, (pid, segment))

        def view(where: list | None) -> np.ndarray | None:
            if where is None:
                return None
            assert whole is not None  # a reply with arrays has a segment
            offset, shape, dtype = where
            size = int(np.prod(shape)) * np.dtype(dtype).itemsize
            return whole[offset : offset + size].view(dtype).reshape(shape)

        results: list[Decoded | ImageDecodeError] = []
        for item in reply["results"]:
            if "error" in item:
                results.append(ImageDecodeError(item["error"]))
            else:
                results.append(Decoded(item["height"], item["width"], view(item["pixels"]), view(item["model_input"])))
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


_ALIGNMENT = 64  # each array of a segment starts on a cache line (and suits any dtype)


def _layout(results: list) -> tuple[list[dict[str, Any]], list[tuple[np.ndarray, int]], int]:
    """Where each result's arrays go in the reply's segment: (per-result layout, (array, offset) to
    copy, total bytes)."""
    layout: list[dict[str, Any]] = []
    copies: list[tuple[np.ndarray, int]] = []
    total = 0
    for result in results:
        if isinstance(result, ImageDecodeError):
            layout.append({"error": str(result)})
            continue
        item: dict[str, Any] = {"height": result.height, "width": result.width}
        for name in ("pixels", "model_input"):
            array = getattr(result, name)
            if isinstance(array, DeviceRow):
                array = array.to_host()
            if array is None:
                item[name] = None
                continue
            item[name] = [total, list(array.shape), array.dtype.str]
            copies.append((array, total))
            total += -(-array.nbytes // _ALIGNMENT) * _ALIGNMENT
        layout.append(item)
    return layout, copies, total


def _serve(options: dict) -> None:
    """Decode batches from stdin until it closes; reply with the arrays in a shared-memory segment."""
    from beam_curator.formats.decoding import DaliImageDecoder

    wanted = options.pop("outputs")
    spec = wanted["model_input"]  # dataclasses.asdict of the parent's ModelInput
    model_input = ModelInput.of(spec, spec["dtype"]) if spec else None
    decoder = DaliImageDecoder(**options, outputs=DecodeOutputs(pixels=wanted["pixels"], model_input=model_input))
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
        layout, copies, total = _layout(results)
        reply: dict[str, Any] = {"results": layout, "bytes": total, "segment": None, "path": None,
                                 "pillow": decoder.take_pillow_count()}
        if total:
            reply["segment"], whole, reply["path"] = segments.take(total)
            for array, start in copies:
                whole[start : start + array.nbytes] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        reply["dropped"], segments.dropped = segments.dropped, []
        del results, copies
        _send(replies, reply)


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
