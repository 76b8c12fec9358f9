import glob
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_curator.formats.schema import METADATA_SCHEMA
from beam_curator.transforms import FilePartitioningStage, ImageReaderStage, ImageWriterStage
from beam_curator.transforms.metrics import query_counters
from tests.support.helpers import collect_to, curate, read_collected, run_pipeline


def _tar_members(path):
    with tarfile.open(path) as archive:
        return [(m.name, archive.extractfile(m).read()) for m in archive.getmembers()]


def _outputs(directory):
    """The files at the top of an output (its shards), not its folders (_partitions/, ...)."""
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(directory, "*")) if os.path.isfile(p))


def test_tars_span_batches_and_hold_images_per_tar(tmp_path, make_dataset):
    dataset = make_dataset(shards=2, per_shard=23)
    out = str(tmp_path / "out")
    result = curate(dataset.directory, out, reader={"dali_batch_size": 4}, writer={"images_per_tar": 10},
                    collect_dir=str(tmp_path / "files"))
    tasks = sorted(read_collected(str(tmp_path / "files")), key=lambda task: task.task_id)
    # Each partition (one shard here) packs 23 images as 10 + 10 + 3, although batches hold 4.
    assert sorted(task._metadata["num_images"] for task in tasks) == [3, 3, 10, 10, 10, 10]
    for task in tasks:
        tar, parquet = task.data
        assert tar.endswith(".tar") and parquet == tar[:-4] + ".parquet" and os.path.exists(parquet)
        assert len(_tar_members(tar)) == 4 * task._metadata["num_images"]  # jpg, cls, json, txt
        assert pq.read_metadata(parquet).num_rows == task._metadata["num_images"]
    names = _outputs(out)
    assert len(names) == 12 and all(n.startswith("images-") for n in names)
    counts = query_counters(result)
    assert counts["tars_written"] == 6 and counts["images_committed"] == 46 == counts["images_written"]


def test_tar_and_parquet_content(tmp_path, make_dataset):
    dataset = make_dataset(shards=1, per_shard=5)
    out = str(tmp_path / "out")
    curate(dataset.directory, out, writer={"images_per_tar": 100})
    (tar,) = glob.glob(f"{out}/*.tar")
    samples = dataset.samples
    members = _tar_members(tar)
    expected = []
    for sample in samples:  # image first, then companions by extension
        expected.append((f"{sample.key}.jpg", sample.members["jpg"]))
        expected += [(f"{sample.key}.{ext}", sample.members[ext]) for ext in sorted(sample.members) if ext != "jpg"]
    assert members == expected
    table = pq.read_table(tar[:-4] + ".parquet")
    assert table.schema.equals(METADATA_SCHEMA, check_metadata=False)
    rows = table.to_pylist()
    assert [row["key"] for row in rows] == [row["original_key"] for row in rows] == [s.key for s in samples]
    assert [row["caption"] for row in rows] == [s.caption for s in samples]
    assert {row["tar_file"] for row in rows} == {os.path.basename(tar)}
    assert rows[0]["member_name"] == f"{samples[0].key}.jpg" and rows[0]["image_format"] == "jpg"
    assert rows[0]["original_path"].endswith(f"shard-00000.tar#{samples[0].key}.jpg")
    assert (rows[0]["width"], rows[0]["height"]) == (64, 48)
    # the .json member's object is the image's metadata (the member is still written byte for byte)
    assert [json.loads(row["metadata"]) for row in rows] == [json.loads(s.members["json"]) for s in samples]
    assert rows[0]["embedding"] is None and rows[0]["aesthetic_score"] is None


class _Annotate(beam.PTransform):
    """A curation stage: scores, an embedding, metadata; optionally new pixels for some images."""

    def __init__(self, change_pixels=False):
        super().__init__()
        self.change_pixels = change_pixels

    def expand(self, batches):
        def annotate(batch):
            for index, obj in enumerate(batch.data):
                obj.aesthetic_score = 0.5 + index
                obj.nsfw_score = 0.25
                obj.embedding = np.arange(4, dtype=np.float32) * index
                obj.metadata = {"stage": "annotate", "index": np.int64(index)}
                if self.change_pixels and index % 2 == 0:
                    obj.image_data = np.ascontiguousarray(obj.image_data[:, ::-1])  # a new array: mirrored
            return batch

        return batches | beam.Map(annotate)


