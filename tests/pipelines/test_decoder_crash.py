"""No malformed image may crash the decoding process: the seeded crash-fuzz campaign, its regression
cases, and a whole `curate` run over a shard full of them (each in a child process, so that a crash
fails the test instead of killing pytest)."""

import glob
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from beam_curator.formats.image_structure import dali_problem
from tests.support.decoder_fuzz import (
    ALL_KINDS,
    SEED0_GPU_CRASHES,
    SEED0_RAW_CRASHES,
    base_images,
    make_case,
    run_campaign,
    write_malformed_shard,
)


def test_seeded_campaign_never_kills_the_decoder():
    report = run_campaign(seed=0, cases=300, batch_size=100, threads=4)
    assert report.crashes == []
    assert report.wrong_neighbours == []  # the 99 good images around each bad one decode exactly
    assert sum(sum(counts.values()) for counts in report.outcomes.values()) == 300
    assert len(report.outcomes) == len(ALL_KINDS)  # every kind of malformation was tried


@pytest.mark.gpu
def test_seeded_campaign_never_kills_the_gpu_decoder():
    report = run_campaign(seed=0, cases=300, device="gpu", batch_size=100, threads=4)
    assert report.crashes == [] and report.wrong_neighbours == []
    assert sum(sum(counts.values()) for counts in report.outcomes.values()) == 300


def test_cases_that_crashed_unchecked_dali_never_reach_it():
    bases = base_images()
    for index in SEED0_RAW_CRASHES + SEED0_GPU_CRASHES:
        kind, data = make_case(0, index, bases)
        assert dali_problem(data) is not None, f"case {index} ({kind}) would be handed to DALI"


def _curate(source, out, *options):
    return subprocess.run([sys.executable, "-m", "beam_curator", "curate", str(source), "--output", str(out),
                           "--no-progress", *options], capture_output=True, text=True, timeout=600)


def test_curate_over_a_shard_of_malformed_images(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    malformed = write_malformed_shard(str(source / "web.tar"), good=300)
    for name, options in (("default", ()),
                          ("two-processes", ("--direct_num_workers=2", "--direct_running_mode=multi_processing")),
                          ("isolated", ("--isolate-decoder", "always"))):
        out = tmp_path / name
        done = _curate(source, out, *options)
        assert done.returncode == 0, done.stderr[-3000:]
        stats = json.loads((out / "_stats.json").read_text())
        assert stats["samples_read"] == 312 and stats["reconciles"], stats
        written = {row["key"] for row in pq.read_table(glob.glob(f"{out}/*.parquet")).to_pylist()}
        failed = {row["key"] for row in pq.read_table(str(out / "_failures")).to_pylist()}
        assert {f"good{i:05d}" for i in range(300)} <= written
        assert written | failed == {f"good{i:05d}" for i in range(300)} | set(malformed)
        assert not written & failed and failed <= set(malformed)
