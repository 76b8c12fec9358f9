"""The stage platform: batch origin, the writer's two modes, the stage kit, counts as data, and one
test per documented guard (each fails when its guard is removed)."""

import fnmatch
import glob
import json
import os
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_curator import storage
from beam_curator.jobs.curate import curate
from beam_curator.output import commit
from beam_curator.output.packing import BatchOrderError, PackingOptions, PartitionPacker, prepare_image
from beam_curator.tasks import BatchOrigin, ImageBatch, ImageObject
from beam_curator.testing import TWO_WORKERS, StageContractError, check_stage_contract
from beam_curator.transforms import FilePartitioningStage, ImageReaderStage, ImageWriterStage
from beam_curator.transforms.io import image_writer
from beam_curator.transforms.io.image_writer import fusion_break
from tests.support import stage_examples
from tests.support.helpers import encode, make_image, run_in_bundle
from tests.support.output import digests

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository


def _digests(directory, pattern="*"):
    return {name: digest for name, digest in digests(directory).items() if fnmatch.fnmatch(name, pattern)}


def _sample(directory, shards=4, per_shard=15):
    from beam_curator.sample import make_sample_dataset

    make_sample_dataset(directory, shards=shards, images_per_shard=per_shard)
    return directory


# --- acceptance: a stage, then the same stage behind a Reshuffle, on two worker processes -----------

def _cli(*args, cwd):
    command = [sys.executable, "-m", "beam_curator", "curate", *args, "--images-per-tar", "4", "--dali-batch-size",
               "6", *TWO_WORKERS]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})


def test_a_stage_behind_a_reshuffle_gives_the_same_output(tmp_path):
    source = _sample(str(tmp_path / "in"))
    a = _cli(source, "--output", str(tmp_path / "A"), "--stage", "tests.support.stage_examples:drop_some", cwd=tmp_path)
    b = _cli(source, "--output", str(tmp_path / "B"), "--stage", "tests.support.stage_examples:drop_some",
             "--stage", "tests.support.stage_examples:shuffle", cwd=tmp_path)
    assert a.returncode == 0 and b.returncode == 0, a.stderr[-3000:] + b.stderr[-3000:]
    assert "drop_odd: 28 filtered, 0 failed" in b.stdout
    tars_and_parquet = _digests(tmp_path / "A", "images-*")
    assert len(tars_and_parquet) == 4 * 2 * 2  # 4 partitions x 2 tars, tar + parquet
    assert tars_and_parquet == _digests(tmp_path / "B", "images-*")
    assert _digests(tmp_path / "A", "_filtered/*") == _digests(tmp_path / "B", "_filtered/*")
    filtered = pq.read_table(glob.glob(str(tmp_path / "B" / "_filtered" / "*.parquet"))).to_pylist()
    assert len(filtered) == 28 and {row["stage"] for row in filtered} == {"drop_odd"}
    assert all(int(row["key"][-1]) % 2 == 1 and row["reason"] == "_even_index returned False" for row in filtered)
    stats = json.loads((tmp_path / "B" / "_stats.json").read_text())
    assert stats["reconciles"] and (stats["samples_read"], stats["images_written"], stats["images_filtered"]) == (60, 32, 28)
    assert stats["stages"]["drop_odd"] | {"seconds": 0} == {"in": 60, "kept": 32, "dropped": 28, "failed": 0,
                                                          "batches": 12, "seconds": 0}
    assert stats["stages"]["image_reader"]["samples_read"] == 60 and stats["stages"]["image_writer"]["written"] == 32
    assert stats["options"]["stage"] == ["tests.support.stage_examples:drop_some", "tests.support.stage_examples:shuffle"]
    assert stats["started"] <= stats["finished"] and stats["version"]


# --- the writer's modes -------------------------------------------------------------------------

def _reader_output(pipeline, directory):
    return pipeline | FilePartitioningStage(directory) | ImageReaderStage(dali_batch_size=4, num_threads=1)


