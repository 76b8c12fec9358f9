"""The reader under Beam's multi-process local runner: one DALI pipeline per worker process."""

import glob
from collections import defaultdict

import pyarrow.parquet as pq

from beam_curator.transforms import FilePartitioningStage, ImageReaderStage, ImageWriterStage
from beam_curator.transforms.metrics import query_counters
from tests.support.helpers import collect_to, read_collected, run_pipeline

MULTI_PROCESS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def test_two_worker_processes_build_one_pipeline_each(tmp_path, make_dataset):
    dataset = make_dataset(shards=8, per_shard=5)
    out, written_dir = str(tmp_path / "out"), str(tmp_path / "written")

    def build(pipeline):
        batches = (
            pipeline
            | FilePartitioningStage(dataset.directory)
            | ImageReaderStage(dali_batch_size=2, num_threads=1)
        )
        written = (batches | ImageWriterStage(out, remove_image_data=True).with_written_batches()).written
        collect_to(written, written_dir)

    result = run_pipeline(build, MULTI_PROCESS)
    pipelines_by_pid = defaultdict(set)
    for batch in read_collected(written_dir):
        _host, pid, pipeline_id = batch._metadata["dali_pipeline"].split(":")
        pipelines_by_pid[pid].add(pipeline_id)
    counts = query_counters(result)
    assert all(len(ids) == 1 for ids in pipelines_by_pid.values())  # never two pipelines in one process
    assert counts["dali_pipelines_built"] == len(pipelines_by_pid) == 2  # one in each worker process
    assert counts["images_committed"] == 40 and counts["shards_read"] == 8
    rows = pq.read_table(sorted(glob.glob(f"{out}/*.parquet"))).to_pylist()
    assert sorted(row["key"] for row in rows) == sorted(s.key for s in dataset.samples)
