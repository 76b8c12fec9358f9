"""The model path's benchmark (`python3 dev.py bench --models`): curate with CLIP and both heads
against bare ONNX Runtime on the same model, same machine, same run, interleaved rounds.

  (m) bare onnxruntime: the exported image tower, then the aesthetic and NSFW heads, in calls of
      --model-batch images, on already-preprocessed inputs (CLIP-sized pixel tensors), one session
      each, loaded as the stages load them: the ceiling of the model path;
  (p) `beam-curator curate --model-dir M --embed --scores aesthetic,nsfw` over the benchmark photos
      (0.3-0.8 MP JPEGs): read, DALI decode, CLIP preprocessing, the same three models, write.

`--null-model` measures the model path's own overhead instead: the image tower is replaced by a model
that costs ~nothing (the mean of each channel times a 3 x 768 matrix, normalised: a real ONNX file in a
real MODEL_DIR, loaded by the same code), and (p) is compared with (c), the pass-through `curate` on the
same data in the same rounds. Target: (p) >= 0.8 x (c), both on the job clock. On the CPU it also reports
each command's CPU per image and what the reader's DALI pipeline costs alone, decoding with and without
the model input: where the CPUs are the bound, (c)'s CPU plus the model input's bounds the ratio.

The model is a ViT-B/32-sized CLIP (openai/clip-vit-base-patch32's sizes: real compute; `--model-size
vit-l-14` for NeMo Curator's ViT-L/14) with random weights, and the heads at their real sizes for its
embeddings, exported through `beam-curator export-models` (no weights can be downloaded here), in
float32 or with `--fp16` float16. `--device gpu` runs both on the GPU (onnxruntime-gpu). The ratio p/m uses (p)'s job clock
(pipeline.run() to the end: model loading and DALI set-up included, Python start-up and imports not)
and is reported for the whole process too. Writes benchmarks/results/<name>-models.json.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
TARGET = 0.85
NULL_TARGET = 0.8


def exported_model_dir(data: str, size: str, fp16: bool) -> str:
    """A random CLIP of that size and its heads, exported once (cached in benchmarks/data)."""
    from beam_curator.models import tiny as tiny_models

    base = os.path.join(data, f"models-{size}")
    exported = os.path.join(base, "exported-fp16" if fp16 else "exported")
    if os.path.exists(os.path.join(exported, "beam_curator_models.json")):
        return exported
    sizes = {"vit-b-32": tiny_models.VIT_B_32, "vit-l-14": tiny_models.VIT_L_14}[size]
    clip = os.path.join(base, "hf")
    if not os.path.exists(os.path.join(clip, "config.json")):
        tiny_models.make_clip_checkpoint(clip, sizes=sizes)
    heads = tiny_models.make_heads(os.path.join(base, "heads"), embedding_dim=sizes["projection_dim"])
    subprocess.run([sys.executable, "-m", "beam_curator", "export-models", "--clip", clip, "--aesthetic",
                    heads["aesthetic"], "--nsfw", heads["nsfw"], "--output", exported, *(["--fp16"] if fp16 else [])],
                   check=True)
    return exported


def null_model_dir(data: str) -> str:
    """A MODEL_DIR whose image tower costs ~nothing: a tiny 224 px CLIP and the real heads exported by
    export-models, then the image tower's file replaced by per-channel means x a 3 x 768 matrix,
    L2-normalised (the manifest's sha256 and size updated). Cached in benchmarks/data."""
    import hashlib

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from beam_curator.models import tiny as tiny_models

    exported = os.path.join(data, "models-null", "exported")
    manifest_path = os.path.join(exported, "beam_curator_models.json")
    if os.path.exists(manifest_path):
        return exported
    sizes = {**tiny_models.TINY, "vision": {**tiny_models.TINY["vision"], "image_size": 224, "patch_size": 32},
             "image_size": 224}
    tiny_models.export_tiny_models(exported + ".tmp", sizes=sizes)
    with open(os.path.join(exported + ".tmp", "beam_curator_models.json")) as handle:
        manifest = json.load(handle)
    entry = manifest["files"]["image_encoder"]
    weights = np.random.default_rng(0).normal(size=(3, manifest["embedding_dim"])).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["pixel_values"], ["means"], axes=[2, 3], keepdims=0),
         helper.make_node("MatMul", ["means", "weights"], ["features"]),
         helper.make_node("ReduceL2", ["features"], ["norms"], axes=[1], keepdims=1),
         helper.make_node("Div", ["features", "norms"], ["output"])],
        "null_image_tower",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", manifest["embedding_dim"]])],
        [numpy_helper.from_array(weights, "weights")])
    # IR version 8 (opset 17's): the onnx package writes its newest by default, which older runtimes refuse.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    path = os.path.join(exported + ".tmp", entry["path"])
    onnx.save(model, path)
    with open(path, "rb") as handle:
        payload = handle.read()
    entry.update(sha256=hashlib.sha256(payload).hexdigest(), bytes=len(payload))
    with open(os.path.join(exported + ".tmp", "beam_curator_models.json"), "w") as handle:
        json.dump(manifest, handle, indent=2)
    os.rename(exported + ".tmp", exported)
    return exported


