"""Decode on the GPU vs the CPU, side by side in one run, on a machine with an NVIDIA GPU:

  decode-only  DaliImageDecoder over the benchmark's JPEG bytes ('mixed', then 'cpu'), same threads;
  curate       the CLI end to end, pass-through: on the GPU (--num-gpus-per-worker 1) in one process,
               with the decoder in process and isolated, and with N worker processes
               (--direct_num_workers N --direct_running_mode multi_processing); on the CPU in one process.
  start-up     the same commands over one image: what a run costs before its first image.

    python3 benchmarks/gpu_decode.py [--shards 4] [--threads 8] [--rounds 2] [--workers 2,8] [--json out.json]

It uses benchmarks/run.py's dataset (natural photos, 0.3-0.8 MP, JPEG q90) and exits with an error
where no CUDA device is visible. docs/PERFORMANCE.md records its runs with the device named.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench


def decode_only(blobs: list[bytes], *, gpu: bool, threads: int, batch: int) -> float:
    from beam_curator.formats.decoding import DaliImageDecoder

    decoder = DaliImageDecoder(batch_size=batch, num_threads=threads, use_gpu=gpu)
    return bench.decode_seconds(decoder, blobs, batch)


def curate(source: str, out: str, *, gpus: str, threads: int, batch: int, extra: tuple[str, ...] = ()
           ) -> tuple[float, dict]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "beam_curator", "curate", source, "--output", out, "--overwrite",
                           "--no-progress", "--no-reader-verbose", "--no-report", "--num-threads", str(threads),
                           "--dali-batch-size", str(batch), "--num-gpus-per-worker", gpus, *extra],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"curate {' '.join(extra)} failed: {done.stderr[-3000:]}")
    seconds = time.perf_counter() - started
    with open(os.path.join(out, "_stats.json")) as handle:
        return seconds, json.load(handle)


def variants(workers: list[int]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """label -> (--num-gpus-per-worker, extra options) of each curate contender."""
    found = {"curate gpu": ("1", ("--isolate-decoder", "never")),
             "curate gpu isolated": ("1", ("--isolate-decoder", "always")),
             "curate cpu": ("0", ())}
    for count in workers:
        found[f"curate gpu x{count}"] = ("1", ("--isolate-decoder", "never", f"--direct_num_workers={count}",
                                               "--direct_running_mode=multi_processing"))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", default="2,8", help="worker processes of the multi-process contenders")
    parser.add_argument("--json")
    args = parser.parse_args()
    from beam_curator.formats.decoding import cuda_device_count

    if cuda_device_count() == 0:
        sys.exit("gpu_decode: no CUDA device is visible to DALI on this machine")
    source = bench.make_dataset(args.shards, 250)
    one = bench.make_dataset(1, 1)
    images, megapixels, blobs = bench.dataset_figures(source)
    out = os.path.join(bench.DATA, "gpu-out")
    contenders = variants([int(count) for count in args.workers.split(",") if count])
    times: dict[str, list[float]] = {"decode gpu": [], "decode cpu": [], **{label: [] for label in contenders}}
    jobs: dict[str, list[float]] = {label: [] for label in contenders}
    start_up: dict[str, list[float]] = {label: [] for label in contenders}
    for _ in range(args.rounds):  # interleaved
        times["decode gpu"].append(decode_only(blobs, gpu=True, threads=args.threads, batch=args.batch))
        times["decode cpu"].append(decode_only(blobs, gpu=False, threads=args.threads, batch=args.batch))
        for label, (gpus, extra) in contenders.items():
            seconds, stats = curate(source, out, gpus=gpus, threads=args.threads, batch=args.batch, extra=extra)
            if not stats["reconciles"] or stats["images_written"] != images:
                raise RuntimeError(f"{label}: counts do not reconcile: {stats}")
            if stats["stages"].get("image_reader", {}).get("pixels_to_host", 0):
                raise RuntimeError(f"{label}: a pass-through run copied pixels to the host: {stats['stages']}")
            times[label].append(seconds)
            jobs[label].append(stats["seconds"])
            start_up[label].append(curate(one, out + "-one", gpus=gpus, threads=args.threads, batch=args.batch,
                                          extra=extra)[0])
    rows = {name: {"median_s": statistics.median(values), "images_per_s": images / statistics.median(values),
                   "mp_per_s": megapixels / statistics.median(values)} for name, values in times.items()}
    for label in contenders:
        rows[label]["job_images_per_s"] = images / statistics.median(jobs[label])
        rows[label]["start_up_s"] = statistics.median(start_up[label])
    ceiling = rows["decode gpu"]["images_per_s"]
    print(f"{images} images, {megapixels:.0f} MP, {args.threads} threads, batch {args.batch}, "
          f"{args.rounds} rounds (medians); ratios on the job clock against GPU decode-only")
    for name, row in rows.items():
        job = (f"  job {row['job_images_per_s']:8.0f} img/s ({row['job_images_per_s'] / ceiling:.2f} of decode gpu)"
               f"  start-up {row['start_up_s']:.1f} s") if "job_images_per_s" in row else ""
        print(f"  {name:22s} {row['images_per_s']:8.0f} img/s  {row['mp_per_s']:7.0f} MP/s  {row['median_s']:.2f} s{job}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"images": images, "megapixels": megapixels, "threads": args.threads, "batch": args.batch,
                       "rounds": args.rounds, "times": times, "jobs": jobs, "start_up": start_up, "rows": rows},
                      handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
