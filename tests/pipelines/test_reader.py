import logging

import numpy as np
import pytest

from beam_curator.formats.decoding import decode_with_pillow
from beam_curator.tasks import FileGroupTask, ImageBatch
from beam_curator.transforms import FilePartitioningStage, ImageReaderStage
from beam_curator.transforms.metrics import query_counters
from tests.support.helpers import (
    collect_to,
    expected_id,
    read_collected,
    reader_fn,
    run_in_bundle,
    run_pipeline,
    task_of,
)


def _read(tmp_path, dataset, **reader_options):
    out = str(tmp_path / "batches")
    result = run_pipeline(
        lambda p: collect_to(p | FilePartitioningStage(dataset.directory) | ImageReaderStage(**reader_options), out)
    )
    batches = sorted(read_collected(out), key=lambda batch: batch.task_id)
    return batches, query_counters(result)


def test_reads_every_sample_with_key_companions_and_bytes(tmp_path, make_dataset):
    dataset = make_dataset(shards=2, per_shard=12)
    batches, counts = _read(tmp_path, dataset, dali_batch_size=5, num_threads=2)
    assert [batch.num_items for batch in batches] == [5, 5, 2, 5, 5, 2]
    assert [batch.origin.batch_index for batch in batches] == [0, 1, 2] * 2
    assert [batch.origin.last for batch in batches] == [False, False, True] * 2
    objects = [obj for batch in batches for obj in batch.data]
    expected = {(path, s.key): s for path, samples in dataset.shards.items() for s in samples}
    assert len(objects) == len(expected) == 24
    for obj in objects:
        shard_path, _, member = obj.image_path.partition("#")
        sample = expected[(shard_path, obj.key)]
        assert member == f"{obj.key}.jpg"
        assert obj.image_id == expected_id(shard_path, obj.key, sample.members["jpg"])
        assert obj.image_bytes == sample.members["jpg"] and obj.image_format == "jpg"
        assert obj.companions == {k: v for k, v in sample.members.items() if k != "jpg"}
        assert obj.caption == sample.caption
        assert obj.image_data.dtype == np.uint8 and obj.image_data.shape == (obj.height, obj.width, 3)
        assert np.abs(obj.image_data.astype(int) - decode_with_pillow(obj.image_bytes)).mean() < 2
        assert obj.pixels_unchanged and not obj.image_data.flags.writeable
    assert len({obj.image_id for obj in objects}) == 24
    assert all(batch.validate() for batch in batches)
    assert [perf.stage for perf in batches[0]._stage_perf] == ["image_reader"]
    assert batches[0]._stage_perf[0].items == 5 and batches[0]._stage_perf[0].seconds > 0
    assert counts["samples_read"] == 24 and counts["images_decoded"] == 24 and counts["shards_read"] == 2


def test_image_ids_are_deterministic_across_runs(tmp_path, make_dataset):
    dataset = make_dataset(shards=1, per_shard=4)
    first, _ = _read(tmp_path / "a", dataset, dali_batch_size=3)
    second, _ = _read(tmp_path / "b", dataset, dali_batch_size=3)
    ids = lambda batches: [obj.image_id for batch in batches for obj in batch.data]
    ((shard, samples),) = dataset.shards.items()
    assert ids(first) == ids(second) == [expected_id(shard, s.key, s.members["jpg"]) for s in samples]


def test_png_samples_and_samples_without_image(tmp_path):
    from tests.support.helpers import Sample, encode, make_image, write_tar

    directory = tmp_path / "in"
    directory.mkdir()
    png = encode(make_image(1), "PNG")
    write_tar(str(directory / "a.tar"), [
        Sample("one", {"PNG": png, "txt": b"upper-case extension"}),
        Sample("two", {"txt": b"caption only"}),
        Sample("one", {"png": png}),  # the same key again in one tar
    ])
    batches, counts = _read(tmp_path, type("D", (), {"directory": str(directory)}), dali_batch_size=10)
    (batch,) = batches
    shard = str(directory / "a.tar")
    assert [obj.image_id for obj in batch.data] == [expected_id(shard, "one", png), expected_id(shard, "one", png, 1)]
    np.testing.assert_array_equal(batch.data[0].image_data, make_image(1))
    assert counts["samples_failed"] == 1 and counts["samples_read"] == 3


def _direct_fn(**options):
    return reader_fn(ImageReaderStage(**options))


def test_batches_stream_out_before_the_partition_is_read(make_dataset):
    dataset = make_dataset(shards=1, per_shard=12)
    (shard,) = dataset.shards
    task = task_of([shard, shard + ".missing"])
    fn = _direct_fn(dali_batch_size=4)
    fn._emit_failures = True
    outputs = run_in_bundle(fn, [task])
    first = next(outputs)  # decoded and emitted while the second file was never opened
    assert first.num_items == 4
    rest = list(outputs)
    assert [batch.num_items for batch in rest if isinstance(batch, ImageBatch)] == [4, 4, 0]
    (failure,) = [output.value for output in rest if not isinstance(output, ImageBatch)]
    assert (failure.source, failure.scope) == (shard + ".missing", "shard")