def test_auto_mode_sees_what_breaks_fusion():
    pipeline = beam.Pipeline()
    directory = os.path.join(ROOT, "tests")  # any directory with a .py file: nothing is read
    batches = pipeline | FilePartitioningStage(directory, file_extensions=[".py"]) | ImageReaderStage()
    assert fusion_break(batches) is None
    assert fusion_break(batches | "Map" >> beam.Map(lambda b: b) | "Kit" >> stage_examples.KeepBright()) is None
    assert "Reshuffle" in fusion_break(batches | "Shuffle" >> beam.Reshuffle())
    grouped = batches | "Key" >> beam.Map(lambda b: (0, b)) | "Group" >> beam.GroupByKey() | "Values" >> beam.Values()
    assert "GroupByKey" in fusion_break(grouped)
    on_gpu = batches | "Gpu" >> beam.Map(lambda b: b).with_resource_hints(accelerator="type:nvidia-tesla-t4;count:1")
    assert "resource hints" in fusion_break(on_gpu)
    assert "do not come from ImageReaderStage" in fusion_break(pipeline | beam.Create([ImageBatch("t", "d")]))
    for runner in ("FlinkRunner", "SparkRunner"):  # their job graphs run reader and writer as separate tasks
        on_engine = beam.Pipeline(options=PipelineOptions([f"--runner={runner}"]))
        read = on_engine | FilePartitioningStage(directory, file_extensions=[".py"]) | ImageReaderStage()
        assert f"the {runner} runs the reader and the writer as separate tasks" in fusion_break(read)


def test_keyed_mode_writes_what_fused_mode_writes(tmp_path, make_dataset):
    dataset = make_dataset(shards=2, per_shard=11)
    outputs = {}
    for mode in ("fused", "keyed"):
        out = str(tmp_path / mode)
        writer = ImageWriterStage(out, images_per_tar=3, mode=mode)

        def build(pipeline, writer=writer):
            _reader_output(pipeline, dataset.directory) | "Brighten" >> beam.Map(_brighten_first) | writer

        _run(build)
        assert writer.resolved_mode == mode
        outputs[mode] = digests(out)
    # 4 tars and parquets per partition, and its manifest (partition counts included): the same bytes
    assert len(outputs["fused"]) == 2 * 4 * 2 + 2 and outputs["fused"] == outputs["keyed"]


def test_keyed_mode_shuffles_no_image_bytes(tmp_path):
    """Flink gathers a key's values per task as one record, which must fit its sort buffer: the keyed
    writer spills the bytes (beam_curator.output.spill) and shuffles only the rest."""
    import pickle

    from beam_curator.tasks import BatchOrigin, ImageBatch, ImageObject
    from beam_curator.transforms.io.image_writer import _PrepareFn
    from tests.support.images import encode, make_image

    images = [ImageObject(image_id=f"id{index}", key=f"k{index}", image_format="png", companions={"txt": b"a caption"},
                          image_bytes=encode(make_image(index, 256, 256), "PNG")) for index in range(8)]
    batch = ImageBatch(task_id="t", dataset_name="d", data=images, origin=BatchOrigin(0, 0, True, ("/a.tar",)))
    prepare = _PrepareFn(ImageWriterStage(str(tmp_path / "out"), mode="keyed"), str(tmp_path / "temp"))
    ((partition, prepared),) = [item for item in prepare.process(batch) if not isinstance(item, beam.pvalue.TaggedOutput)]
    image_bytes = sum(len(obj.image_bytes) for obj in images)
    assert partition == 0 and image_bytes > 500_000
    assert len(pickle.dumps(prepared)) < 10_000  # what the shuffle moves: ids, captions, sizes
    assert os.path.getsize(prepared.spilled.path) == image_bytes


def _brighten_first(batch):
    """Changes the pixels of each batch's first image: the keyed mode must encode it before the shuffle."""
    objects = list(batch.data)
    if objects:
        import dataclasses

        objects[0] = dataclasses.replace(objects[0], image_data=np.ascontiguousarray(255 - objects[0].image_data))
    return batch.with_images(objects)


def _run(build, options=()):
    from apache_beam.options.pipeline_options import PipelineOptions

    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner", *options]))
    build(pipeline)
    pipeline.run().wait_until_finish()


# --- guards: each test fails when its guard is removed -----------------------------------------------

def _batch(index, last, images=(), partition=0):
    objects = [ImageObject(image_id=f"p/{key}", key=key, image_path=f"src.tar#{key}.jpg", image_format="jpg",
                           image_bytes=encode(make_image(seed, 16, 16), "JPEG")) for seed, key in images]
    return ImageBatch(task_id=f"b{index}", dataset_name="d", data=objects,
                      origin=BatchOrigin(partition=partition, batch_index=index, last=last, source_files=("src.tar",)))


