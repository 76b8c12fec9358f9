"""The benchmark itself cannot rot: a small run (200 images, one round) in CI, counts reconciled."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository


def test_small_benchmark_runs_and_reconciles(tmp_path):
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--small", "--results", str(tmp_path),
         "--name", "ci"],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "ci.json").read_text())
    assert result["dataset"]["images"] == 200
    stats = result["reconciliation"]
    assert stats["reconciles"] and stats["samples_read"] == stats["images_written"] == 200
    for name in "abcd":
        assert result["contenders"][name]["images_per_s"] > 0
    assert set(result["ratios"]) == {"c/a", "c/b", "d/b"}
    assert "| (c) beam_curator CLI, bytes passed through |" in done.stdout


def test_null_model_benchmark_runs_and_explains_its_ratio(tmp_path):
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--models", "--null-model", "--shards", "1",
         "--images-per-shard", "40", "--rounds", "1", "--batch", "20", "--results", str(tmp_path), "--name", "ci"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "ci-null-model.json").read_text())
    assert result["images"] == 40 and result["pass_through_job_images_per_s"] > 0
    assert result["ratio"] == result["null_model_job_images_per_s"] / result["pass_through_job_images_per_s"]
    dali = result["dali_alone_cpu_ms_per_image"]
    assert 0 < dali["decode"] < dali["model_input"]  # the model input is work on top of decoding
    pass_cpu = result["cpu_ms_per_image"]["pass_through"]
    # approx: the same sum in another order differs in the last bits (it failed CI once that way)
    assert result["cpu_bound_ceiling"] == pytest.approx(pass_cpu / (pass_cpu + dali["model_input"] - dali["decode"]),
                                                        rel=1e-9)
    assert "the reader's DALI pipeline alone: decoding" in done.stdout


def test_gpu_check_says_clearly_when_there_is_no_gpu(tmp_path):
    from beam_curator.formats.decoding import cuda_device_count

    if cuda_device_count():
        pytest.skip("a GPU is visible: `python3 dev.py gpu-check` runs for real here")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py"), "--results",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "gpu-check: no CUDA device is visible to DALI on this machine" in done.stderr
    assert os.listdir(tmp_path) == []  # nothing ran, nothing was written
    via_dev = subprocess.run(["python3", os.path.join(ROOT, "dev.py"), "gpu-check", "--results", str(tmp_path)],
                             capture_output=True, text=True, timeout=600)
    assert via_dev.returncode == 2 and "no CUDA device" in via_dev.stderr
