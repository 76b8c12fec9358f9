"""How much one Flink task may output: a probe of Beam's portable Flink runner (batch).

On Flink, Beam runs a task's whole input as one bundle, and its runner (Beam 2.70's job server) reads
the bundle's output from the SDK worker only after the bundle has finished: what the task outputs meanwhile
waits in a queue of 100 data messages (the Python SDK sends one per 10 MB). A task that outputs more
cannot finish: the SDK worker blocks sending, the TaskManager waits for the bundle, and every process
is idle. This probe runs, on a local standalone cluster (engines/cluster.py), a pipeline whose single
task outputs N MB (1 MB elements, then a GroupByKey), for each N given, and reports which finished and
which were still running after --timeout seconds. Needs `python3 dev.py flink fetch`.

    .venv/bin/python benchmarks/flink_output_limit.py --mb 900,1100
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

def megabytes(_, n):
    for i in range(n):
        yield i % 4, b"x" * (1 << 20)

with beam.Pipeline(options=PipelineOptions(sys.argv[2:])) as p:
    (p | beam.Create([0]) | beam.FlatMap(megabytes, int(sys.argv[1])) | beam.GroupByKey()
     | beam.Map(lambda group: (group[0], sum(map(len, group[1])))))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", default="900,1100", help="comma-separated output sizes of the one task, in MB")
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds after which a run counts as hung")
    args = parser.parse_args()
    artifacts = cluster.fetch(os.path.join(ROOT, ".cache", "engines"))
    results = []
    with tempfile.TemporaryDirectory(prefix="beam_curator-flink-limit-") as scratch, \
            cluster.FlinkCluster(os.path.join(scratch, "cluster"), artifacts.flink_home, taskmanagers=1) as flink:
        for megabytes in (int(text) for text in args.mb.split(",")):
            options = flink.beam_options(artifacts.flink_job_server_jar, sys.executable, parallelism=1)
            started = time.perf_counter()
            outcome = flink.run_probe([sys.executable, "-c", PIPELINE, str(megabytes), *options], ROOT, args.timeout)
            seconds = time.perf_counter() - started
            results.append({"mb": megabytes, "outcome": outcome, "seconds": round(seconds, 1)})
            print(f"{megabytes} MB from one task: {outcome} ({seconds:.1f} s)", flush=True)
    save_dated("flink-output-limit", {"timeout_s": args.timeout, "runs": results})


if __name__ == "__main__":
    main()