def test_a_batch_sent_during_the_next_task_keeps_its_own_window(make_dataset):
    # The reader sends a partition's last batch only once the next partition's first batch is on
    # DALI (or at the end of the bundle); it must still carry its own task's window and timestamp.
    from apache_beam.transforms.window import IntervalWindow
    from apache_beam.utils.timestamp import Timestamp
    from apache_beam.utils.windowed_value import WindowedValue

    dataset = make_dataset(shards=2, per_shard=5)
    fn = _direct_fn(dali_batch_size=4)
    fn.start_bundle()
    sent = []
    for index, shard in enumerate(sorted(dataset.shards)):
        task = task_of([shard], index)
        sent += [(index, output) for output in fn.process(task, timestamp=Timestamp(index), window=IntervalWindow(index, index + 1))]
    sent += [(None, output) for output in fn.finish_bundle()]
    assert all(isinstance(output, WindowedValue) for _, output in sent)
    got = [(during, out.value.origin.partition, out.value.num_items, out.timestamp, out.windows[0].start)
           for during, out in sent]
    assert got == [
        (0, 0, 4, Timestamp(0), Timestamp(0)),  # partition 0's first batch, sent once its second was queued
        (1, 0, 1, Timestamp(0), Timestamp(0)),  # partition 0's last batch, sent while partition 1 is read
        (1, 1, 4, Timestamp(1), Timestamp(1)),
        (None, 1, 1, Timestamp(1), Timestamp(1)),  # the bundle's last batch, from finish_bundle
    ]


def test_options_reach_the_dali_pipeline(make_dataset):
    fn = _direct_fn(dali_batch_size=3, num_threads=2, num_gpus_per_worker=0)
    decoder = fn._decoder.value
    assert (decoder.batch_size, decoder.num_threads, decoder.device) == (3, 2, "cpu")


def test_one_pipeline_is_shared_by_the_dofns_of_a_process():
    stage = ImageReaderStage(dali_batch_size=2)
    first, second = reader_fn(stage), reader_fn(stage)
    assert first._decoder.value is second._decoder.value
    assert first._decoder._built_here and not second._decoder._built_here


def test_verbose_logs_one_line_per_shard(make_dataset, caplog):
    dataset = make_dataset(shards=1, per_shard=2)
    (shard,) = dataset.shards
    task = task_of([shard])
    for verbose, expected in [(True, 1), (False, 0)]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="beam_curator"):
            list(run_in_bundle(_direct_fn(verbose=verbose), [task]))
        assert sum("read 2 image(s) from" in r.getMessage() for r in caplog.records) == expected


@pytest.mark.parametrize(
    "options, message",
    [
        ({"dali_batch_size": 0}, "dali_batch_size must be a positive integer"),
        ({"num_threads": 0}, "num_threads must be a positive integer"),
        ({"num_gpus_per_worker": -1}, "num_gpus_per_worker must be 0"),
    ],
)
def test_options_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        ImageReaderStage(**options)


def test_no_gpu_means_cpu_even_when_gpus_are_requested():
    fn = _direct_fn(num_gpus_per_worker=1)
    from beam_curator.formats.decoding import cuda_device_count

    assert fn._decoder.value.device == ("mixed" if cuda_device_count() else "cpu")


@pytest.mark.gpu
def test_gpu_worker_decodes_with_mixed(make_dataset):
    dataset = make_dataset(shards=1, per_shard=3)
    (shard,) = dataset.shards
    fn = _direct_fn(num_gpus_per_worker=0.25)
    assert fn._decoder.value.device == "mixed"
    (batch,) = list(run_in_bundle(fn, [task_of([shard])]))
    assert batch.num_items == 3


def test_each_batch_carries_exactly_its_own_counts(tmp_path):
    # 10 samples in batches of 4: each batch counts the samples it holds, a failure with the batch it
    # was found in, and the shard with the last batch (no look-ahead moves a count to a neighbour).
    from tests.support.helpers import Sample, encode, make_image, write_tar

    good = [Sample(f"g{index}", {"jpg": encode(make_image(index))}) for index in range(9)]
    cut = encode(make_image(99, 200, 150))
    samples = [*good[:5], Sample("cut", {"jpg": cut[:len(cut) // 2]}), *good[5:]]
    shard = write_tar(str(tmp_path / "s.tar"), samples)
    batches = [out for out in run_in_bundle(_direct_fn(dali_batch_size=4), [task_of([shard])])
               if isinstance(out, ImageBatch)]
    counts = [batch._stage_perf[0].counts for batch in batches]
    assert [batch.num_items for batch in batches] == [4, 3, 2]
    assert [c["samples_read"] for c in counts] == [4, 4, 2]
    assert [c.get("samples_failed", 0) for c in counts] == [0, 1, 0]  # the decode failure, in its batch
    assert [c["images_decoded"] for c in counts] == [4, 3, 2]
    assert [c.get("shards_read", 0) for c in counts] == [0, 0, 1]
    assert [len(batch.read_failures) for batch in batches] == [0, 1, 0]


def test_a_task_made_by_hand_without_a_partition_is_refused(make_dataset):
    (shard,) = make_dataset(shards=1, per_shard=2).shards
    nemo_style = FileGroupTask(task_id="t0", dataset_name="d", data=[shard])
    with pytest.raises(ValueError, match=r"without a partition .*FilePartitioningStage"):
        list(run_in_bundle(_direct_fn(), [nemo_style]))
