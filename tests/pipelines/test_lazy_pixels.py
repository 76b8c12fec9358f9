"""Pixels only where a stage uses them: the reader hands full-size pixels over only when a stage after it
(or the writer, re-encoding) needs `image_data`; the stats count the images whose pixels came to the host."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from beam_curator.formats.decoding import DaliImageDecoder
from beam_curator.jobs.curate import curate
from beam_curator.transforms.stages.kit import CurationStage
from tests.support.output import image_digests, rows


class RecordPixels(CurationStage):
    """Stores what it saw of each image in its metadata: the sha256 of its pixels (or None) and its size."""

    def __init__(self, needs: tuple[str, ...], *, name: str = "record_pixels"):
        super().__init__(name=name)
        self.needs = needs

    def judge(self, image):
        pixels = image.image_data
        seen = {"pixels_sha256": hashlib.sha256(pixels.tobytes()).hexdigest() if pixels is not None else None,
                "size": [image.width, image.height]}
        return dataclasses.replace(image, metadata={**image.metadata, "seen": seen})


def _seen(output: str) -> dict[str, dict]:
    return {row["image_id"]: json.loads(row["metadata"])["seen"] for row in rows(output)}


def _image_bytes(dataset) -> list[bytes]:
    return [sample.members["jpg"] for sample in dataset.samples]


def _reader_counts(stats) -> dict:
    return stats.stages["image_reader"]


def test_pass_through_copies_no_pixels_and_writes_the_same_bytes(make_dataset, tmp_path):
    dataset = make_dataset(shards=2, per_shard=6)
    lazy = curate(dataset.directory, str(tmp_path / "lazy"), stages=[RecordPixels(needs=())])
    eager = curate(dataset.directory, str(tmp_path / "eager"), stages=[RecordPixels(needs=("image_data",))])
    assert lazy.images_written == eager.images_written == 12
    assert _reader_counts(lazy).get("pixels_to_host", 0) == 0
    assert _reader_counts(eager)["pixels_to_host"] == 12
    assert image_digests(str(tmp_path / "lazy")) == image_digests(str(tmp_path / "eager")) == sorted(hashlib.sha256(data).hexdigest() for data in _image_bytes(dataset))
    lazy_seen, eager_seen = _seen(str(tmp_path / "lazy")), _seen(str(tmp_path / "eager"))
    assert set(lazy_seen) == set(eager_seen)
    for image_id, seen in lazy_seen.items():
        assert seen["pixels_sha256"] is None
        assert seen["size"] == eager_seen[image_id]["size"]  # the sizes come from the decoder's shapes


def test_a_stage_that_needs_pixels_gets_exactly_the_decoded_pixels(make_dataset, tmp_path):
    dataset = make_dataset(shards=1, per_shard=5)
    curate(dataset.directory, str(tmp_path / "out"), stages=[RecordPixels(needs=("image_data",))])
    decoder = DaliImageDecoder(batch_size=8, num_threads=2, use_gpu=False)
    by_sha = {}
    for sample_bytes in _image_bytes(dataset):
        (decoded,) = decoder.decode([sample_bytes])
        by_sha[hashlib.sha256(sample_bytes).hexdigest()] = hashlib.sha256(decoded.pixels.tobytes()).hexdigest()
    seen = {row["sha256"]: json.loads(row["metadata"])["seen"]["pixels_sha256"] for row in rows(str(tmp_path / "out"))}
    assert seen == by_sha


def test_re_encoding_keeps_the_pixels_for_the_writer(make_dataset, tmp_path):
    dataset = make_dataset(shards=1, per_shard=4)
    stats = curate(dataset.directory, str(tmp_path / "out"), force_reencode=True)
    assert stats.images_written == 4 and _reader_counts(stats)["pixels_to_host"] == 4


@pytest.mark.gpu
def test_on_the_gpu_pass_through_copies_nothing_back_and_embeds_from_the_device(make_dataset, tmp_path,
                                                                              exported_models):
    """A GPU worker (decoder in process): a pass-through run copies no pixels to the host; a model run
    embeds from the model input DALI left on the GPU and gives the CPU run's embeddings."""
    import numpy as np

    dataset = make_dataset(shards=2, per_shard=6)
    gpu = {"num_gpus_per_worker": 1, "isolate_decoder": "never"}
    stats = curate(dataset.directory, str(tmp_path / "pass"), **gpu)
    assert _reader_counts(stats).get("pixels_to_host", 0) == 0 and stats.images_written == 12
    assert image_digests(str(tmp_path / "pass")) == sorted(hashlib.sha256(d).hexdigest() for d in _image_bytes(dataset))
    embedded = {}
    for name, options in (("gpu", gpu), ("cpu", {"num_gpus_per_worker": 0})):
        out = str(tmp_path / f"embed-{name}")
        stats = curate(dataset.directory, out, model_dir=exported_models.model_dir, embed=True, **options)
        assert _reader_counts(stats).get("pixels_to_host", 0) == 0 and stats.images_written == 12
        embedded[name] = {row["image_id"]: np.asarray(row["embedding"]) for row in rows(out)}
    assert embedded["gpu"].keys() == embedded["cpu"].keys()
    cosines = [float(np.dot(embedded["gpu"][key], embedded["cpu"][key])) for key in embedded["gpu"]]
    assert min(cosines) > 0.99, cosines  # the GPU's decode and resize differ from the CPU's by a level or so
