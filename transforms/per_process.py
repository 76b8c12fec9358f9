"""One heavy object per worker process: the reader's decoder, the model stages' sessions, the removal
stage's list.

Beam's Python harness makes one DoFn instance per thread, so anything built in a DoFn's setup() would
be built once per thread. PerProcess builds it once per process (apache_beam.utils.shared) and lets
every thread of the process use it; the DoFn instance that built it reports the build as a metric on
its first element (counters incremented in setup() are dropped by the FnApiRunner).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from apache_beam.utils import shared

from beam_curator.transforms.metrics import counter

__all__ = ["Held", "PerProcess", "use_gpu"]

T = TypeVar("T")


def use_gpu(num_gpus_per_worker: float) -> bool:
    """Whether a stage asking for num_gpus_per_worker runs on the GPU in this process: it asks for one
    (> 0) and the process sees a CUDA device."""
    if num_gpus_per_worker <= 0:
        return False
    from beam_curator.formats.decoding import cuda_device_count

    return cuda_device_count() > 0


class _Holder:
    """What Shared keeps (it needs an object that takes a weak reference)."""

    def __init__(self, value):
        self.value = value
        self.label = f"{os.uname().nodename}:{os.getpid()}:{id(value):x}"


class Held(Generic[T]):
    """A DoFn instance's hold on the process's object: `value`; `label` names the process and object
    ("{host}:{pid}:{id}"); report_build() counts the build once, from the instance that built it."""

    def __init__(self, holder: _Holder, built_here: bool, metric: str):
        self._holder = holder  # holding it keeps the shared object alive as long as the DoFn lives
        self.value: T = holder.value
        self.label = holder.label
        self._built_here, self._metric = built_here, metric

    def report_build(self) -> None:
        if self._built_here:
            counter(self._metric).inc()
            self._built_here = False


class PerProcess(Generic[T]):
    """Made with the stage (on the launcher, pickled with it); acquire() in the DoFn's setup()."""

    def __init__(self, metric: str):
        self._shared = shared.Shared()
        self.metric = metric

    def acquire(self, build: Callable[[], T], *, tag: Hashable) -> Held[T]:
        """The process's object for `tag`, built with build() by the first thread that asks."""
        built = []

        def make() -> _Holder:
            built.append(True)
            return _Holder(build())

        holder = self._shared.acquire(make, tag=tag)
        return Held(holder, bool(built), self.metric)