def run_bare(model_dir: str, images: int, batch: int, gpu: bool) -> dict:
    """(m) in a child process: seconds spent in the sessions for `images` preprocessed inputs. On the GPU
    the inputs wait in GPU memory (bound through IO binding): no host-to-device copy is timed."""
    script = f"""
import json, time, numpy as np
from beam_curator.models.handler import OnnxModels
from beam_curator.models.model_dir import read_manifest
manifest = read_manifest({model_dir!r})
models = OnnxModels.load(manifest, ("image_encoder", "aesthetic", "nsfw"), use_gpu={gpu}).sessions  # as the stages load them
encoder = models["image_encoder"]
if {gpu} and not encoder.on_gpu:
    raise SystemExit("no CUDA provider: install onnxruntime-gpu")
p = manifest.preprocessing
pixels = np.random.default_rng(0).normal(size=({batch}, 3, p["crop_height"], p["crop_width"])).astype(encoder.input_dtype)
(name,) = encoder.inputs
if {gpu}:
    import onnxruntime as ort
    on_device = {{n: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(pixels[:n]), "cuda", 0)
                 for n in sorted({{{batch}, {images} % {batch} or {batch}, 2}})}}
    def embed(n):
        binding = encoder.session.io_binding()
        binding.bind_ortvalue_input(name, on_device[n])
        binding.bind_output(encoder.output_name, "cpu")
        encoder.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]
else:
    def embed(n):
        return encoder.run({{name: pixels[:n]}})
embed(2)  # warm-up
started = time.perf_counter()
done = 0
while done < {images}:
    n = min({batch}, {images} - done)
    embeddings = np.asarray(embed(n), dtype=np.float32)
    models["aesthetic"].run_in_chunks(embeddings, {batch})
    models["nsfw"].run_in_chunks(embeddings, {batch})
    done += n
print(json.dumps({{"seconds": time.perf_counter() - started}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_pipeline(source: str, out: str, model_dir: str, batch: int, gpu: bool, measure,
                 reader: tuple[str, ...] = ()) -> dict:
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "beam_curator", "curate", source, "--output", out, "--no-progress",
               "--num-gpus-per-worker", "1" if gpu else "0", "--model-dir", model_dir, "--embed", "--scores", "aesthetic,nsfw",
               "--model-batch-size", str(batch), *reader]
    figures = measure(command)
    with open(os.path.join(out, "_stats.json")) as handle:
        stats = json.load(handle)
    if not stats["reconciles"]:
        raise RuntimeError(f"counts do not reconcile: {stats}")
    stages = {name: figures_["seconds"] for name, figures_ in stats["stages"].items()} if isinstance(
        stats.get("stages"), dict) else {}
    return {"seconds": figures["seconds"], "job_seconds": stats["seconds"], "peak_rss_mb": figures["peak_rss_mb"],
            "cpu_seconds": figures["cpu_seconds"], "images_out": stats["images_written"], "stage_seconds": stages}


def preprocessing_cpu(source: str, model_dir: str, threads: int, batch: int, rounds: int) -> dict:
    """CPU milliseconds per photo of the reader's DALI pipeline alone (DaliImageDecoder, as curate builds it),
    in a child process: decoding only (what pass-through asks of it) and decoding plus the model input."""
    script = f"""
import json, statistics, sys, time
sys.path.insert(0, "benchmarks")
from run import dataset_figures
from beam_curator.formats.decoding import DaliImageDecoder, DecodeOutputs
from beam_curator.formats.model_input import ModelInput
from beam_curator.models.model_dir import read_manifest
photos = dataset_figures({source!r})[2]
spec = ModelInput.of(read_manifest({model_dir!r}).preprocessing)
decoders = {{name: DaliImageDecoder(batch_size={batch}, num_threads={threads}, use_gpu=False, outputs=outputs)
            for name, outputs in (("decode", DecodeOutputs()), ("model_input", DecodeOutputs(model_input=spec)))}}
