"""A contract test for curation stages: run any ImageBatch -> ImageBatch stage between the reader and
the writer on two worker processes, and check what every stage must guarantee.

    from beam_curator.testing import check_stage_contract

    def test_my_stage_keeps_the_contract(tmp_path):
        stats = check_stage_contract(MyStage(), str(tmp_path))
        assert stats.images_filtered > 0

The stage (and what it refers to) must be importable by the worker processes: define it in a module,
not in `__main__`.
"""

from __future__ import annotations

import glob
import os
from collections import Counter

import pyarrow.parquet as pq

from beam_curator.errors import JobFailed, StageContractError
from beam_curator.output.layout import FAILURES_DIR, FILTERED_DIR
from beam_curator.output.stats import RunStats

__all__ = ["TWO_WORKERS", "StageContractError", "check_stage_contract"]

TWO_WORKERS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def _rows(pattern: str, *names: str) -> list[dict]:
    rows: list[dict] = []
    for path in sorted(glob.glob(pattern)):
        rows += pq.read_table(path, columns=list(names)).to_pylist()
    return rows


def check_stage_contract(stage, directory: str, *, shards: int = 3, images_per_shard: int = 10,
                         pipeline_args=TWO_WORKERS, **options) -> RunStats:
    """Curate a generated dataset in directory/input with `stage` between reader and writer (small
    batches and tars, so partitions span several of each), and check that:
    - every input sample is accounted for exactly once: written, failed or filtered, each with a record;
    - the run reconciles, every term counted directly, and the stage's own counts add up;
    - no temporary file is left in the output.
    Returns the run's RunStats; raises StageContractError naming what broke."""
    from beam_curator.jobs.curate import curate
    from beam_curator.sample import make_sample_dataset

    source, output = os.path.join(directory, "input"), os.path.join(directory, "output")
    make_sample_dataset(source, shards=shards, images_per_shard=images_per_shard)
    options = {"images_per_tar": 4, "dali_batch_size": 4, **options}
    try:
        stats = curate(source, output, stages=[stage], pipeline_args=list(pipeline_args), **options)
    except JobFailed as error:  # the stage kit found the breach while the job ran
        if StageContractError.__name__ not in str(error):
            raise
        raise StageContractError(str(error).split(f"{StageContractError.__name__}: ", 1)[-1]) from error
    problems = []
    if not stats.reconciles:
        problems.append(stats.reconciliation())
    expected = Counter(f"{shard:04d}{index:05d}" for shard in range(shards) for index in range(images_per_shard))
    written = [row["original_key"] for row in _rows(os.path.join(output, "*.parquet"), "original_key")]
    failed = [row["key"] for row in _rows(os.path.join(output, FAILURES_DIR, "*.parquet"), "key", "scope")
              if row["scope"] == "sample"]
    filtered = [row["key"] for row in _rows(os.path.join(output, FILTERED_DIR, "*.parquet"), "key")]
    found = Counter(written + failed + filtered)
    if found != expected:
        missing, repeated = sorted((expected - found).elements()), sorted((found - expected).elements())
        problems.append(f"samples not accounted for: {missing[:10]}; accounted for more than once: {repeated[:10]}")
    name = getattr(stage, "stage_name", None)
    figures = stats.stages.get(name, {}) if name else {}
    if figures and figures.get("in", 0) != figures.get("kept", 0) + figures.get("dropped", 0) + figures.get("failed", 0):
        problems.append(f"stage {name!r} counts do not add up: {figures}")
    leftovers = glob.glob(os.path.join(output, ".beam_curator-temp-*")) + glob.glob(os.path.join(output, "**", "*.tmp*"),
                                                                                        recursive=True, include_hidden=True)
    if leftovers:
        problems.append(f"temporary files left: {leftovers[:5]}")
    if problems:
        raise StageContractError("; ".join(problems))
    return stats
