"""Gathering a PCollection into one element on Flink: a ToList combine, a GroupByKey on one key, GatherAll.

The writer's commit gathers one PartitionOutput per input partition (about 1.2 KB pickled with local
paths, more with object-store paths), and semantic dedup gathers its k-means sample. A ToList combine
moves each bundle's elements as one accumulator, and on Flink a task's whole input is one bundle, so the
accumulator is one record of every element the task gathered: Flink's sorter refuses a record that
outgrows its buffers. A GroupByKey on one key does the same on Flink, whose batch translation
concatenates each key's values per task before the shuffle. GatherAll
(beam_curator.transforms.gather) reads the elements as a side input, one record each. This probe runs,
on a local standalone cluster (engines/cluster.py), a pipeline that makes N MB of elements of
--element-bytes each in one task and gathers them each way, and reports which finished. Needs
`python3 dev.py flink fetch`.

    .venv/bin/python benchmarks/flink_gather.py --mb 200,400
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]  # engines/ (the repository's), run.py

from run import save_dated  # noqa: E402

from engines import cluster  # noqa: E402

PIPELINE = """
import sys
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from beam_curator.transforms.gather import GatherAll

how, megabytes, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def elements(_):
    for i in range(megabytes * (1 << 20) // size):
        yield i.to_bytes(8, "big") + b"x" * (size - 8)

def check(gathered):
    assert len(gathered) == megabytes * (1 << 20) // size, len(gathered)
    print("gathered", len(gathered))

class GroupOnOneKey(beam.PTransform):
    def expand(self, pcoll):
        return (pcoll | beam.Map(lambda element: (0, element)) | beam.GroupByKey()
                | beam.Map(lambda group: list(group[1])))

gather = {"tolist": beam.combiners.ToList, "groupbykey": GroupOnOneKey, "gatherall": GatherAll}[how]()
with beam.Pipeline(options=PipelineOptions(sys.argv[4:])) as p:
    p | beam.Create([0]) | beam.FlatMap(elements) | gather | beam.Map(check)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", default="200,400", help="comma-separated sizes of what the one task gathers, in MB")
    parser.add_argument("--element-bytes", type=int, default=1200, help="bytes per element (a PartitionOutput's)")
    parser.add_argument("--gather", default="tolist,groupbykey,gatherall",
                        help="comma-separated: tolist, groupbykey (on one key), gatherall")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds after which a run counts as hung")
    args = parser.parse_args()
    artifacts = cluster.fetch(os.path.join(ROOT, ".cache", "engines"))
    results = []
    with tempfile.TemporaryDirectory(prefix="beam_curator-flink-gather-") as scratch, \
            cluster.FlinkCluster(os.path.join(scratch, "cluster"), artifacts.flink_home, taskmanagers=1) as flink:
        for megabytes in (int(text) for text in args.mb.split(",")):
            for how in args.gather.split(","):
                options = flink.beam_options(artifacts.flink_job_server_jar, sys.executable, parallelism=1)
                started = time.perf_counter()
                outcome = flink.run_probe([sys.executable, "-c", PIPELINE, how, str(megabytes), str(args.element_bytes),
                                           *options], ROOT, args.timeout)
                seconds = time.perf_counter() - started
                results.append({"mb": megabytes, "element_bytes": args.element_bytes, "gather": how,
                                "outcome": outcome, "seconds": round(seconds, 1)})
                print(f"{megabytes} MB by {how}: {outcome} ({seconds:.1f} s)", flush=True)
    save_dated("flink-gather", {"timeout_s": args.timeout, "runs": results})


if __name__ == "__main__":
    main()
