"""beam_curator's benchmark: one command that measures, side by side, in one run,

  (a) decode ceiling: DALI decode-only over the same JPEG bytes, same threads and batch size;
  (b) what a user would write: webdataset + Pillow decode + re-encode + TarWriter + pandas parquet;
  (c) beam_curator's CLI end to end, original bytes passed through;
  (d) beam_curator's CLI with re-encoding forced;

interleaved and repeated, and reports images/s, MP/s, the ratios c/a, c/b, d/b and peak RSS. It writes
benchmarks/results/<name>.json and, with --update-docs, the table in docs/PERFORMANCE.md.

    python3 dev.py bench                 # the default run (2,000 images, 3 rounds)
    python3 dev.py bench --small         # a few hundred images, one round (what CI runs)
    python3 dev.py bench --rss-check     # also peak RSS of (c) at 2,000 and 20,000 images
    python3 dev.py bench --shards 80 --doc-block bench-large --update-docs   # 20,000 images
    python3 dev.py bench --models        # the model path: curate with CLIP + heads vs bare onnxruntime
    python3 dev.py bench --models --null-model   # the model path's own cost: a free model vs pass-through
                                         # (benchmarks/models.py; 2 x 250 images, 3 rounds)
    python3 dev.py bench --dedup         # dedup of 1,000,000 hashes and embeddings, --phash, prune
                                         # (benchmarks/dedup.py)

(a) times the decode loop only; (b), (c) and (d) are whole processes, timed from start to exit, as a
user would time them: the ratios use those times. For (c) and (d) the table also shows the job alone
(the CLI's own clock, from pipeline.run() to the end: no Python start-up or imports), which is not a
target, to show where the time goes.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "benchmarks", "data")
RESULTS = os.path.join(ROOT, "benchmarks", "results")
DOC = os.path.join(ROOT, "docs", "PERFORMANCE.md")
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "motorcycle_left.png",
          "motorcycle_right.png", "retina.jpg", "rocket.jpg"]
TARGETS = {"c/a": 0.8, "c/b": 3.0, "d/b": 1.6}


# --- the dataset ---------------------------------------------------------------------------------

def save_dated(kind: str, result: dict) -> str:
    """Write result to benchmarks/results/{today}-{kind}.json (what the engine benchmarks keep); its path."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{datetime.date.today().isoformat()}-{kind}.json")
    with open(path, "w") as handle:
        json.dump(result, handle, indent=1)
    print(f"wrote {path}")
    return path


def make_dataset(shards: int, per_shard: int, seed: int = 0) -> str:
    """N shards x M natural photographs (random crops of scikit-image's photos, resized to 0.3-0.8 MP,
    JPEG q90) with .txt and .json companions. Cached by size."""
    import numpy as np
    import skimage
    from PIL import Image

    directory = os.path.join(DATA, f"{shards}x{per_shard}")
    done = os.path.join(directory, ".complete")
    if os.path.exists(done):
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    photo_dir = os.path.join(os.path.dirname(skimage.__file__), "data")
    photos = [Image.open(os.path.join(photo_dir, name)).convert("RGB") for name in PHOTOS]
    rng = np.random.default_rng(seed)
    for shard in range(shards):
        with tarfile.open(os.path.join(directory, f"bench-{shard:06d}.tar"), "w", format=tarfile.USTAR_FORMAT) as tar:
            for index in range(per_shard):
                source = photos[int(rng.integers(len(photos)))]
                width, height = source.size
                crop_w, crop_h = int(width * rng.uniform(0.5, 1.0)), int(height * rng.uniform(0.5, 1.0))
                left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
                megapixels = rng.uniform(0.3, 0.8)
                scale = (megapixels * 1e6 / (crop_w * crop_h)) ** 0.5
                image = source.crop((left, top, left + crop_w, top + crop_h)).resize(
                    (max(16, int(crop_w * scale)), max(16, int(crop_h * scale))), Image.BICUBIC)
                if rng.random() < 0.5:
                    image = image.transpose(Image.FLIP_LEFT_RIGHT)
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=90)
                key = f"{shard:04d}{index:06d}"
                caption = f"a photograph, {image.size[0]}x{image.size[1]}, from {PHOTOS[0]}"
                meta = json.dumps({"width": image.size[0], "height": image.size[1], "shard": shard})
                for extension, payload in (("jpg", buffer.getvalue()), ("txt", caption.encode()), ("json", meta.encode())):
                    info = tarfile.TarInfo(f"{key}.{extension}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    open(done, "w").close()
    return directory


def dataset_figures(directory: str) -> tuple[int, float, list[bytes]]:
    """(images, megapixels, the JPEG bytes) of a dataset."""
    from PIL import Image

    images, pixels, blobs = 0, 0, []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(directory, name)) as tar:
                for member in tar:
                    if member.name.endswith(".jpg"):
                        data = tar.extractfile(member).read()
                        width, height = Image.open(io.BytesIO(data)).size
                        images, pixels = images + 1, pixels + width * height
                        blobs.append(data)
    return images, pixels / 1e6, blobs


