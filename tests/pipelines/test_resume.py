"""Resuming a killed curate job: the partitions it committed are skipped, the rest redone, and the
output is byte for byte an uninterrupted run's. The jobs run as subprocesses killed with SIGKILL."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from beam_curator.output.manifest import read_manifests
from beam_curator.transforms import ImageWriterStage
from tests.support.helpers import Sample, build_dataset, write_tar
from tests.support.output import digests, temporary_files

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
SHARDS = 20
# A stage that waits SLOW_STAGE_SECONDS per image, so that a test can kill the job midway.
SLOW_STAGE = '''
import os
import time
from beam_curator.transforms import FilterImages

def slow(obj):
    time.sleep(float(os.environ.get("SLOW_STAGE_SECONDS", "0")))
    return True

stage = FilterImages(slow, name="slow")
'''


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """(folder, options): 20 shards (one with a broken JPEG) in folder/input, and curate's options: a
    size filter that drops some images, the slow stage, 4 images per tar."""
    folder = tmp_path_factory.mktemp("resume")
    build_dataset(folder / "input", SHARDS - 1, 7)
    write_tar(str(folder / "input" / "shard-99999.tar"),
              [Sample("broken", {"jpg": b"\xff\xd8\xff\xe0" + b"\x17" * 200, "txt": b"a broken one"})])
    (folder / "slow_stage.py").write_text(SLOW_STAGE)
    options = ["--images-per-tar", "4", "--min-size", "56", "--stage", "slow_stage:stage", "--no-progress",
               "--no-report", "--dali-batch-size", "4", "--num-threads", "1"]
    return folder, options


def _command(folder, out, options, *extra, kill_at=None, slow=0.0, source=None):
    prefix = ["-m", "tests.support.killing_curate", *kill_at] if kill_at else ["-m", "beam_curator", "curate"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, str(folder)]), "SLOW_STAGE_SECONDS": str(slow)}
    return [sys.executable, *prefix, source or str(folder / "input"), "--output", out, *options, *extra], env


def _curate(folder, out, options, *extra, kill_at=None, expect=0, source=None):
    command, env = _command(folder, out, options, *extra, kill_at=kill_at, source=source)
    done = subprocess.run(command, env=env, cwd=str(folder), capture_output=True, text=True, timeout=300)
    assert done.returncode == expect, done.stderr[-3000:]
    return done


def _stats(out):
    with open(os.path.join(out, "_stats.json")) as handle:
        return json.load(handle)


def _files(out):
    """Every file of the output but what a run writes about itself (_stats.json, _SUCCESS, the report)."""
    return digests(out, run_files=False, report=False)


def _no_temporary_files(out):
    left = temporary_files(out)
    assert not left, left


@pytest.fixture(scope="module")
def reference(job):
    """An uninterrupted run's output."""
    folder, options = job
    out = str(folder / "reference")
    _curate(folder, out, options)
    return out


def _committed(out):
    return len(glob.glob(os.path.join(out, "_partitions", "*.json")))