def test_guard_fused_writer_refuses_batches_out_of_order(tmp_path):
    writer = ImageWriterStage(str(tmp_path / "out"), mode="fused")
    fn = image_writer._WriteShardsFn(writer, str(tmp_path / "temp"))
    batches = [_batch(0, False, [(0, "a")]), _batch(2, False, [(2, "c")]), _batch(1, False, [(1, "b")])]
    with pytest.raises(BatchOrderError, match=r"batch 1 of partition 0 arrived after batch 2.*mode='keyed'"):
        list(run_in_bundle(fn, batches))


def test_guard_fused_writer_refuses_a_partition_that_starts_midway(tmp_path):
    writer = ImageWriterStage(str(tmp_path / "out"), mode="fused")
    fn = image_writer._WriteShardsFn(writer, str(tmp_path / "temp"))
    with pytest.raises(BatchOrderError, match=r"batch 2 of partition 0 is the first of it to arrive.*mode='keyed'"):
        list(run_in_bundle(fn, [_batch(2, True, [(1, "b")])]))


def test_guard_a_batch_after_the_partitions_last_is_refused(tmp_path):
    packer = PartitionPacker(0, ["src.tar"], "d", PackingOptions(), str(tmp_path))
    packer.start_batch(0)
    packer.finish()
    with pytest.raises(BatchOrderError, match="after the partition's last batch"):
        packer.start_batch(1)


def test_guard_parquets_are_renamed_after_every_tar(tmp_path, monkeypatch):
    temp = tmp_path / "temp"
    packer = PartitionPacker(0, ["src.tar"], "d", PackingOptions(images_per_tar=1), str(temp))
    shards = [packer.add(prepare_image(obj, PackingOptions())) for obj in _batch(0, True, [(i, f"k{i}") for i in range(3)]).data]
    renamed = []
    real = storage.FileSystems.rename

    def spy(sources, destinations):
        renamed.extend(os.path.basename(path) for path in destinations)
        return real(sources, destinations)

    monkeypatch.setattr(storage.FileSystems, "rename", spy)
    os.makedirs(tmp_path / "out")
    commit.commit_shards(shards, str(tmp_path / "out"))
    assert len(renamed) == 6
    last_tar = max(i for i, name in enumerate(renamed) if name.endswith(".tar"))
    first_parquet = min(i for i, name in enumerate(renamed) if name.endswith(".parquet"))
    assert last_tar < first_parquet, renamed


@pytest.mark.parametrize("mode", ["fused", "keyed"])
def test_guard_a_partition_whose_last_batch_was_dropped_is_still_closed(tmp_path, make_dataset, mode):
    dataset = make_dataset(shards=2, per_shard=10)  # batches of 4, 4, 2: the last (2 images) is dropped
    out = str(tmp_path / "out")

    def build(pipeline):
        (_reader_output(pipeline, dataset.directory) | "DropLast" >> beam.Filter(stage_examples._not_last)
         | ImageWriterStage(out, images_per_tar=3, mode=mode))

    _run(build)
    rows = pq.read_table(sorted(glob.glob(f"{out}/*.parquet"))).to_pylist()
    assert len(rows) == 16 and len(glob.glob(f"{out}/*.tar")) == 2 * 3  # 3 + 3 + 2 per partition
    assert not glob.glob(f"{out}/.beam_curator-temp-*")


def test_guard_an_image_lost_without_a_record_is_a_mismatch(tmp_path):
    source = _sample(str(tmp_path / "in"), shards=2, per_shard=5)
    stats = curate(source, str(tmp_path / "out"), stages=[beam.Map(stage_examples._lose_first)], dali_batch_size=4)
    # 10 read; batches of 4 + 1 per shard lose their first image: 6 written, nothing failed or filtered
    assert (stats.samples_read, stats.images_written, stats.images_failed, stats.images_filtered) == (10, 6, 0, 0)
    assert not stats.reconciles and "MISMATCH" in stats.reconciliation()
    assert json.loads((tmp_path / "out" / "_stats.json").read_text())["reconciles"] is False


def test_guard_a_batch_without_origin_is_refused_with_the_fix(tmp_path, make_dataset):
    dataset = make_dataset(shards=1, per_shard=2)

    def build(pipeline):
        (_reader_output(pipeline, dataset.directory) | beam.Map(stage_examples._rebuild_without_origin)
         | ImageWriterStage(str(tmp_path / "out")))

    with pytest.raises(Exception, match=r"has no origin.*batch\.with_images"):
        _run(build)