# --- the contenders ------------------------------------------------------------------------------

def decode_seconds(decoder, blobs: list[bytes], batch: int) -> float:
    """Seconds `decoder` takes to decode `blobs` batch by batch, after one warm-up batch."""
    decoder.decode(blobs[:batch])
    started = time.perf_counter()
    for start in range(0, len(blobs), batch):
        results = decoder.decode(blobs[start : start + batch])
        if any(isinstance(result, Exception) for result in results):
            raise RuntimeError("a benchmark image failed to decode")
    return time.perf_counter() - started


def run_a(blobs: list[bytes], threads: int, batch: int) -> dict:
    """DALI decode-only over the same bytes, in this process; the decode loop is timed."""
    from beam_curator.formats.decoding import DaliImageDecoder

    decoder = DaliImageDecoder(batch_size=batch, num_threads=threads, use_gpu=False)
    return {"seconds": decode_seconds(decoder, blobs, batch), "peak_rss_mb": None, "images_out": len(blobs)}


BASELINE = r'''
import io, os, sys, glob
import numpy as np, pandas as pd, webdataset as wds
from PIL import Image
source, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
count = 0
for shard in sorted(glob.glob(os.path.join(source, "*.tar"))):
    name = os.path.basename(shard)
    rows = []
    with wds.TarWriter(os.path.join(out, name)) as sink:
        for sample in wds.WebDataset(shard, shardshuffle=False):
            pixels = np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB"))
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
            sink.write({"__key__": sample["__key__"], "jpg": buffer.getvalue(), "txt": sample["txt"], "json": sample["json"]})
            rows.append({"key": sample["__key__"], "caption": sample["txt"].decode(),
                         "width": pixels.shape[1], "height": pixels.shape[0]})
            count += 1
    pd.DataFrame(rows).to_parquet(os.path.join(out, name[:-4] + ".parquet"))
print(count)
'''


def _measure_in_child(command: list[str]) -> dict:
    """Run command from a fresh helper process: its wall seconds, peak RSS and CPU seconds (RUSAGE_CHILDREN
    of the helper: the largest RSS among the command's processes, the CPU of all of them, nothing else's)."""
    helper = (
        "import json, resource, subprocess, sys, time\n"
        "started = time.perf_counter()\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "seconds = time.perf_counter() - started\n"
        "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps({'seconds': seconds, 'code': done.returncode, 'stdout': done.stdout,\n"
        "  'stderr': done.stderr[-3000:], 'peak_rss_mb': usage.ru_maxrss / 1024,\n"
        "  'cpu_seconds': usage.ru_utime + usage.ru_stime}))\n"
    )
    done = subprocess.run([sys.executable, "-c", helper, *command], capture_output=True, text=True, check=True)
    figures = json.loads(done.stdout)
    if figures["code"] != 0:
        raise RuntimeError(f"{command[:5]} failed ({figures['code']}):\n{figures['stderr']}")
    return figures


def run_b(source: str, out: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    figures = _measure_in_child([sys.executable, "-c", BASELINE, source, out])
    return {"seconds": figures["seconds"], "peak_rss_mb": figures["peak_rss_mb"], "images_out": int(figures["stdout"])}


def run_cli(source: str, out: str, threads: int, batch: int, reencode: bool, gpu: bool = False,
            extra: tuple[str, ...] = ()) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "beam_curator", "curate", source, "--output", out, "--no-progress",
               "--no-reader-verbose", "--num-threads", str(threads), "--dali-batch-size", str(batch),
               "--num-gpus-per-worker", "1" if gpu else "0", *extra] + (["--force-reencode"] if reencode else [])
    figures = _measure_in_child(command)
    with open(os.path.join(out, "_stats.json")) as handle:
        stats = json.load(handle)
    if not stats["reconciles"]:
        raise RuntimeError(f"counts do not reconcile: {stats}")
    return {"seconds": figures["seconds"], "peak_rss_mb": figures["peak_rss_mb"], "images_out": stats["images_written"],
            "job_seconds": stats["seconds"], "cpu_seconds": figures["cpu_seconds"], "stats": stats}


# --- the run -------------------------------------------------------------------------------------

