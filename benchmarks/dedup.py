"""The dedup benchmark (`python3 dev.py bench --dedup`): what finding and removing duplicates costs.

  1. perceptual dedup of N synthetic 64-bit hashes (1% planted near-copies) and semantic dedup of N
     synthetic 512-d unit embeddings (1% planted near-copies at cosine >= 0.999), each a whole
     `beam-curator dedup` process on the FnApiRunner: wall time and the peak RSS of its processes;
  2. `curate --phash` against `curate` on the benchmark's 2,000 photos, interleaved rounds: the
     throughput the perceptual hash costs;
  3. `prune` (removing 1% of the images) against reading the same curated tars with the webdataset
     library, interleaved rounds.

The synthetic inputs are curated-style parquet files (image_id plus the fingerprint column), cached in
benchmarks/data. Writes benchmarks/results/<name>-dedup.json.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import statistics
import sys

import numpy as np

ROWS_PER_FILE = 50_000


def synthetic(data: str, kind: str, n: int, seed: int = 0) -> str:
    """N rows of phash (int64) or embedding (512 float32), 1% of them near-copies of others."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = os.path.join(data, f"dedup-{kind}-{n}")
    if os.path.exists(os.path.join(directory, ".complete")):
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    rng = np.random.default_rng(seed)
    for part, start in enumerate(range(0, n, ROWS_PER_FILE)):
        count = min(ROWS_PER_FILE, n - start)
        copies = count // 100
        ids = [f"img{start + i:09d}" for i in range(count)]
        if kind == "phash":
            values = rng.integers(-(2**63), 2**63 - 1, size=count, dtype=np.int64)
            flips = rng.integers(0, 64, size=(copies, 3))  # each copy: its source with up to 3 bits flipped
            sources = rng.choice(count - copies, copies, replace=False)
            for row, (source, bits) in enumerate(zip(sources, flips)):
                value = int(values[source]) & ((1 << 64) - 1)
                for bit in bits:
                    value ^= 1 << int(bit)
                values[count - copies + row] = value - (1 << 64) if value >= 1 << 63 else value
            column = pa.array(values, type=pa.int64())
        else:
            vectors = rng.normal(size=(count, 512)).astype(np.float32)
            sources = rng.choice(count - copies, copies, replace=False)
            noise = rng.normal(size=(copies, 512)).astype(np.float32)
            vectors[count - copies:] = vectors[sources] / np.linalg.norm(vectors[sources], axis=1, keepdims=True) \
                + 0.02 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 512).cast(pa.list_(pa.float32()))
        name = "phash" if kind == "phash" else "embedding"
        pq.write_table(pa.table({"image_id": ids, name: column}),
                       os.path.join(directory, f"images-{part:016x}-000000.parquet"))
    open(os.path.join(directory, ".complete"), "w").close()
    return directory