cpu = {{name: [] for name in decoders}}
for _ in range({rounds}):
    for name, decoder in decoders.items():
        started = time.process_time()
        for start in range(0, len(photos), {batch}):
            decoder.decode(photos[start:start + {batch}])
        cpu[name].append((time.process_time() - started) * 1000 / len(photos))
print(json.dumps({{name: statistics.median(values) for name, values in cpu.items()}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(args, bench) -> int:
    """The run; bench is benchmarks/run.py (its dataset, measuring and docs helpers)."""
    if args.null_model:
        return main_null(args, bench)
    source = bench.make_dataset(args.shards, args.images_per_shard)
    images, _, _ = bench.dataset_figures(source)
    data, results, measure = bench.DATA, args.results, bench._measure_in_child
    model_dir = exported_model_dir(data, args.model_size, args.fp16)
    gpu = args.device == "gpu"
    print(f"models: {images} images in {source}; {args.model_size}-sized CLIP + heads in {model_dir}, on the "
          f"{args.device}", flush=True)
    out = os.path.join(data, "out", "models")
    bare, pipeline = [], []
    reader = ("--isolate-decoder", "never") if gpu else ()  # in process: the model input stays on the GPU
    for round_index in range(args.rounds):
        bare.append(run_bare(model_dir, images, args.model_batch, gpu))
        pipeline.append(run_pipeline(source, out, model_dir, args.model_batch, gpu, measure, reader))
        if pipeline[-1]["images_out"] != images:
            raise RuntimeError(f"(p) wrote {pipeline[-1]['images_out']} images, not {images}")
        print(f"round {round_index + 1}/{args.rounds}: bare {images / bare[-1]['seconds']:.1f} img/s, pipeline "
              f"{images / pipeline[-1]['job_seconds']:.1f} img/s (job), {images / pipeline[-1]['seconds']:.1f} "
              "(process)", flush=True)
    bare_rate = images / statistics.median(run["seconds"] for run in bare)
    job_rate = images / statistics.median(run["job_seconds"] for run in pipeline)
    process_rate = images / statistics.median(run["seconds"] for run in pipeline)
    stage_seconds = {name: statistics.median(run["stage_seconds"].get(name, 0) for run in pipeline)
                     for name in pipeline[-1]["stage_seconds"]}
    result = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "model": f"{args.model_size}-sized CLIP (random weights), aesthetic + NSFW heads, "
                 f"{'fp16' if args.fp16 else 'fp32'} towers, on the {args.device}",
        "images": images, "rounds": args.rounds, "model_batch": args.model_batch,
        "bare_images_per_s": bare_rate, "pipeline_job_images_per_s": job_rate,
        "pipeline_process_images_per_s": process_rate,
        "ratio_job": job_rate / bare_rate, "ratio_process": process_rate / bare_rate,
        "target": TARGET, "target_met": job_rate / bare_rate >= TARGET,
        "stage_seconds_median": stage_seconds,
        "peak_rss_mb": max(run["peak_rss_mb"] for run in pipeline),
    }
    print(table(result))
    os.makedirs(results, exist_ok=True)
    name = args.name or f"{datetime.date.today().isoformat()}-{args.device}"
    with open(os.path.join(results, f"{name}-models.json"), "w") as handle:
        json.dump(result, handle, indent=2)
    if args.update_docs:
        bench.replace_doc_block("models" if args.device == "cpu" else "models-gpu",
                                f"Run {result['when']} on {result['machine']['cpus']} CPUs.\n\n{table(result)}")
    return 0


def main_null(args, bench) -> int:
    """(p) with a model that costs ~nothing against (c), pass-through curate, same data, interleaved."""
    source = bench.make_dataset(args.shards, args.images_per_shard)
    images, _, _ = bench.dataset_figures(source)
    model_dir = null_model_dir(bench.DATA)
    gpu = args.device == "gpu"
    print(f"null model: {images} images in {source}; on the {args.device}", flush=True)
    reader = ("--no-reader-verbose", "--num-threads", str(args.threads), "--dali-batch-size", str(args.batch),
              *(("--isolate-decoder", "never") if gpu else ()))
    out = os.path.join(bench.DATA, "out")
    passes, nulls = [], []
    for round_index in range(args.rounds):
        passes.append(bench.run_cli(source, os.path.join(out, "c"), args.threads, args.batch, reencode=False,
                                    gpu=gpu, extra=reader[-2:] if gpu else ()))
        nulls.append(run_pipeline(source, os.path.join(out, "p"), model_dir, args.model_batch, gpu,
                                  bench._measure_in_child, reader))
        if nulls[-1]["images_out"] != images:
            raise RuntimeError(f"(p) wrote {nulls[-1]['images_out']} images, not {images}")
        print(f"round {round_index + 1}/{args.rounds}: pass-through {images / passes[-1]['job_seconds']:.1f} img/s, "
              f"null model {images / nulls[-1]['job_seconds']:.1f} img/s (job clock)", flush=True)
    pass_rate = images / statistics.median(run["job_seconds"] for run in passes)
    null_rate = images / statistics.median(run["job_seconds"] for run in nulls)
    # Why the ratio is what it is where the CPUs are the bound: what the preprocessing costs on its own.
    dali = preprocessing_cpu(source, model_dir, args.threads, args.batch, args.rounds) if not gpu else None
    pass_cpu = statistics.median(run["cpu_seconds"] for run in passes) * 1000 / images
    null_cpu = statistics.median(run["cpu_seconds"] for run in nulls) * 1000 / images
    result = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "device": args.device, "images": images, "rounds": args.rounds, "threads": args.threads,
        "batch": args.batch, "model_batch": args.model_batch,
        "pass_through_job_images_per_s": pass_rate, "null_model_job_images_per_s": null_rate,
        "ratio": null_rate / pass_rate, "target": NULL_TARGET, "target_met": null_rate / pass_rate >= NULL_TARGET,
        "stage_seconds_median": {name: statistics.median(run["stage_seconds"].get(name, 0) for run in nulls)
                                 for name in nulls[-1]["stage_seconds"]},
        "cpu_ms_per_image": {"pass_through": pass_cpu, "null_model": null_cpu},
        "dali_alone_cpu_ms_per_image": dali,
    }
    if dali:
        preprocessing = dali["model_input"] - dali["decode"]
        # (c)'s CPU plus the preprocessing and nothing else: the best p/c a CPU-bound machine allows.
        result["cpu_bound_ceiling"] = pass_cpu / (pass_cpu + preprocessing)
    text = "\n".join([
        f"{images} images, {args.rounds} rounds, {args.threads} DALI threads, batch {args.batch}, on the {args.device}",
        "", "| contender | images/s (median, job clock) |", "|---|---|",
        f"| (c) curate, bytes passed through | {pass_rate:.1f} |",
        f"| (p) curate --embed --scores aesthetic,nsfw, null image tower | {null_rate:.1f} |",
        "", "| ratio | measured | target | met |", "|---|---|---|---|",
        f"| p/c | {result['ratio']:.3f} | >= {NULL_TARGET} | {'yes' if result['target_met'] else 'no'} |",
        *([] if not dali else [
            "", "| CPU per image (median) | ms |", "|---|---|",
            f"| (c) whole command | {pass_cpu:.2f} |", f"| (p) whole command | {null_cpu:.2f} |",
            f"| the reader's DALI pipeline alone: decoding | {dali['decode']:.2f} |",
            f"| the same, decoding and the model input | {dali['model_input']:.2f} |",
            "", f"p/c if (p) cost (c)'s CPU plus the model input's alone (the ceiling where the CPUs are the bound): "
            f"{result['cpu_bound_ceiling']:.3f}"])])
    print(text)
    os.makedirs(args.results, exist_ok=True)
    name = args.name or f"{datetime.date.today().isoformat()}-{args.device}"
    with open(os.path.join(args.results, f"{name}-null-model.json"), "w") as handle:
        json.dump(result, handle, indent=2)
    if args.update_docs:
        bench.replace_doc_block("null-model" if args.device == "cpu" else "null-model-gpu",
                                f"Run {result['when']} on {result['machine']['cpus']} CPUs.\n\n{text}")
    return 0


def table(result: dict) -> str:
    lines = [f"{result['model']}, {result['images']} images, {result['rounds']} rounds", "",
             "| contender | images/s (median) |", "|---|---|",
             f"| (m) bare onnxruntime: image tower + 2 heads, preprocessed input | {result['bare_images_per_s']:.1f} |",
             f"| (p) curate --embed --scores aesthetic,nsfw, job clock | {result['pipeline_job_images_per_s']:.1f} |",
             f"| (p) the same, whole process (start-up included) | {result['pipeline_process_images_per_s']:.1f} |",
             "", "| ratio | measured | target | met |", "|---|---|---|---|",
             f"| p/m (job) | {result['ratio_job']:.3f} | >= {result['target']} | "
             f"{'yes' if result['target_met'] else 'no'} |",
             f"| p/m (whole process; not the target) | {result['ratio_process']:.3f} | - | - |", "",
             "| stage | seconds (median) |", "|---|---|"]
    lines += [f"| {name} | {seconds:.2f} |" for name, seconds in result["stage_seconds_median"].items()]
    lines.append(f"\npeak RSS of (p): {result['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)