def _summary(samples: list[dict], images: int, megapixels: float) -> dict:
    seconds = [s["seconds"] for s in samples]
    rss = [s["peak_rss_mb"] for s in samples if s["peak_rss_mb"] is not None]
    median = statistics.median(seconds)
    summary = {
        "seconds": {"median": median, "min": min(seconds), "max": max(seconds)},
        "images_per_s": images / median,
        "images_per_s_min_max": [images / max(seconds), images / min(seconds)],
        "mp_per_s": megapixels / median,
        "peak_rss_mb": max(rss) if rss else None,
    }
    if all("job_seconds" in s for s in samples):
        # The CLI's own clock: from pipeline.run() to the end, so without Python start-up and imports.
        summary["job_images_per_s"] = images / statistics.median(s["job_seconds"] for s in samples)
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=None, help="default 8 (2 with --models)")
    parser.add_argument("--images-per-shard", type=int, default=None, help="default 250")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--small", action="store_true", help="4 x 50 images, 1 round: the CI check")
    parser.add_argument("--rss-check", action="store_true", help="peak RSS of (c) at 2,000 vs 20,000 images")
    parser.add_argument("--update-docs", action="store_true", help="write the table in docs/PERFORMANCE.md")
    parser.add_argument("--doc-block", default="bench",
                        help="which table of docs/PERFORMANCE.md --update-docs replaces (the one between "
                             "<!-- NAME:begin --> and <!-- NAME:end -->; default: bench)")
    parser.add_argument("--name", default=None, help="results file name (default: from the date)")
    parser.add_argument("--results", default=RESULTS, help="directory of the results files")
    parser.add_argument("--models", action="store_true", help="the model path instead (benchmarks/models.py); "
                        "--shards defaults to 2 there (500 images)")
    parser.add_argument("--model-batch", type=int, default=32, help="images per model call (with --models)")
    parser.add_argument("--model-size", choices=["vit-b-32", "vit-l-14"], default="vit-b-32",
                        help="the random CLIP's architecture (with --models)")
    parser.add_argument("--fp16", action="store_true", help="export the CLIP towers in float16 (with --models)")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="where the models run (with --models)")
    parser.add_argument("--null-model", action="store_true",
                        help="with --models: an image tower that costs ~nothing, against pass-through curate")
    parser.add_argument("--dedup", action="store_true", help="the dedup benchmark instead (benchmarks/dedup.py)")
    parser.add_argument("--dedup-n", type=int, default=1_000_000, help="hashes and embeddings (with --dedup)")
    parser.add_argument("--dedup-clusters", type=int, default=1000, help="semantic k-means clusters (with --dedup)")
    parser.add_argument("--dedup-semantic-n", type=int, default=None,
                        help="embeddings for semantic dedup (with --dedup; default --dedup-n)")
    args = parser.parse_args(argv)
    default_size = ((1, 20) if args.small else (2, 250)) if args.models else ((4, 50) if args.small else (8, 250))
    args.shards = args.shards or default_size[0]
    args.images_per_shard = args.images_per_shard or default_size[1]
    if args.small:
        args.rounds = 1
    if args.models or args.dedup:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import dedup
        import models

        return (models if args.models else dedup).main(args, sys.modules[__name__])

    source = make_dataset(args.shards, args.images_per_shard)
    images, megapixels, blobs = dataset_figures(source)
    print(f"dataset: {images} images, {megapixels:.1f} MP, {sum(map(len, blobs)) / 1e6:.1f} MB of JPEG in {source}")
    scratch = os.path.join(DATA, "out")
    samples = {"a": [], "b": [], "c": [], "d": []}
    for round_index in range(args.rounds):  # interleaved: every contender once per round
        samples["a"].append(run_a(blobs, args.threads, args.batch))
        samples["b"].append(run_b(source, os.path.join(scratch, "b")))
        samples["c"].append(run_cli(source, os.path.join(scratch, "c"), args.threads, args.batch, reencode=False))
        samples["d"].append(run_cli(source, os.path.join(scratch, "d"), args.threads, args.batch, reencode=True))
        print(f"round {round_index + 1}/{args.rounds}: " + "  ".join(
            f"{name} {images / s[-1]['seconds']:.0f} img/s" for name, s in samples.items()), flush=True)
    for name, runs in samples.items():
        wrong = [run["images_out"] for run in runs if run["images_out"] != images]
        if wrong:
            raise RuntimeError(f"({name}) wrote {wrong} images, not {images}")
    summary = {name: _summary(runs, images, megapixels) for name, runs in samples.items()}
    ratios = {
        "c/a": summary["c"]["images_per_s"] / summary["a"]["images_per_s"],
        "c/b": summary["c"]["images_per_s"] / summary["b"]["images_per_s"],
        "d/b": summary["d"]["images_per_s"] / summary["b"]["images_per_s"],
    }
    # Not a target: c's job time alone (no process start-up) against the decode ceiling.
    job_ratio = summary["c"]["job_images_per_s"] / summary["a"]["images_per_s"]
    result = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "dataset": {"shards": args.shards, "images": images, "megapixels": megapixels},
        "options": {"threads": args.threads, "batch": args.batch, "rounds": args.rounds},
        "contenders": summary,
        "ratios": ratios,
        "targets_met": {name: ratios[name] >= target for name, target in TARGETS.items()},
        "c_job/a": job_ratio,
        "reconciliation": samples["c"][-1]["stats"],
    }
    if args.rss_check:
        result["rss_check"] = rss_check(args.threads, args.batch)
    print(table(result))
    os.makedirs(args.results, exist_ok=True)
    # The date and the size: a 2,000- and a 20,000-image run of one day keep a file each.
    name = args.name or ("small" if args.small else f"{datetime.date.today().isoformat()}-cpu-{images}")
    with open(os.path.join(args.results, f"{name}.json"), "w") as handle:
        json.dump(result, handle, indent=2)
    if args.update_docs:
        update_docs(result, args.doc_block)
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