def run_dedup(bench, source: str, out: str, method: str, extra: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    figures = bench._measure_in_child([sys.executable, "-m", "beam_curator", "dedup", source, "--output", out,
                                       "--method", method, *extra])
    with open(os.path.join(out, "_dedup.json")) as handle:
        summary = json.load(handle)
    return {"seconds": figures["seconds"], "peak_rss_mb": figures["peak_rss_mb"], "images": summary["images"],
            "removed": summary["removed"], "groups": summary["duplicate_groups"]}


def run_curate(bench, source: str, out: str, extra: list[str]) -> float:
    shutil.rmtree(out, ignore_errors=True)
    return bench._measure_in_child([sys.executable, "-m", "beam_curator", "curate", source, "--output", out,
                                    "--no-progress", "--num-gpus-per-worker", "0", *extra])["seconds"]


WEBDATASET_READ = """
import sys, glob, webdataset as wds
count = 0
for sample in wds.WebDataset(sorted(glob.glob(sys.argv[1] + "/*.tar")), shardshuffle=False):
    count += 1
print(count)
"""


def main(args, bench) -> int:
    data, results = bench.DATA, args.results
    out = os.path.join(data, "out", "dedup")
    result = {"when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "machine": {"cpus": os.cpu_count()}, "n": args.dedup_n}
    hashes = synthetic(data, "phash", args.dedup_n)
    result["perceptual"] = run_dedup(bench, hashes, os.path.join(out, "perceptual"), "perceptual", [])
    print(f"perceptual, {args.dedup_n} hashes: {result['perceptual']}", flush=True)
    semantic_n = args.dedup_semantic_n or args.dedup_n
    embeddings = synthetic(data, "embedding", semantic_n)
    result["semantic"] = run_dedup(bench, embeddings, os.path.join(out, "semantic"), "semantic",
                                   ["--n-clusters", str(args.dedup_clusters), "--sample-size", "50000"])
    result["semantic"].update(n_clusters=args.dedup_clusters, n=semantic_n)
    print(f"semantic, {semantic_n} embeddings: {result['semantic']}", flush=True)

    photos = bench.make_dataset(8, 250)
    curated = os.path.join(out, "curated")
    times = {"curate": [], "curate --phash": [], "prune": [], "webdataset read": []}
    for round_index in range(args.rounds):
        times["curate"].append(run_curate(bench, photos, os.path.join(out, "plain"), []))
        times["curate --phash"].append(run_curate(bench, photos, curated, ["--phash"]))
        if round_index == 0:  # 1% of the images to remove
            import glob

            import pyarrow as pa
            import pyarrow.parquet as pq

            files = sorted(glob.glob(os.path.join(curated, "images-*.parquet")))
            ids = sorted(pq.read_table(files, columns=["image_id"]).column(0).to_pylist())[::100]
            os.makedirs(os.path.join(out, "removal"), exist_ok=True)
            pq.write_table(pa.table({"id": ids}), os.path.join(out, "removal", "duplicates-0.parquet"))
        shutil.rmtree(os.path.join(out, "pruned"), ignore_errors=True)
        times["prune"].append(bench._measure_in_child(
            [sys.executable, "-m", "beam_curator", "prune", curated, "--remove-duplicates", os.path.join(out, "removal"),
             "--output", os.path.join(out, "pruned")])["seconds"])
        times["webdataset read"].append(bench._measure_in_child(
            [sys.executable, "-c", WEBDATASET_READ, curated])["seconds"])
        print(f"round {round_index + 1}/{args.rounds}: " + "  ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
              flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    result["photos"] = {"images": 2000, "rounds": args.rounds, "median_seconds": medians,
                        "phash_throughput_ratio": medians["curate"] / medians["curate --phash"],
                        "prune_vs_webdataset": medians["webdataset read"] / medians["prune"]}
    print(table(result))
    os.makedirs(results, exist_ok=True)
    name = args.name or datetime.date.today().isoformat()
    with open(os.path.join(results, f"{name}-dedup.json"), "w") as handle:
        json.dump(result, handle, indent=2)
    if args.update_docs:
        bench.replace_doc_block("dedup", f"Run {result['when']} on {result['machine']['cpus']} CPUs.\n\n{table(result)}")
    return 0


def table(result: dict) -> str:
    lines = ["| job | input | wall s | peak RSS MB | removed |", "|---|---|---|---|---|"]
    for method in ("perceptual", "semantic"):
        row = result[method]
        what = f"{row.get('n', result['n']):,} {'hashes' if method == 'perceptual' else '512-d embeddings'}"
        if method == "semantic":
            what += f", {row['n_clusters']} clusters"
        lines.append(f"| dedup --method {method} | {what} | {row['seconds']:.1f} | {row['peak_rss_mb']:.0f} | "
                     f"{row['removed']:,} |")
    photos = result["photos"]
    lines += ["", f"| on the 2,000 benchmark photos ({photos['rounds']} interleaved rounds) | median s |", "|---|---|"]
    lines += [f"| {name} | {seconds:.2f} |" for name, seconds in photos["median_seconds"].items()]
    lines += ["", "| ratio | measured | target |", "|---|---|---|",
              f"| curate --phash throughput / curate | {photos['phash_throughput_ratio']:.3f} | >= 0.9 |",
              f"| prune rate / webdataset read rate | {photos['prune_vs_webdataset']:.3f} | >= 0.8 |"]
    return "\n".join(lines)
