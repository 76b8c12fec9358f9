"""`beam-curator curate` pass-through on the engines beside the local runner, on the same data:

    .venv/bin/python benchmarks/distributed.py [--shards 8] [--rounds 2]

(FnApiRunner, one process), Flink's embedded mini-cluster (parallelism 2), a standalone Flink cluster
of a JobManager and two TaskManagers (parallelism 2, PROCESS workers) and Spark local[2], interleaved,
over the benchmark's photos (benchmarks/data/{shards}x250). Reports each run's job clock (from
`_stats.json`: the pipeline's run, not the job server's start-up) and the whole command's wall time,
medians over the rounds, and writes benchmarks/results/<date>-engines.json. Needs `python3 dev.py flink
fetch` (Java 17 and Maven).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]  # engines/ (the repository's), run.py

from run import make_dataset  # noqa: E402

from engines import cluster  # noqa: E402

PASS_THROUGH = ["--no-progress", "--no-report", "--no-reader-verbose", "--num-threads", "2", "--dali-batch-size", "100",
                "--num-gpus-per-worker", "0"]


def _curate(source: str, out: str, options: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, job seconds, images written) of one run."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "beam_curator", "curate", source, "--output", out, *PASS_THROUGH,
                           *options], cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env})
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"curate failed ({options[:2]}):\n{done.stderr[-3000:]}")
    with open(os.path.join(out, "_stats.json")) as handle:
        stats = json.load(handle)
    return wall, stats["seconds"], stats["images_written"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    source = make_dataset(args.shards, 250)
    artifacts = cluster.fetch(os.path.join(ROOT, ".cache", "engines"))
    scratch = tempfile.mkdtemp(prefix="beam_curator-engines-bench-")
    runs: dict[str, list[tuple[float, float, int]]] = {}
    with cluster.FlinkCluster(os.path.join(scratch, "cluster"), artifacts.flink_home, taskmanagers=2) as flink:
        contenders = {
            "FnApiRunner, one process": (["--runner=FnApiRunner"], {}),
            "Flink [local], parallelism 2": (cluster.local_flink_options(artifacts.flink_job_server_jar), {}),
            "Flink standalone, 2 TaskManagers, parallelism 2": (
                flink.beam_options(artifacts.flink_job_server_jar, sys.executable), flink.env),
            "Spark local[2]": (cluster.local_spark_options(artifacts.spark_job_server_jar), {}),
        }
        for round_ in range(args.rounds):
            for name, (options, env) in contenders.items():
                result = _curate(source, os.path.join(scratch, "out"), options, env)
                runs.setdefault(name, []).append(result)
                print(f"round {round_ + 1}/{args.rounds} {name}: wall {result[0]:.1f} s, job {result[1]:.1f} s, "
                      f"{result[2] / result[1]:.0f} img/s (job)", flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    images = runs["FnApiRunner, one process"][0][2]
    print(f"\n{images} images ({args.shards} shards of 250), {args.rounds} rounds, medians, {os.cpu_count()} CPUs\n")
    print("| runner | images/s, job clock | wall s (whole command) |\n|---|---|---|")
    table = {}
    for name, values in runs.items():
        job = statistics.median(value[1] for value in values)
        wall = statistics.median(value[0] for value in values)
        table[name] = {"images_per_s_job": images / job, "wall_s": wall, "runs": values}
        print(f"| {name} | {images / job:.0f} | {wall:.1f} |")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", f"{datetime.date.today().isoformat()}-engines.json")
    with open(path, "w") as handle:
        json.dump({"images": images, "rounds": args.rounds, "cpus": os.cpu_count(), "runners": table}, handle, indent=1)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
