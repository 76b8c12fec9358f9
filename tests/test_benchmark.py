"""The benchmark itself cannot rot: a small run (200 images, one round) in CI, counts reconciled."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
