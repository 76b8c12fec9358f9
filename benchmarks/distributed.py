"""`beam-curator curate` pass-through on the engines beside the local runner, on the same data:

    .venv/bin/python benchmarks/distributed.py [--shards 8] [--rounds 2]
    .venv/bin/python benchmarks/distributed.py --semantic 100000   # semantic dedup instead, with memory
    .venv/bin/python benchmarks/distributed.py --one-partition 6   # one partition of 6 x 8x250 on Flink

(FnApiRunner, one process), Flink's embedded mini-cluster (parallelism 2), a standalone Flink cluster
of a JobManager and two TaskManagers (parallelism 2, PROCESS workers) and Spark local[2], interleaved,
over the benchmark's photos (benchmarks/data/{shards}x250). Reports each run's job clock (from
`_stats.json`: the pipeline's run, not the job server's start-up) and the whole command's wall time,
medians over the rounds, and writes benchmarks/results/<date>-engines.json. With --semantic N: `dedup
--method semantic` of N synthetic 512-d embeddings (benchmarks/dedup.py's, 1% planted copies) on the
FnApiRunner and on the standalone cluster, each run's wall time and the peak RSS of every process it
involves (sampled from /proc every 0.2 s: the command, the job server, the JobManager, the TaskManagers,
the SDK workers), to benchmarks/results/<date>-engines-semantic-N-sample-S.json (`--sample-size S`,
the k-means sample; `--runners flink` skips the FnApiRunner; `--parallelism` is Flink's). With
--one-partition K: `curate` on the standalone cluster of K copies of the 8x250 shards (linked, K x 206 MB)
as one partition, which one task reads and one writer task packs, to
benchmarks/results/<date>-engines-one-partition-K.json. Needs `python3 dev.py flink fetch`
(Java 17 and Maven).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]  # engines/ (the repository's), run.py

from run import make_dataset, save_dated  # noqa: E402

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


class PeakRss:
    """Peak RSS (MB) of every process carrying cluster.marker_env(tag), sampled on a thread."""

    def __init__(self, tag: str):
        self.tag = tag
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            for pid in cluster.marked_processes(self.tag):
                try:
                    with open(f"/proc/{pid}/status") as handle:
                        rss = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:")) / 1024
                    with open(f"/proc/{pid}/cmdline", "rb") as handle:
                        words = handle.read().split(b"\0")
                except (OSError, StopIteration):
                    continue
                name = _role(words) + f" ({pid})"
                self.peaks[name] = max(self.peaks.get(name, 0.0), rss)


def _role(words: list[bytes]) -> str:
    line = b" ".join(words).decode(errors="replace")
    for needle, role in (("TaskManagerRunner", "TaskManager"), ("StandaloneSessionClusterEntrypoint", "JobManager"),
                         ("job-server", "job server"), ("sdk_worker_main", "SDK worker"), ("boot.py", "SDK worker"),
                         ("beam_curator", "beam-curator command")):
        if needle in line:
            return role
    return line[:60]


def semantic(n: int, sample_size: int = 50000, runners: tuple[str, ...] = ("fnapi", "flink"),
             parallelism: int = 2) -> None:
    from dedup import synthetic

    source = synthetic(os.path.join(HERE, "data"), "embedding", n)
    artifacts = cluster.fetch(os.path.join(ROOT, ".cache", "engines"))
    scratch = tempfile.mkdtemp(prefix="beam_curator-engines-bench-")
    options = ["--method", "semantic", "--n-clusters", str(max(1, n // 1000)), "--sample-size", str(sample_size)]
    results = {}
    with cluster.FlinkCluster(os.path.join(scratch, "cluster"), artifacts.flink_home, taskmanagers=2) as flink:
        contenders = {
            "fnapi": ("FnApiRunner, one process", ["--runner=FnApiRunner"], cluster.marker_env("fnapi")),
            "flink": (f"Flink standalone, 2 TaskManagers, parallelism {parallelism}",
                      flink.beam_options(artifacts.flink_job_server_jar, sys.executable, parallelism=parallelism),
                      flink.env),
        }
        for name, runner, env in (contenders[key] for key in runners):
            out = os.path.join(scratch, "removal")
            shutil.rmtree(out, ignore_errors=True)
            with PeakRss(env[cluster.MARKER]) as peaks:
                started = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "beam_curator", "dedup", source, "--output", out,
                                       *options, *runner], cwd=ROOT, capture_output=True, text=True,
                                      env={**os.environ, **env})
                wall = time.perf_counter() - started
            if done.returncode:
                raise SystemExit(f"dedup failed ({name}):\n{done.stderr[-3000:]}")
            with open(os.path.join(out, "_dedup.json")) as handle:
                removed = json.load(handle)["removed"]
            results[name] = {"wall_s": wall, "removed": removed, "peak_rss_mb": peaks.peaks}
            largest = max(peaks.peaks.items(), key=lambda item: item[1])
            print(f"{name}: {wall:.1f} s, removed {removed}; largest process {largest[0]} {largest[1]:.0f} MB; "
                  f"all: {', '.join(f'{k} {v:.0f}' for k, v in sorted(peaks.peaks.items()))}", flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    save_dated(f"engines-semantic-{n}-sample-{sample_size}",
               {"n": n, "options": options, "cpus": os.cpu_count(), "runners": results})


def one_partition(copies: int) -> None:
    shards = make_dataset(8, 250)
    artifacts = cluster.fetch(os.path.join(ROOT, ".cache", "engines"))
    scratch = tempfile.mkdtemp(prefix="beam_curator-engines-bench-")
    source = os.path.join(scratch, "input")
    os.makedirs(source)
    names = sorted(name for name in os.listdir(shards) if name.endswith(".tar"))
    for copy in range(copies):
        for name in names:
            os.symlink(os.path.join(shards, name), os.path.join(source, f"copy{copy}-{name}"))
    megabytes = copies * sum(os.path.getsize(os.path.join(shards, name)) for name in names) / 1e6
    with cluster.FlinkCluster(os.path.join(scratch, "cluster"), artifacts.flink_home, taskmanagers=2) as flink:
        options = ["--files-per-partition", str(copies * len(names)),
                   *flink.beam_options(artifacts.flink_job_server_jar, sys.executable)]
        wall, job, images = _curate(source, os.path.join(scratch, "out"), options, flink.env)
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"one partition of {megabytes:.0f} MB ({images} images) on Flink standalone: wall {wall:.1f} s, job {job:.1f} s")
    save_dated(f"engines-one-partition-{copies}", {"megabytes": megabytes, "images": images, "wall_s": wall, "job_s": job})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--semantic", type=int, default=0, help="semantic dedup of this many embeddings instead")
    parser.add_argument("--sample-size", type=int, default=50000, help="semantic dedup: the k-means sample")
    parser.add_argument("--runners", default="fnapi,flink", type=lambda text: tuple(text.split(",")),
                        help="semantic dedup: on which, comma-separated (fnapi, flink)")
    parser.add_argument("--parallelism", type=int, default=2, help="semantic dedup: Flink's (2 TaskManagers of 2 slots)")
    parser.add_argument("--one-partition", type=int, default=0, metavar="K",
                        help="curate K copies of the 8x250 shards as one partition on Flink instead")
    args = parser.parse_args()
    if args.one_partition:
        return one_partition(args.one_partition)
    if args.semantic:
        return semantic(args.semantic, args.sample_size, args.runners, args.parallelism)
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
    print()
    save_dated("engines", {"images": images, "rounds": args.rounds, "cpus": os.cpu_count(), "runners": table})


if __name__ == "__main__":
    main()
