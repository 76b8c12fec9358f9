"""What decoding in a child process costs: in-process DaliImageDecoder vs IsolatedDecoder, side by side.

  decode       the decode loop alone over the benchmark's JPEG bytes, same threads and batch size;
  curate       the CLI end to end with --isolate-decoder never / always.

    python3 benchmarks/isolation.py [--shards 8] [--rounds 3] [--threads N] [--gpu] [--json out.json]

Rounds are interleaved; medians are reported. docs/ROBUSTNESS.md records its runs.
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


def curate_seconds(source: str, out: str, *, isolate: str, gpus: str, threads: int, batch: int) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "beam_curator", "curate", source, "--output", out, "--overwrite",
                    "--no-progress", "--no-reader-verbose", "--num-threads", str(threads), "--dali-batch-size",
                    str(batch), "--num-gpus-per-worker", gpus, "--isolate-decoder", isolate],
                   check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--gpu", action="store_true", help="decode with DALI 'mixed'")
    parser.add_argument("--json")
    args = parser.parse_args()
    from beam_curator.formats.decoding import DaliImageDecoder
    from beam_curator.formats.isolated_decoding import IsolatedDecoder

    source = bench.make_dataset(args.shards, 250)
    images, _, blobs = bench.dataset_figures(source)
    out = os.path.join(bench.DATA, "isolation-out")
    options = {"batch_size": args.batch, "num_threads": args.threads, "use_gpu": args.gpu}
    in_process, isolated = DaliImageDecoder(**options), IsolatedDecoder(**options)
    gpus = "1" if args.gpu else "0"
    times: dict[str, list[float]] = {name: [] for name in
                                     ("decode in-process", "decode isolated", "curate never", "curate always")}
    for _ in range(args.rounds):
        times["decode in-process"].append(bench.decode_seconds(in_process, blobs, args.batch))
        times["decode isolated"].append(bench.decode_seconds(isolated, blobs, args.batch))
        for isolate in ("never", "always"):
            times[f"curate {isolate}"].append(curate_seconds(source, out, isolate=isolate, gpus=gpus,
                                                             threads=args.threads, batch=args.batch))
    isolated.close()
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{images} images, {args.threads} threads, batch {args.batch}, {'gpu' if args.gpu else 'cpu'}, "
          f"{args.rounds} rounds (medians)")
    for name, seconds in medians.items():
        print(f"  {name:18s} {images / seconds:8.0f} img/s  {seconds:.2f} s")
    print(f"  isolated / in-process: decode {medians['decode in-process'] / medians['decode isolated']:.3f}, "
          f"curate {medians['curate never'] / medians['curate always']:.3f} (throughput ratio)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"images": images, "threads": args.threads, "batch": args.batch, "gpu": args.gpu,
                       "times": times}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