def test_guard_a_stage_must_account_for_every_image(tmp_path):
    from beam_curator.transforms.stages.kit import _StageFn

    class Forgetful(stage_examples.KeepBright):
        def process_batch(self, batch):
            outcome = super().process_batch(batch)
            outcome.kept = outcome.kept[1:]
            return outcome

    bright = np.full((8, 8, 3), 250, np.uint8)
    batch = _batch(0, True, [(0, "a"), (1, "b")])
    for obj in batch.data:
        obj.image_data = bright
    fn = _StageFn(Forgetful())
    fn.setup()
    with pytest.raises(StageContractError, match=r"not accounted for: \['p/a'\]"):
        list(fn.process(batch))
    assert len(next(iter(_StageFn(stage_examples.KeepBright()).process(batch))).data) == 2


# --- the stage kit ------------------------------------------------------------------------------

def test_kit_stages_score_drop_and_fail_with_records(tmp_path):
    source = _sample(str(tmp_path / "in"), shards=2, per_shard=10)
    out = tmp_path / "out"
    stats = curate(source, str(out), stages=[stage_examples.score_brightness(), stage_examples.fail_some(),
                                            stage_examples.KeepBright(0.3)], images_per_tar=4, dali_batch_size=4)
    assert stats.reconciles and stats.samples_read == 20
    assert stats.failed_by_stage == {"picky": 2} and stats.images_failed == 2
    assert stats.filtered_by_stage.get("keep_bright", 0) == stats.images_filtered > 0
    rows = [row for path in sorted(glob.glob(f"{out}/*.parquet")) for row in pq.read_table(path).to_pylist()]
    assert len(rows) == stats.images_written and all(row["brightness"] >= 0.3 for row in rows)
    assert pq.read_schema(glob.glob(f"{out}/*.parquet")[0]).field("brightness").type == "double"
    dropped = pq.read_table(glob.glob(f"{out}/_filtered/*.parquet")).to_pylist()
    assert all(row["reason"] == "too dark" and row["score"] < row["threshold"] == 0.3 for row in dropped)
    failures = pq.read_table(glob.glob(f"{out}/_failures/*.parquet")).to_pylist()
    assert {(row["stage"], row["error_class"], row["message"]) for row in failures} == {
        ("picky", "RuntimeError", "cannot judge this one")}


def test_kit_options_are_checked():
    from beam_curator.transforms import FilterImages, ScoreImages

    with pytest.raises(ValueError, match="short identifier"):
        FilterImages(bool, name="two words")
    with pytest.raises(ValueError, match="fixed columns"):
        ScoreImages(float, name="s", column="width")
    with pytest.raises(ValueError, match="function of an ImageObject"):
        FilterImages("not callable", name="f")


def test_contract_helper_passes_a_good_stage_and_names_a_bad_one(tmp_path):
    stats = check_stage_contract(stage_examples.KeepBright(0.3), str(tmp_path / "good"))
    assert stats.images_filtered > 0 and stats.images_written > 0
    with pytest.raises(StageContractError, match="samples not accounted for"):
        check_stage_contract(beam.Map(stage_examples._lose_first), str(tmp_path / "bad"))


def test_stage_option_errors_are_clear(tmp_path):
    from beam_curator.jobs.curate import load_stage

    with pytest.raises(ValueError, match="MODULE:NAME"):
        load_stage("no_colon")
    with pytest.raises(ValueError, match="cannot import"):
        load_stage("no_such_module_here:x")
    with pytest.raises(ValueError, match="has no 'nothing'"):
        load_stage("tests.support.stage_examples:nothing")
    with pytest.raises(ValueError, match="must be an ImageBatch -> ImageBatch PTransform"):
        load_stage("tests.support.stage_examples:_even_index")
    assert load_stage("tests.support.stage_examples:score_brightness").column == "brightness"
    with pytest.raises(ValueError, match="did you mean 'images_per_tar'"):
        curate(str(tmp_path), str(tmp_path / "o"), image_per_tar=3)


@pytest.mark.parametrize("mode", ["fused", "keyed"])
def test_tasks_built_by_hand_are_refused_in_both_writer_modes(tmp_path, make_dataset, mode):
    from beam_curator.tasks import FileGroupTask
    from tests.support.helpers import run_pipeline

    dataset = make_dataset(shards=2, per_shard=3)
    tasks = [FileGroupTask(task_id=f"t{i}", dataset_name="d", data=[path]) for i, path in enumerate(dataset.shards)]
    out = tmp_path / "out"
    with pytest.raises(Exception, match="FilePartitioningStage"):
        run_pipeline(lambda p: p | beam.Create(tasks) | ImageReaderStage(dali_batch_size=4)
                     | ImageWriterStage(str(out), mode=mode))
    assert not glob.glob(f"{out}/images-*")
