"""Helpers: tiny WebDataset shards built with Python's tarfile, and pipeline runners."""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import pickle
import socket
import subprocess
import tarfile
import time
import uuid
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from tests.support.images import encode, make_image

FNAPI = ["--runner=FnApiRunner"]


def pixels_of(results: list) -> list:
    """A decoder's results with each Decoded replaced by its pixels (errors stay as they are)."""
    return [getattr(result, "pixels", result) for result in results]


@dataclass
class Sample:
    key: str
    members: dict[str, bytes] = field(default_factory=dict)  # extension -> bytes, in tar order

    @property
    def caption(self) -> str | None:
        raw = self.members.get("txt")
        return None if raw is None else raw.decode()


def write_tar(path: str, samples: list[Sample], tar_format: int = tarfile.USTAR_FORMAT) -> str:
    """A plain tar written with Python's tarfile (not beam_curator's writer)."""
    with tarfile.open(path, "w", format=tar_format) as archive:
        for sample in samples:
            add_sample(archive, sample)
    return path


def add_sample(archive: tarfile.TarFile, sample: Sample) -> None:
    """Append a sample's members to an open tar, adjacent, in the sample's order."""
    for extension, payload in sample.members.items():
        info = tarfile.TarInfo(f"{sample.key}.{extension}")
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))


def make_samples(shard: int, count: int, *, with_json: bool = True, fmt: str = "JPEG") -> list[Sample]:
    samples = []
    for index in range(count):
        seed = shard * 1000 + index
        extension = {"JPEG": "jpg", "PNG": "png"}[fmt]
        members = {extension: encode(make_image(seed, 64 + index % 5 * 8, 48 + index % 3 * 8), fmt)}
        members["txt"] = f"caption of shard {shard} image {index} — ünïcode".encode()
        if with_json:
            members["json"] = json.dumps({"shard": shard, "index": index}).encode()
        members["cls"] = str(index % 4).encode()
        samples.append(Sample(key=f"s{shard:02d}_{index:04d}", members=members))
    return samples


@dataclass
class Dataset:
    directory: str
    shards: dict[str, list[Sample]]  # path -> samples

    @property
    def samples(self) -> list[Sample]:
        return [sample for samples in self.shards.values() for sample in samples]


def build_dataset(directory, shards: int = 2, per_shard: int = 12, **options) -> Dataset:
    os.makedirs(directory)
    written = {}
    for shard in range(shards):
        samples = make_samples(shard, per_shard, **options)
        written[write_tar(os.path.join(directory, f"shard-{shard:05d}.tar"), samples)] = samples
    return Dataset(str(directory), written)


def expected_id(shard, key: str, image: bytes, occurrence: int = 0) -> str:
    """The image_id the reader gives the sample `key` (its occurrence-th) with image bytes `image` of
    the raw shard at path `shard` (beam_curator.identity's rule, spelled out here as the test's oracle)."""
    import hashlib

    payload = f"{os.path.realpath(str(shard))}\n{key}\n{occurrence}\n{hashlib.sha256(image).hexdigest()}"
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def task_of(paths, index: int = 0, task_id: str | None = None):
    """A reader's FileGroupTask for these shards, as FilePartitioningStage makes them (partition `index`)."""
    from beam_curator.tasks import FileGroupTask, PartitionInfo

    paths = [str(path) for path in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    return FileGroupTask(task_id=task_id or f"p{index}", dataset_name="d", data=paths,
                         partition=PartitionInfo(index=index, source_files=tuple(paths)))


def reader_fn(stage):
    """The set-up DoFn of a reader stage (ImageReaderStage, CuratedShardReader), to drive by hand."""
    fn = stage._fn()
    fn.setup()
    return fn


def run_in_bundle(fn: beam.DoFn, elements):
    """Run a set-up DoFn by hand over elements as one bundle (start, process each, finish), lazily.

    Yields its outputs without their windows: values, and TaggedOutputs of values.
    """
    import inspect

    from apache_beam.transforms.window import GlobalWindow
    from apache_beam.utils.timestamp import MIN_TIMESTAMP
    from apache_beam.utils.windowed_value import WindowedValue

    wanted = inspect.signature(fn.process).parameters
    where = {name: value for name, value in (("timestamp", MIN_TIMESTAMP), ("window", GlobalWindow())) if name in wanted}

    def unwrap(output):
        if isinstance(output, beam.pvalue.TaggedOutput):
            return beam.pvalue.TaggedOutput(output.tag, unwrap(output.value))
        return output.value if isinstance(output, WindowedValue) else output

    fn.start_bundle()
    for element in elements:
        for output in fn.process(element, **where) or ():
            yield unwrap(output)
    for output in fn.finish_bundle() or ():
        yield unwrap(output)


def run_pipeline(build, extra_options: list[str] | None = None):
    """Build with build(pipeline) and run to completion on the FnApiRunner (unless options say else)."""
    pipeline = beam.Pipeline(options=PipelineOptions([*FNAPI, *(extra_options or [])]))
    build(pipeline)
    result = pipeline.run()
    result.wait_until_finish()
    return result


class _Dump(beam.DoFn):
    def __init__(self, directory: str):
        self._directory = directory

    def process(self, element):
        with open(os.path.join(self._directory, f"{uuid.uuid4().hex}.pkl"), "wb") as handle:
            pickle.dump(element, handle)


def collect_to(pcoll, directory: str, label: str = "Collect"):
    """Write every element of pcoll to directory (works across worker processes); read with read_collected."""
    os.makedirs(directory, exist_ok=True)
    return pcoll | label >> beam.ParDo(_Dump(directory))


def read_collected(directory: str) -> list:
    elements = []
    for path in sorted(glob.glob(os.path.join(directory, "*.pkl"))):
        with open(path, "rb") as handle:
            elements.append(pickle.load(handle))
    return elements


def curate(input_dir: str, output_dir: str, *, reader=None, writer=None, stage=None, extra_options=None,
           files_per_partition: int = 1, collect_dir: str | None = None):
    """Partition -> read -> (stage) -> write; returns the pipeline result. Collects FileGroupTasks to collect_dir."""
    from beam_curator.transforms import FilePartitioningStage, ImageReaderStage, ImageWriterStage

    def build(pipeline):
        batches = (
            pipeline
            | FilePartitioningStage(input_dir, files_per_partition=files_per_partition)
            | ImageReaderStage(**(reader or {}))
        )
        if stage is not None:
            batches = batches | stage
        files = (batches | ImageWriterStage(output_dir, **(writer or {}))).files
        if collect_dir:
            collect_to(files, collect_dir)

    return run_pipeline(build, extra_options)


@contextlib.contextmanager
def loopback_server(command_for_port, log_path: str, what: str):
    """Start command_for_port(port) on a free 127.0.0.1 port, wait until it accepts connections,
    yield the port, and stop it afterwards."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command_for_port(port), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"{what} did not start; see {log_path}") from None
                    time.sleep(0.2)
            yield port
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