def _kill_midway(folder, out, options, *, at_least):
    """Start curate (slowed down), SIGKILL it once at_least partitions are committed; how many are."""
    command, env = _command(folder, out, options, slow=0.05)
    process = subprocess.Popen(command, env=env, cwd=str(folder), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _committed(out) < at_least and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    committed = _committed(out)
    assert at_least <= committed < SHARDS, f"the job was not killed midway: {committed} partitions committed"
    return committed


def test_killed_run_resumes_to_the_bytes_of_an_uninterrupted_run(tmp_path, job, reference):
    folder, options = job
    out = str(tmp_path / "out")
    committed = _kill_midway(folder, out, options, at_least=5)
    assert not os.path.exists(os.path.join(out, "_stats.json"))

    done = _curate(folder, out, options, "--resume")
    stats = _stats(out)
    # It read only the partitions that were not committed, and counts the whole dataset.
    assert stats["resumed"]["partitions"] == committed
    assert stats["shards_read"] - stats["resumed"]["shards"] == SHARDS - committed
    assert stats["shards"] == stats["shards_read"] == SHARDS
    reference_stats = _stats(reference)
    for figure in ("samples_read", "images_written", "images_failed", "images_filtered", "tars_written",
                   "filtered_by_stage", "failed_by_stage"):
        assert stats[figure] == reference_stats[figure], figure
    assert stats["reconciles"] and f"resumed: {committed} partition(s)" in done.stdout
    assert _files(out) == _files(reference)
    _no_temporary_files(out)


@pytest.mark.parametrize("point, nth", [("before-commit", 1), ("before-manifest", 6)])
def test_kill_points_of_a_commit(tmp_path, job, reference, point, nth):
    folder, options = job
    out = str(tmp_path / "out")
    _curate(folder, out, options, kill_at=[point, str(nth)], expect=-signal.SIGKILL)
    assert _committed(out) == nth - 1
    if point == "before-manifest":  # the 6th partition's tars have their final names, but no manifest
        names = {entry["name"] for manifest in read_manifests(out) for entry in manifest.files}
        assert [path for path in glob.glob(os.path.join(out, "images-*.tar")) if os.path.basename(path) not in names]
        # What a kill in the middle of other writes leaves: half-written files of atomic writes, and a
        # partition's tar beyond what its redo writes (a run of the same names killed earlier).
        digest = os.path.basename(sorted(glob.glob(os.path.join(out, "images-*.tar")))[0]).split("-")[1]
        for leftover in ("_partitions/.0123456789abcdef.json.tmp-0a1b2c3d4e5f", "_failures/.failures-x.parquet.tmp-1",
                         f"images-{digest}-000007.tar", f"images-{digest}-000007.parquet"):
            os.makedirs(os.path.dirname(os.path.join(out, leftover)), exist_ok=True)
            with open(os.path.join(out, leftover), "wb") as handle:
                handle.write(b"partial")
    # A plain run refuses the output, naming --resume (once something is committed).
    if nth > 1:
        refused = _curate(folder, out, options, expect=2)
        assert "--resume" in refused.stderr
    _curate(folder, out, options, "--resume")
    assert _stats(out)["resumed"]["partitions"] == nth - 1
    assert _files(out) == _files(reference)
    _no_temporary_files(out)


def test_a_resumed_run_killed_again_resumes_again(tmp_path, job, reference):
    folder, options = job
    out = str(tmp_path / "out")
    _curate(folder, out, options, kill_at=["before-manifest", "4"], expect=-signal.SIGKILL)
    _curate(folder, out, options, "--resume", kill_at=["before-commit", "5"], expect=-signal.SIGKILL)
    assert _committed(out) == 3 + 4
    _curate(folder, out, options, "--resume")
    assert _stats(out)["resumed"]["partitions"] == 7
    assert _files(out) == _files(reference)
    _no_temporary_files(out)


def test_resume_of_a_finished_run_reads_nothing(tmp_path, job, reference):
    folder, options = job
    out = str(tmp_path / "finished")
    shutil.copytree(reference, out)
    # The reference run named its input by absolute path; this one by a relative path: the same partitions.
    done = _curate(folder, out, options, "--resume", "--report", source="input/")
    stats = _stats(out)
    assert stats["resumed"]["partitions"] == SHARDS and stats["shards_read"] - stats["resumed"]["shards"] == 0
    assert stats["reconciles"] and _files(out) == _files(reference)
    _no_temporary_files(out)  # the commit ran with no partition to commit, and removed its temporary directory
    line = f"resumed: {SHARDS} partition(s) committed earlier were skipped"
    assert line in done.stdout and line in Path(os.path.join(out, "_report", "index.html")).read_text()


def test_resume_refuses_other_options_other_files_and_random_names(tmp_path, job, reference):
    folder, options = job
    stranger = tmp_path / "stranger"
    shutil.copytree(reference, stranger)
    (stranger / "images-0123456789abcdef-000000.tar").write_bytes(b"a shard of some other run")
    refused = _curate(folder, str(stranger), options, "--resume", expect=2)
    assert "no partition of this run would write" in refused.stderr and "images-0123456789abcdef" in refused.stderr
    assert (stranger / "images-0123456789abcdef-000000.tar").exists()  # nothing was removed
    other = _curate(folder, reference, [*options, "--min-size", "60"], "--resume", expect=2)
    assert "other options" in other.stderr and "min_size: 56 then, 60 now" in other.stderr
    random = _curate(folder, reference, options, "--resume", "--no-deterministic-name", expect=2)
    assert "--resume needs --deterministic-name" in random.stderr
    with pytest.raises(ValueError, match="choose one"):
        ImageWriterStage(reference, resume=True, overwrite=True)


def test_manifests_list_every_file_with_its_size_and_sha256(reference):
    manifests = read_manifests(reference)
    assert len(manifests) == SHARDS
    listed = {}
    for manifest in manifests:
        assert len(manifest.source_files) == 1
        for entry in manifest.files:
            listed[entry["name"]] = entry
    on_disk = _files(reference)
    assert set(listed) == {name for name in on_disk if not name.startswith("_partitions/") and name != "_SUCCESS"}
    for name, entry in listed.items():
        assert entry["sha256"] == on_disk[name] and entry["size"] == os.path.getsize(os.path.join(reference, name))
    # The counts add up to the run's figures.
    stats = _stats(reference)
    assert sum(manifest.counts["images_written"] for manifest in manifests) == stats["images_written"]
    assert sum(sum(manifest.counts["filtered_by_stage"].values()) for manifest in manifests) == stats["images_filtered"]
    assert sum(manifest.counts["failed_by_scope"].get("sample", 0) for manifest in manifests) == stats["images_failed"]
    assert stats["images_failed"] == 1 and stats["images_filtered"] > 0


def test_a_killed_overwrite_with_other_options_resumes(tmp_path, job, reference):
    folder, options = job
    out = str(tmp_path / "out")
    shutil.copytree(reference, out)
    other = [*options, "--images-per-tar", "5"]
    _curate(folder, out, other, "--overwrite", kill_at=["before-manifest", "3"], expect=-signal.SIGKILL)
    _curate(folder, out, other, "--resume")
    fresh = str(tmp_path / "fresh")
    _curate(folder, fresh, other)
    assert _files(out) == _files(fresh) and _stats(out)["resumed"]["partitions"] == 2
    _no_temporary_files(out)


def test_killed_multiprocess_run_resumes_to_the_same_bytes(tmp_path, job, reference):
    """Beam's worker processes die with the killed CLI; the resumed run (two worker processes again)
    writes what the single-process reference wrote."""
    folder, options = job
    out = str(tmp_path / "out")
    workers = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    committed = _kill_midway(folder, out, [*options, *workers], at_least=3)
    _curate(folder, out, [*options, *workers], "--resume")
    assert _stats(out)["resumed"]["partitions"] >= committed  # a worker may finish one more as the CLI dies
    assert _files(out) == _files(reference)
    _no_temporary_files(out)