def test_scores_embeddings_and_metadata_reach_the_parquet(tmp_path, make_dataset):
    dataset = make_dataset(shards=1, per_shard=3)
    out = str(tmp_path / "out")
    curate(dataset.directory, out, reader={"dali_batch_size": 10}, stage=_Annotate())
    (parquet,) = glob.glob(f"{out}/*.parquet")
    rows = pq.read_table(parquet).to_pylist()
    assert [row["aesthetic_score"] for row in rows] == [0.5, 1.5, 2.5]
    assert rows[2]["embedding"] == [0.0, 2.0, 4.0, 6.0] and rows[2]["nsfw_score"] == 0.25
    assert rows[1]["metadata"] == '{"index": 1, "stage": "annotate"}'
    assert pq.read_schema(parquet).field("embedding").type == pa.list_(pa.float32())


def test_changed_pixels_are_reencoded_and_others_pass_through(tmp_path, make_dataset):
    dataset = make_dataset(shards=1, per_shard=4)
    out = str(tmp_path / "out")
    curate(dataset.directory, out, reader={"dali_batch_size": 10}, stage=_Annotate(change_pixels=True),
           writer={"jpeg_quality": 90})
    (tar,) = glob.glob(f"{out}/*.tar")
    images = {name: data for name, data in _tar_members(tar) if name.endswith(".jpg")}
    samples = dataset.samples
    from PIL import Image

    for index, sample in enumerate(samples):
        data = images[f"{sample.key}.jpg"]
        if index % 2:
            assert data == sample.members["jpg"]  # untouched: the original bytes
        else:
            assert data != sample.members["jpg"]
            original = np.asarray(Image.open(io.BytesIO(sample.members["jpg"])).convert("RGB"))
            mirrored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            assert np.abs(mirrored.astype(int) - original[:, ::-1]).mean() < 6


def test_force_reencode_rewrites_every_image(tmp_path, make_dataset):
    dataset = make_dataset(shards=1, per_shard=3)
    out = str(tmp_path / "out")
    curate(dataset.directory, out, writer={"force_reencode": True})
    (tar,) = glob.glob(f"{out}/*.tar")
    originals = {f"{s.key}.jpg": s.members["jpg"] for s in dataset.samples}
    written = {name: data for name, data in _tar_members(tar) if name.endswith(".jpg")}
    assert written.keys() == originals.keys()
    assert all(written[name] != originals[name] and written[name][:2] == b"\xff\xd8" for name in written)


def test_deterministic_names_repeat_and_random_names_do_not(tmp_path, make_dataset):
    dataset = make_dataset(shards=2, per_shard=3)
    runs = {}
    for run, deterministic in [("a", True), ("b", True), ("c", False), ("d", False)]:
        curate(dataset.directory, str(tmp_path / run), writer={"deterministic_name": deterministic})
        runs[run] = _outputs(str(tmp_path / run))
    assert runs["a"] == runs["b"] and len(runs["a"]) == 4
    assert not set(runs["c"]) & set(runs["d"]) and not set(runs["a"]) & set(runs["c"])
    for run in "ab":
        for name in runs[run]:
            assert Path(tmp_path / "a" / name).read_bytes() == Path(tmp_path / "b" / name).read_bytes()
    curate(dataset.directory, str(tmp_path / "e"), writer={"images_per_tar": 7})
    assert not set(_outputs(str(tmp_path / "e"))) & set(runs["a"])  # options shape the names too


def test_existing_output_stops_the_run_unless_overwrite(tmp_path, make_dataset):
    dataset = make_dataset(shards=1, per_shard=3)
    out = str(tmp_path / "out")
    curate(dataset.directory, out)
    (tmp_path / "out" / "keep.txt").write_text("not ours")
    stale = tmp_path / "out" / "images-0000000000000000-000000.tar"
    stale.write_bytes(b"old")
    with pytest.raises(FileExistsError, match=r"holds 1 committed partition\(s\).*--resume"):
        curate(dataset.directory, out)
    shutil.rmtree(tmp_path / "out" / "_partitions")  # shards without manifests: an older version's output
    with pytest.raises(FileExistsError, match="already holds 3 shard file"):
        curate(dataset.directory, out)
    curate(dataset.directory, out, writer={"overwrite": True})
    assert not stale.exists() and (tmp_path / "out" / "keep.txt").exists()
    assert len(glob.glob(f"{out}/_partitions/*.json")) == 1
    assert len(glob.glob(f"{out}/images-*")) == 2
    assert not glob.glob(f"{out}/.beam_curator-temp-*")


