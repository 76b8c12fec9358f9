"""Everything that needs an NVIDIA GPU, in one command (`python3 dev.py gpu-check`), under ten minutes:

  tests  the `gpu`-marked tests (DALI 'mixed' decoding, the model input made and kept on the GPU and
         bound into ONNX Runtime, the reader on a GPU worker, the GPU crash-fuzz campaign);
  fuzz   a larger GPU crash-fuzz campaign through the decoder in process, as a GPU worker runs it by
         default (structural check, no child process);
  pass   pass-through `curate` on the GPU (one process, in process and isolated; 2 and 8 worker
         processes) and on the CPU against DALI 'mixed' decode-only (benchmarks/gpu_decode.py);
  null   the model path with a model that costs ~nothing against pass-through, on the GPU;
  b32, l14  the model path on the GPU: ViT-B/32- and ViT-L/14-sized CLIPs (random weights) exported in
         fp16, bare onnxruntime fed from GPU memory vs `curate --embed --scores aesthetic,nsfw`
         (benchmarks/models.py --device gpu).
The model steps need onnxruntime-gpu in place of onnxruntime (`pip install '.[gpu]'`); without it they
fail and say so.

It prints one table and writes benchmarks/results/gpu-<date>.json. Where no CUDA device is visible it
stops at once with exit status 2 and says so.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def _device_name() -> str | None:
    """The first NVIDIA GPU's name, or None when DALI sees no CUDA device."""
    from beam_curator.formats.decoding import cuda_device_count

    if cuda_device_count() == 0:
        return None
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
        return names[0] if names else "an NVIDIA GPU"
    except (OSError, subprocess.TimeoutExpired):
        return "an NVIDIA GPU (nvidia-smi not found)"


def _step(name: str, command: list[str], timeout: int) -> dict:
    print(f"== {name}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        code, output = "timeout", f"{expired.stdout or ''}{expired.stderr or ''}"
        output = output if isinstance(output, str) else output.decode(errors="replace")
    seconds = time.perf_counter() - started
    tail = "\n".join(output.strip().splitlines()[-25:])
    print(tail, flush=True)
    return {"name": name, "command": command, "exit": code, "seconds": round(seconds, 1), "tail": tail}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=2000, help="cases of each GPU crash-fuzz campaign")
    parser.add_argument("--shards", type=int, default=8, help="benchmark shards of 250 images")
    parser.add_argument("--steps", default="tests,fuzz,pass,null,b32,l14", help="which steps, in this order")
    parser.add_argument("--model-shards", type=int, default=8, help="shards of 250 images of the model steps")
    parser.add_argument("--results", default=RESULTS)
    args = parser.parse_args(argv)
    device = _device_name()
    if device is None:
        print("gpu-check: no CUDA device is visible to DALI on this machine; run it where an NVIDIA GPU "
              "and its driver are (the CPU path is what `python3 dev.py test` checks)", file=sys.stderr)
        return 2
    python = sys.executable
    os.makedirs(args.results, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H%M%S")
    bench_json = os.path.join(args.results, f"gpu-{stamp}-decode.json")
    run = [python, os.path.join("benchmarks", "run.py")]
    every = {
        "tests": lambda: _step("gpu tests", [python, "-m", "pytest", "-q", "-m", "gpu", "tests"], 300),
        "fuzz": lambda: _step("fuzz, in process", [python, "-m", "tests.support.decoder_fuzz", "--device", "gpu",
                                                   "--mode", "checked", "--cases", str(args.cases), "--seed", "0"], 200),
        "pass": lambda: _step("pass-through", [python, os.path.join("benchmarks", "gpu_decode.py"), "--shards",
                                               str(args.shards), "--rounds", "2", "--workers", "2,8", "--json",
                                               bench_json], 300),
        "null": lambda: _step("null model", [*run, "--models", "--null-model", "--device", "gpu", "--shards",
                                             str(args.model_shards), "--threads", "8", "--rounds", "2", "--name",
                                             f"gpu-{stamp}", "--results", args.results], 200),
        "b32": lambda: _step("models b32", [*run, "--models", "--device", "gpu", "--model-size", "vit-b-32", "--fp16",
                                            "--shards", str(args.model_shards), "--model-batch", "128", "--rounds",
                                            "2", "--name", f"gpu-{stamp}-b32", "--results", args.results], 300),
        "l14": lambda: _step("models l14", [*run, "--models", "--device", "gpu", "--model-size", "vit-l-14", "--fp16",
                                            "--shards", str(args.model_shards), "--model-batch", "128", "--rounds",
                                            "2", "--name", f"gpu-{stamp}-l14", "--results", args.results], 400),
    }
    steps = [every[name]() for name in args.steps.split(",") if name]
    print(f"\ngpu-check on {device} ({platform.node()})")
    print("| step | exit | seconds |\n|---|---|---|")
    for step in steps:
        print(f"| {step['name']} | {step['exit']} | {step['seconds']} |")
    def read(name: str):
        path = os.path.join(args.results, name)
        return json.loads(Path(path).read_text()) if os.path.exists(path) else None

    report = {"device": device, "host": platform.node(), "when": stamp, "steps": steps,
              "benchmark": read(os.path.basename(bench_json)), "null_model": read(f"gpu-{stamp}-null-model.json"),
              "models_b32": read(f"gpu-{stamp}-b32-models.json"), "models_l14": read(f"gpu-{stamp}-l14-models.json")}
    path = os.path.join(args.results, f"gpu-{stamp}.json")
    with open(path, "w") as handle:
        json.dump(report, handle, indent=1)
    print(f"wrote {path}")
    return 0 if all(step["exit"] == 0 for step in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
