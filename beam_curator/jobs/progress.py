"""Progress of a local run: the workers' running totals (see ImageReaderStage(progress_dir)) summed
into a progress bar on a terminal, or a plain line every PROGRESS_EVERY_S seconds otherwise."""

from __future__ import annotations

import datetime
import json
import os
import sys
import threading
import time

__all__ = ["PROGRESS_EVERY_S", "ProgressReporter"]

PROGRESS_EVERY_S = 30.0  # a plain progress line when stderr is not a terminal


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

        with tqdm(total=self._total, unit="shard", file=self._stream, dynamic_ncols=True, leave=False) as bar:
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