def test_remove_image_data_drops_pixels_on_the_written_output(tmp_path, make_dataset):
    dataset = make_dataset(shards=1, per_shard=3)
    for remove in (False, True):
        written_dir = str(tmp_path / f"written-{remove}")

        def build(pipeline, remove=remove, written_dir=written_dir):
            batches = pipeline | FilePartitioningStage(dataset.directory) | ImageReaderStage()
            writer = ImageWriterStage(str(tmp_path / f"out-{remove}"), remove_image_data=remove)
            collect_to((batches | writer.with_written_batches()).written, written_dir)

        run_pipeline(build)
        (batch,) = read_collected(written_dir)
        assert batch.num_items == 3
        assert all((obj.image_data is None) == remove for obj in batch.data)
        assert all(obj.image_bytes is not None for obj in batch.data)
        assert [perf.stage for perf in batch._stage_perf] == ["image_reader", "image_writer"]


def test_same_key_from_two_shards_of_one_partition_gets_a_unique_member(tmp_path):
    from tests.support.helpers import Sample, encode, make_image, write_tar

    directory = tmp_path / "in"
    directory.mkdir()
    for name in ("a", "b"):
        write_tar(str(directory / f"{name}.tar"), [Sample("same", {"jpg": encode(make_image(ord(name)))}),
                                                   Sample("x y", {"v2.jpg": encode(make_image(1))})])
    out = str(tmp_path / "out")
    curate(str(directory), out, files_per_partition=2)
    (parquet,) = glob.glob(f"{out}/*.parquet")
    rows = pq.read_table(parquet).to_pylist()
    assert [row["original_key"] for row in rows] == ["same", "x y", "same", "x y"]
    keys = [row["key"] for row in rows]
    assert keys[0] == "same" and keys[2] == "same_1" and len(set(keys)) == 4
    assert all(" " not in key and "." not in key for key in keys)
    assert rows[1]["member_name"] == f"{keys[1]}.v2.jpg" and rows[1]["image_format"] == "v2.jpg"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"output_dir": ""}, "output_dir must be"),
        ({"output_dir": "o", "images_per_tar": 0}, "images_per_tar must be a positive integer"),
        ({"output_dir": "o", "jpeg_quality": 101}, "jpeg_quality must be an integer from 1 to 100"),
    ],
)
def test_writer_options_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        ImageWriterStage(**options)


def test_jpeg_quality_sets_the_quality_of_reencoded_images(tmp_path, make_dataset):
    dataset = make_dataset(shards=1, per_shard=3)
    sizes = {}
    for quality in (30, 95):
        out = str(tmp_path / f"q{quality}")
        curate(dataset.directory, out, writer={"force_reencode": True, "jpeg_quality": quality})
        (tar,) = glob.glob(f"{out}/*.tar")
        sizes[quality] = sum(len(data) for name, data in _tar_members(tar) if name.endswith(".jpg"))
    assert sizes[30] < sizes[95] * 0.6


def test_verbose_logs_each_tar(tmp_path, make_dataset, caplog):
    import logging

    dataset = make_dataset(shards=1, per_shard=3)
    for verbose, expected in [(True, 2), (False, 0)]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="beam_curator"):
            curate(dataset.directory, str(tmp_path / f"v{verbose}"), writer={"verbose": verbose, "images_per_tar": 2})
        assert sum("wrote" in r.getMessage() and "image(s) to" in r.getMessage() for r in caplog.records) == expected


def test_unusable_pixels_fail_that_image_alone(tmp_path, make_dataset):
    dataset = make_dataset(shards=1, per_shard=3)
    out, failures_dir = str(tmp_path / "out"), str(tmp_path / "failures")

    def spoil_second(batch):
        batch.data[1].image_data = np.zeros((4, 4), np.float32)  # a stage's bug: not HxWx3 uint8
        return batch

    def build(pipeline):
        batches = pipeline | FilePartitioningStage(dataset.directory) | ImageReaderStage() | beam.Map(spoil_second)
        failures = (batches | ImageWriterStage(out).with_exception_handling()).failures
        collect_to(failures, failures_dir)

    result = run_pipeline(build)
    (failure,) = read_collected(failures_dir)
    assert (failure.key, failure.stage, failure.scope, failure.error_class) == ("s00_0001", "image_writer", "sample", "ValueError")
    assert "must be HxWx3 uint8" in failure.message
    rows = pq.read_table(glob.glob(f"{out}/*.parquet")).to_pylist()
    assert [row["key"] for row in rows] == ["s00_0000", "s00_0002"]
    assert query_counters(result)["images_write_failed"] == 1
