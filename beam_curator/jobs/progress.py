"""Progress of a local run: the workers' running totals (see ImageReaderStage(progress_dir)) summed
into a progress bar on a terminal, or a plain line every PROGRESS_EVERY_S seconds otherwise."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import sys
import threading
import time

__all__ = ["PROGRESS_EVERY_S", "ProgressReporter"]

PROGRESS_EVERY_S = 30.0  # a plain progress line when stderr is not a terminal


class _AboveTheBar(logging.Handler):
    """Writes a log record through tqdm, which clears the bar, prints the line and draws the bar again:
    log lines and the bar never overwrite each other."""

    def __init__(self, stream, formatter, filters):
        super().__init__()
        self._stream = stream
        self.setFormatter(formatter)
        for one in filters:
            self.addFilter(one)

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self._stream)
        except Exception:  # logging must not fail the run
            self.handleError(record)


@contextlib.contextmanager
def _log_lines_above(bar):
    """While the bar shows, the root logger's stderr handlers write through tqdm (_AboveTheBar)."""
    root = logging.getLogger()
    saved = list(root.handlers)
    root.handlers[:] = [_AboveTheBar(bar.fp, handler.formatter, handler.filters)
                        if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stderr, sys.__stderr__)
                        else handler for handler in saved]
    try:
        yield
    finally:
        root.handlers[:] = saved


class ProgressReporter(threading.Thread):
    """Sums the workers' progress files: a progress bar on a terminal (refreshed every second), else a
    plain line every PROGRESS_EVERY_S seconds."""

    def __init__(self, directory: str, total_shards: int, started: float, stream=None):
        super().__init__(name="beam_curator-progress", daemon=True)
        self._directory = directory
        self._total = total_shards
        self._start_time = started
        self._stream = stream or sys.stderr
        self._done = threading.Event()

    def run(self) -> None:
        if not self._stream.isatty():
            while not self._done.wait(PROGRESS_EVERY_S):
                print(self.line(*self.read()), file=self._stream, flush=True)
            return
        from tqdm import tqdm

        with tqdm(total=self._total, unit="shard", file=self._stream, dynamic_ncols=True, leave=False) as bar, \
                _log_lines_above(bar):
            while True:
                stopping = self._done.wait(1.0)
                shards, images = self.read()
                elapsed = max(time.monotonic() - self._start_time, 1e-9)
                bar.update(shards - bar.n)
                bar.set_postfix_str(f"{images} images, {images / elapsed:.0f} images/s", refresh=True)
                if stopping:
                    return

    def line(self, shards: int, images: int) -> str:
        """`progress: 3/8 shards (38%), 750 images, 124.1 images/s, ETA 0:00:10`."""
        elapsed = max(time.monotonic() - self._start_time, 1e-9)
        percent = 100 * shards / self._total if self._total else 100.0
        eta = (f"{datetime.timedelta(seconds=round(elapsed * (self._total - shards) / shards))}"
               if 0 < shards < self._total else "-" if not shards else "0:00:00")
        return (f"progress: {shards}/{self._total} shards ({percent:.0f}%), {images} images, "
                f"{images / elapsed:.1f} images/s, ETA {eta}")

    def read(self) -> tuple[int, int]:
        shards = images = 0
        for name in os.listdir(self._directory):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(self._directory, name)) as handle:
                    figures = json.load(handle)
            except (OSError, ValueError):
                continue  # replaced while we read it; the next round sees it
            shards += figures["shards"]
            images += figures["images"]
        return shards, images

    def stop(self) -> None:
        self._done.set()
        if self.is_alive():
            self.join(timeout=5)
