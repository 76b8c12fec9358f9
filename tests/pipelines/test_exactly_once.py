"""Exactly-once output under retried bundles and interrupted finalize steps.

Beam's BundleBasedDirectRunner retries a failed bundle (up to 4 attempts) and keeps only the outputs
of the attempt that succeeded, like Dataflow; the failures are injected into the real writer code.
"""

import glob
import os
import tarfile

import pyarrow.parquet as pq
import pytest

from beam_curator import storage
from beam_curator.formats.webdataset import TarShardWriter
from beam_curator.output import commit
from beam_curator.transforms import ImageReaderStage, ImageWriterStage
from beam_curator.transforms.io import image_writer
from tests.support.helpers import curate, reader_fn, run_in_bundle, task_of
from tests.support.output import digests

RETRYING_RUNNER = ["--runner=BundleBasedDirectRunner"]


def assert_exactly_once(out, dataset):
    """Every input image is in the output once; only complete final shards remain."""
    assert not glob.glob(f"{out}/.beam_curator-temp-*"), "temporary files were left behind"
    tars = sorted(glob.glob(f"{out}/*.tar"))
    assert [path[: -len(".parquet")] for path in sorted(glob.glob(f"{out}/*.parquet"))] == [path[:-4] for path in tars]
    keys = []
    for tar in tars:
        with tarfile.open(tar) as archive:  # a truncated tar raises here
            members = [m.name for m in archive.getmembers()]
        table = pq.read_table(tar[:-4] + ".parquet")
        assert [f"{key}.jpg" for key in table.column("key").to_pylist()] == [m for m in members if m.endswith(".jpg")]
        keys += table.column("key").to_pylist()
    assert sorted(keys) == sorted(sample.key for sample in dataset.samples)


def _digests(out):
    return digests(out, run_files=False)


def test_writer_failing_on_first_attempts_is_retried_exactly_once(tmp_path, make_dataset, monkeypatch):
    dataset = make_dataset(shards=3, per_shard=7)
    failed = set()
    real_write = TarShardWriter.write_sample

    def flaky_write(self, key, members):
        # The first attempt at the 4th sample of each shard dies after writing part of the sample.
        if key.endswith("_0003") and key not in failed:
            failed.add(key)
            real_write(self, key, members[:1])
            raise OSError(f"injected failure writing {key}")
        return real_write(self, key, members)

    monkeypatch.setattr(TarShardWriter, "write_sample", flaky_write)
    out = str(tmp_path / "out")
    curate(dataset.directory, out, writer={"images_per_tar": 3}, extra_options=RETRYING_RUNNER)
    assert failed == {"s00_0003", "s01_0003", "s02_0003"}
    assert_exactly_once(out, dataset)

    reference = str(tmp_path / "reference")
    monkeypatch.setattr(TarShardWriter, "write_sample", real_write)
    curate(dataset.directory, reference, writer={"images_per_tar": 3})
    assert _digests(out) == _digests(reference)  # retries change nothing in the output


def test_crash_between_tar_and_parquet_rename_is_finished_by_the_retry(tmp_path, make_dataset, monkeypatch):
    dataset = make_dataset(shards=2, per_shard=5)
    crashed = []
    real_rename = storage.rename_many

    def crashing_rename(pairs):
        if pairs and pairs[0][1].endswith(".parquet") and not crashed:
            crashed.append(pairs[0][1])
            real_rename(pairs[:1])  # one parquet made it, the others did not
            raise OSError("injected crash after the tars were renamed")
        return real_rename(pairs)

    monkeypatch.setattr(commit.storage, "rename_many", crashing_rename)
    out = str(tmp_path / "out")
    curate(dataset.directory, out, writer={"images_per_tar": 2}, extra_options=RETRYING_RUNNER)
    assert len(crashed) == 1
    assert_exactly_once(out, dataset)


def _written_shards(dataset, tmp_path, out="out", **writer_options):
    """Run reader and writer DoFns by hand, as one bundle attempt: the PartitionOutputs a finalize would receive."""
    writer = ImageWriterStage(str(tmp_path / out), **writer_options)
    temp_dir = storage.join(writer.output_dir, ".beam_curator-temp-manual")
    reading = reader_fn(ImageReaderStage(dali_batch_size=3))
    write_fn = image_writer._WriteShardsFn(writer, temp_dir)
    write_fn.start_bundle()
    tasks = [task_of([path], index) for index, path in enumerate(sorted(dataset.shards))]
    outputs = []
    for batch in run_in_bundle(reading, tasks):
        outputs += [output for output in write_fn.process(batch) if isinstance(output, commit.PartitionOutput)]
    return writer, temp_dir, outputs


@pytest.mark.parametrize("deterministic", [True, False])
def test_finalize_twice_succeeds_and_changes_nothing(tmp_path, make_dataset, deterministic):
    dataset = make_dataset(shards=2, per_shard=5)
    writer, temp_dir, outputs = _written_shards(dataset, tmp_path, images_per_tar=2, deterministic_name=deterministic)
    # With deterministic names each partition was committed as it finished; with random names finalize renames.
    assert [output.committed for output in outputs] == [deterministic] * 2
    finalize = image_writer._CommitFn(writer.output_dir, temp_dir)
    first = list(finalize.process(outputs))
    digests = _digests(writer.output_dir)
    second = list(finalize.process(outputs))
    assert [task.data for task in first] == [task.data for task in second] and len(first) == 6
    assert _digests(writer.output_dir) == digests
    assert_exactly_once(writer.output_dir, dataset)


def test_a_second_commit_of_a_partition_changes_nothing(tmp_path, make_dataset):
    """A retried bundle, or a speculative copy of it, commits the same partitions again: same bytes,
    same names, same manifests, so the output is the same as after one commit."""
    dataset = make_dataset(shards=2, per_shard=5)
    writer, temp_dir, _first = _written_shards(dataset, tmp_path, images_per_tar=2)
    after_one = _digests(writer.output_dir)
    assert len([name for name in after_one if name.startswith("_partitions/")]) == 2
    _, _, second = _written_shards(dataset, tmp_path, images_per_tar=2)  # the second attempt
    assert _digests(writer.output_dir) == after_one
    list(image_writer._CommitFn(writer.output_dir, temp_dir).process(second))
    assert_exactly_once(writer.output_dir, dataset)
    assert _digests(writer.output_dir) == after_one


def test_finalize_ignores_attempts_that_were_not_committed(tmp_path, make_dataset):
    dataset = make_dataset(shards=2, per_shard=4)
    writer, temp_dir, outputs = _written_shards(dataset, tmp_path, images_per_tar=10, deterministic_name=False)
    # A failed attempt's leftovers in the temporary directory, which Beam never committed.
    stray = storage.join(temp_dir, "failed-attempt", os.path.basename(outputs[0].shards[0].temp_tar))
    with storage.create(stray) as handle:
        handle.write(b"partial")
    list(image_writer._CommitFn(writer.output_dir, temp_dir).process(outputs))
    assert_exactly_once(writer.output_dir, dataset)


def test_two_commits_of_one_name_are_refused(tmp_path, make_dataset):
    dataset = make_dataset(shards=1, per_shard=2)
    writer, temp_dir, outputs = _written_shards(dataset, tmp_path)
    with pytest.raises(RuntimeError, match="two committed outputs are both named"):
        list(image_writer._CommitFn(writer.output_dir, temp_dir).process(outputs * 2))