def rss_check(threads: int, batch: int) -> dict:
    """Peak RSS of (c) at 2,000 and at 20,000 images: streaming means the second is not much larger."""
    figures = {}
    for shards, per_shard in ((8, 250), (80, 250)):
        source = make_dataset(shards, per_shard)
        run = run_cli(source, os.path.join(DATA, "out", "rss"), threads, batch, reencode=False)
        figures[str(shards * per_shard)] = run["peak_rss_mb"]
        print(f"rss check: {shards * per_shard} images, peak RSS {run['peak_rss_mb']:.0f} MB", flush=True)
    figures["ratio"] = figures["20000"] / figures["2000"]
    return figures


def table(result: dict) -> str:
    labels = {"a": "(a) DALI decode only (ceiling)", "b": "(b) webdataset + PIL + TarWriter + pandas",
              "c": "(c) beam_curator CLI, bytes passed through", "d": "(d) beam_curator CLI, re-encoding forced"}
    lines = ["| contender | images/s (median) | min - max | MP/s | peak RSS MB | job alone, images/s |",
             "|---|---|---|---|---|---|"]
    for name, label in labels.items():
        row = result["contenders"][name]
        low, high = row["images_per_s_min_max"]
        rss = f"{row['peak_rss_mb']:.0f}" if row["peak_rss_mb"] else "-"
        job = f"{row['job_images_per_s']:.0f}" if "job_images_per_s" in row else "-"
        lines.append(f"| {label} | {row['images_per_s']:.0f} | {low:.0f} - {high:.0f} | {row['mp_per_s']:.0f} | {rss} "
                     f"| {job} |")
    lines.append("")
    lines.append("| ratio | measured | target | met |")
    lines.append("|---|---|---|---|")
    for name, target in TARGETS.items():
        lines.append(f"| {name} | {result['ratios'][name]:.3f} | >= {target} | {'yes' if result['targets_met'][name] else 'no'} |")
    if "c_job/a" in result:
        lines.append(f"| c/a, job alone (no start-up; not a target) | {result['c_job/a']:.3f} | - | - |")
    if "rss_check" in result:
        check = result["rss_check"]
        lines.append(f"| RSS 20000 / 2000 | {check['ratio']:.3f} ({check['20000']:.0f} / {check['2000']:.0f} MB) "
                     f"| <= 1.2, < 1500 MB | {'yes' if check['ratio'] <= 1.2 and check['20000'] < 1500 else 'no'} |")
    return "\n".join(lines)


def update_docs(result: dict, block: str = "bench") -> None:
    dataset = result["dataset"]
    replace_doc_block(block, f"Run {result['when']} on {result['machine']['cpus']} CPUs ({result['machine']['platform']}): "
                             f"{dataset['images']} images, {dataset['megapixels']:.0f} MP, {result['options']['threads']} "
                             f"DALI threads, batch {result['options']['batch']}, {result['options']['rounds']} interleaved "
                             f"rounds.\n\n{table(result)}")


def replace_doc_block(block: str, content: str) -> None:
    """Replace what lies between <!-- block:begin --> and <!-- block:end --> in docs/PERFORMANCE.md."""
    begin, end = f"<!-- {block}:begin -->", f"<!-- {block}:end -->"
    with open(DOC) as handle:
        text = handle.read()
    if begin not in text or end not in text:
        raise SystemExit(f"{DOC} has no {begin} ... {end} block to replace")
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    with open(DOC, "w") as handle:
        handle.write(f"{head}{begin}\n{content}\n{end}{tail}")


if __name__ == "__main__":
    sys.exit(main())
