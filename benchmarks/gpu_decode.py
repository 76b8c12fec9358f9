"""Decode on the GPU vs the CPU, side by side in one run, on a machine with an NVIDIA GPU:

  decode-only  DaliImageDecoder over the benchmark's JPEG bytes ('mixed', then 'cpu'), same threads;
  curate       the CLI end to end, --num-gpus-per-worker 0.25 (GPU) and 0 (CPU).

    python3 benchmarks/gpu_decode.py [--shards 4] [--threads 8] [--rounds 2] [--json out.json]

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


def curate(source: str, out: str, *, gpus: str, threads: int, batch: int) -> tuple[float, dict]:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "beam_curator", "curate", source, "--output", out, "--overwrite",
                    "--no-progress", "--no-reader-verbose", "--num-threads", str(threads),
                    "--dali-batch-size", str(batch), "--num-gpus-per-worker", gpus], check=True,
                   capture_output=True)
    seconds = time.perf_counter() - started
    with open(os.path.join(out, "_stats.json")) as handle:
        return seconds, json.load(handle)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    from beam_curator.formats.decoding import cuda_device_count

    if cuda_device_count() == 0:
        sys.exit("gpu_decode: no CUDA device is visible to DALI on this machine")
    source = bench.make_dataset(args.shards, 250)
    images, megapixels, blobs = bench.dataset_figures(source)
    out = os.path.join(bench.DATA, "gpu-out")
    times: dict[str, list[float]] = {"decode gpu": [], "decode cpu": [], "curate gpu": [], "curate cpu": []}
    for _ in range(args.rounds):  # interleaved
        times["decode gpu"].append(decode_only(blobs, gpu=True, threads=args.threads, batch=args.batch))
        times["decode cpu"].append(decode_only(blobs, gpu=False, threads=args.threads, batch=args.batch))
        for gpus, label in (("0.25", "curate gpu"), ("0", "curate cpu")):
            seconds, stats = curate(source, out, gpus=gpus, threads=args.threads, batch=args.batch)
            if not stats["reconciles"] or stats["images_written"] != images:
                raise RuntimeError(f"{label}: counts do not reconcile: {stats}")
            times[label].append(seconds)
    rows = {name: {"median_s": statistics.median(values), "images_per_s": images / statistics.median(values),
                   "mp_per_s": megapixels / statistics.median(values)} for name, values in times.items()}
    print(f"{images} images, {megapixels:.0f} MP, {args.threads} threads, batch {args.batch}, "
          f"{args.rounds} rounds (medians)")
    for name, row in rows.items():
        print(f"  {name:12s} {row['images_per_s']:8.0f} img/s  {row['mp_per_s']:7.0f} MP/s  {row['median_s']:.2f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"images": images, "megapixels": megapixels, "threads": args.threads, "batch": args.batch,
                       "rounds": args.rounds, "times": times, "rows": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
