"""The output's core as plain functions: names (layout), the directory's owner, packing, the commit of a
partition and its manifest, resume planning, and the counts. No pipeline."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from beam_curator.errors import PYTHON
from beam_curator.output import directory, layout
from beam_curator.output.commit import PartitionLedger, commit_partition
from beam_curator.output.manifest import read_manifests
from beam_curator.output.packing import PackingOptions, PartitionPacker, PreparedImage, prepare_image
from beam_curator.output.resume import plan_resume
from beam_curator.output.spill import restore, spill
from beam_curator.output.stats import Counts, RunStats, Timings
from beam_curator.records import FailureRecord, FilterRecord
from beam_curator.tasks import FileGroupTask, ImageObject, PartitionInfo, StagePerf
from tests.support.images import encode, make_image
from tests.support.output import digests, temporary_files

# --- layout -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("relative, kind", [
    ("images-0123456789abcdef-000001.tar", "shard"), ("images-0123456789abcdef-000001.parquet", "shard"),
    ("images-0123456789abcdef-000001.idx", "shard"), ("_partitions/0123456789abcdef.json", "manifest"),
    ("_failures/failures-0123456789abcdef.parquet", "record"), ("_filtered/filtered-x.parquet", "record"),
    ("_stats.json", "stats"), ("_SUCCESS", "success"), ("_report/index.html", "report"),
    (".beam_curator-temp-abc/_owner.json", "temporary"), ("_partitions/.x.json.tmp-123456", "temporary"),
    ("notes.txt", None), ("images-x.tar", None), ("sub/images-0123456789abcdef-000001.tar", None),
])
def test_every_output_name_has_a_kind(relative, kind):
    assert layout.kind_of(relative) == kind


def test_names_carry_their_digest():
    assert layout.name_digest(layout.shard_basename("0123456789abcdef", 3) + ".tar") == "0123456789abcdef"
    assert layout.name_digest(layout.manifest_name("feedc0de")) == "feedc0de"
    assert layout.name_digest(layout.record_file_name(layout.FILTERED_DIR, "abc")) == "abc"
    assert layout.records_digest(["/a.tar"]) == layout.records_digest(["/a.tar"]) != layout.records_digest(["/b.tar"])
    options = {"images_per_tar": 5}
    assert layout.partition_hash(["/a"], options, deterministic=True) == layout.partition_hash(["/a"], options,
                                                                                             deterministic=True)


def test_output_roots_are_found_from_a_listing():
    paths = ["raw/a.tar", "raw/curated/_partitions/x.json", "raw/curated/images-x-000000.tar", "other/_stats.json",
             "keep/_SUCCESS", "deep/run/.beam_curator-temp-1/a/b.tar"]
    assert layout.output_root(paths) == {"raw/curated", "other", "deep/run"}


# --- the directory's owner ----------------------------------------------------------------------------

def _touch(path, data=b"x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def test_a_new_run_refuses_an_earlier_output_naming_the_flags(tmp_path):
    out = str(tmp_path / "out")
    directory.check(directory.inspect(out), "new")  # a missing directory is free
    _touch(f"{out}/notes.txt")
    directory.check(directory.inspect(out), "new")  # so is one that holds no output
    _touch(f"{out}/_partitions/abc.json", b"{}")
    with pytest.raises(directory.OutputExistsError, match=r"--resume.*--overwrite"):
        directory.check(directory.inspect(out), "new")
    with pytest.raises(directory.OutputExistsError, match=r"resume=True.*overwrite=True"):
        directory.check(directory.inspect(out), "new", overwrite_flag=PYTHON.setting("overwrite"),
                        resume_flag=PYTHON.setting("resume"))
    _touch(str(tmp_path / "file"))
    with pytest.raises(NotADirectoryError, match="is a file"):
        directory.inspect(str(tmp_path / "file"))


def test_overwrite_removes_what_a_run_wrote_and_nothing_else(tmp_path):
    out = str(tmp_path / "out")
    run = ["images-0123456789abcdef-000000.tar", "images-0123456789abcdef-000000.parquet", "_partitions/a.json",
           "_failures/failures-a.parquet", "_stats.json", "_SUCCESS", "_report/index.html", ".x.tmp-123"]
    for name in [*run, "notes.txt", ".beam_curator-temp-live/_owner.json", ".beam_curator-temp-mine/a.tar"]:
        _touch(f"{out}/{name}")
    removed = directory.prepare(out, "overwrite", own_temp_dir=f"{out}/.beam_curator-temp-mine")
    assert sorted(os.path.relpath(path, out) for path in removed) == sorted(run)
    assert sorted(digests(out)) == sorted(["notes.txt", ".beam_curator-temp-live/_owner.json",
                                           ".beam_curator-temp-mine/a.tar", ".beam_curator-temp-mine/_prepared"])


@pytest.mark.parametrize("mode", ["new", "overwrite"])
def test_a_job_run_again_from_the_start_keeps_what_its_first_attempt_committed(tmp_path, mode):
    # Flink restarts a batch job from its first step when a TaskManager dies: the output then holds
    # partitions this very job committed, which are neither refused ("new") nor removed ("overwrite").
    out = str(tmp_path / "out")
    mine, other = f"{out}/.beam_curator-temp-mine", f"{out}/.beam_curator-temp-other"
    _touch(f"{out}/images-0123456789abcdef-000000.tar")  # an earlier run's
    if mode == "new":
        os.remove(f"{out}/images-0123456789abcdef-000000.tar")
    directory.prepare(out, mode, own_temp_dir=mine)
    committed = ["images-0123456789abcdef-000001.tar", "_partitions/0123456789abcdef.json"]
    for name in committed:
        _touch(f"{out}/{name}")
    assert directory.prepare(out, mode, own_temp_dir=mine) == []  # the second attempt
    assert set(committed) <= set(digests(out))
    if mode == "new":  # another job into the same output is still refused
        with pytest.raises(directory.OutputExistsError):
            directory.prepare(out, mode, own_temp_dir=other)


# --- packing, commit, manifest -------------------------------------------------------------------------

def _images(count: int) -> list[ImageObject]:
    return [ImageObject(image_id=f"id{index}", key=f"k{index}", image_bytes=encode(make_image(index, 24, 16)),
                        image_format="jpg", image_path=f"/src.tar#k{index}.jpg", companions={"txt": b"c"})
            for index in range(count)]


def _pack(tmp_path, count: int, options: PackingOptions) -> tuple[PartitionLedger, str]:
    temp = str(tmp_path / "temp")
    packer = PartitionPacker(0, ["/src.tar"], "d", options, temp)
    ledger = PartitionLedger(packer.digest, ("/src.tar",))
    packer.start_batch(0)
    for obj in _images(count):
        closed = packer.add(prepare_image(obj, options))
        if closed:
            ledger.shards.append(closed)
    last = packer.finish()
    if last:
        ledger.shards.append(last)
    return ledger, temp


def test_every_tar_of_a_partition_is_full_but_the_last(tmp_path):
    ledger, _ = _pack(tmp_path, 7, PackingOptions(images_per_tar=3))
    assert [shard.num_images for shard in ledger.shards] == [3, 3, 1]
    assert [shard.basename[-6:] for shard in ledger.shards] == ["000000", "000001", "000002"]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_spilled_bytes_come_back_as_they_went_and_only_the_rest_is_kept(tmp_path):
    originals = _images(3)
    originals[2].image_bytes = None  # written from its pixels alone
    prepared = [prepare_image(originals[0], PackingOptions()),  # writes its original bytes
                PreparedImage(originals[1], "jpg", encode(make_image(9, 8, 8)), 8, 8),  # re-encoded: both kept
                PreparedImage(originals[2], "jpg", encode(make_image(7, 8, 8)), 8, 8)]
    kept, spilled = spill(prepared, str(tmp_path / "spill"))
    assert all(image.payload == b"" and image.obj.image_bytes is None for image in kept)
    assert [image.obj.image_id for image in kept] == ["id0", "id1", "id2"]
    assert os.path.getsize(spilled.path) == sum(len(image.payload) for image in prepared) + len(originals[1].image_bytes)
    back = restore(kept, spilled)
    assert [_sha256(image.payload) for image in back] == [_sha256(image.payload) for image in prepared]
    assert [image.obj.image_bytes and _sha256(image.obj.image_bytes) for image in back] == \
        [image.obj.image_bytes and _sha256(image.obj.image_bytes) for image in prepared]
    assert back == prepared
    _, other = spill(prepared, str(tmp_path / "spill"))  # a retried bundle never writes over a file handed on
    assert other.path != spilled.path
    with open(spilled.path, "r+b") as handle:
        handle.truncate(10)
    with pytest.raises(ValueError, match="not what was spilled"):
        restore(kept, spilled)


def test_a_partition_commit_writes_records_pairs_then_its_manifest_and_a_repeat_changes_nothing(tmp_path):
    out = str(tmp_path / "out")
    os.makedirs(out)
    ledger, _ = _pack(tmp_path, 5, PackingOptions(images_per_tar=2))
    ledger.records = [FailureRecord("/src.tar", "k9.jpg", "k9", "image_reader", "sample", "ImageDecodeError", "bad"),
                      FilterRecord("id1", "k1", "/src.tar", "k1.jpg", "min_size", "too small", 8.0, 10.0)]
    ledger.perfs = [StagePerf("image_reader", 1.5, 5, {"samples_read": 6, "samples_failed": 1}),
                    StagePerf("min_size", 0.1, 4, {"in": 5, "kept": 4, "dropped": 1})]
    output = commit_partition(ledger, out, deterministic=True, options={"images_per_tar": 2})
    assert output.committed and output.counts.images_written == 5 and output.counts.tars_written == 3
    assert output.counts.failed_by_scope == {"sample": 1} and output.counts.filtered_by_stage == {"min_size": 1}
    assert output.timings["image_reader"] == {"seconds": 1.5, "batches": 1}
    (manifest,) = read_manifests(out)
    assert manifest.counts == output.counts.to_dict()  # no time in it: a repeat writes the same bytes
    listed = {entry["name"] for entry in manifest.files}
    on_disk = set(digests(out)) - {layout.manifest_name(manifest.partition)}
    assert listed == on_disk and not temporary_files(out)
    before = digests(out)
    ledger_again, _ = _pack(tmp_path / "again", 5, PackingOptions(images_per_tar=2))
    ledger_again.records, ledger_again.perfs = ledger.records, ledger.perfs
    commit_partition(ledger_again, out, deterministic=True, options={"images_per_tar": 2})
    assert digests(out) == before


# --- resume ----------------------------------------------------------------------------------------------

def _task(index: int, source: str) -> FileGroupTask:
    return FileGroupTask(task_id=f"p{index}", dataset_name="d", data=[source],
                         partition=PartitionInfo(index=index, source_files=(source,)))


def test_resume_skips_whole_partitions_and_refuses_other_runs(tmp_path):
    out = str(tmp_path / "out")
    os.makedirs(out)
    options = PackingOptions(images_per_tar=2)
    ledger, _ = _pack(tmp_path, 3, options)  # partition 0, from /src.tar
    commit_partition(ledger, out, deterministic=True, options={"images_per_tar": 2})
    tasks = [_task(0, "/src.tar"), _task(1, "/other.tar")]
    plan = plan_resume(directory.inspect(out), tasks, options.naming_options(), {"images_per_tar": 2})
    assert plan.skip == {0} and plan.summary()["images_written"] == 3 and plan.removed == []
    with pytest.raises(ValueError, match=r"other options.*images_per_tar: 2 then, 3 now"):
        plan_resume(directory.inspect(out), tasks, options.naming_options(), {"images_per_tar": 3})
    with pytest.raises(ValueError, match="that this run does not have"):
        plan_resume(directory.inspect(out), [_task(0, "/elsewhere.tar")], options.naming_options(),
                    {"images_per_tar": 2})
    (tar,) = [path for path in digests(out) if path.endswith("000001.tar")]
    with open(os.path.join(out, tar), "ab") as handle:  # a file of another size than its manifest says
        handle.write(b"torn")
    redone = plan_resume(directory.inspect(out), tasks, options.naming_options(), {"images_per_tar": 2})
    assert redone.skip == set() and len(redone.removed) == len(digests(out))


# --- counts ----------------------------------------------------------------------------------------------

def test_counts_add_up_in_one_vocabulary():
    one = Counts(stages={"image_reader": {"samples_read": 3}}, images_written=2, tars_written=1,
                 failed_by_scope={"sample": 1}, failed_by_stage={"image_reader": 1})
    two = Counts.from_dict(json.loads(json.dumps(one.to_dict())))
    total = Counts.total([one, two])
    assert total.stages == {"image_reader": {"samples_read": 6}} and total.images_written == 4
    stats = RunStats.from_counts(total, timings=Timings().add({"image_reader": {"seconds": 2.0, "batches": 2}}),
                                 shards=2, seconds=1.0)
    assert (stats.samples_read, stats.images_written, stats.images_failed) == (6, 4, 2)
    assert stats.reconciles and stats.stages["image_reader"] == {"seconds": 2.0, "batches": 2, "samples_read": 6}
