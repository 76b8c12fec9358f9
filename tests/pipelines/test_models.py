"""Curation with models: export-models, the runtime against the Hugging Face / numpy references, the
four stages, and curate --model-dir end to end. Models are tiny random CLIPs and heads at their real
sizes (beam_curator/models/tiny.py), exported through the real export path (the exported_models fixture)."""

from __future__ import annotations

import glob
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_curator import cli
from beam_curator.formats.model_input import clip_pixels
from beam_curator.models.inference import CaptionTokenizer, OnnxModel
from beam_curator.models.model_dir import MANIFEST_FILE, read_manifest
from beam_curator.tasks import BatchOrigin, ImageBatch, ImageObject
from tests.support.helpers import build_dataset, make_samples, write_tar
from tests.support.images import make_image
from tests.support.tiny_models import aesthetic_numpy, nsfw_numpy, reference_processor

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _manifest(exported):
    return json.loads(Path(os.path.join(exported.model_dir, MANIFEST_FILE)).read_text())


def _model(exported, role) -> OnnxModel:
    return OnnxModel(os.path.join(exported.model_dir, _manifest(exported)["files"][role]["path"]), use_gpu=False)


def _reference_image_embeddings(clip_dir: str, pixel_values: np.ndarray) -> np.ndarray:
    """Hugging Face's path: CLIPModel.get_image_features, normalised."""
    model = transformers.CLIPModel.from_pretrained(clip_dir).eval()
    with torch.no_grad():
        out = model.get_image_features(pixel_values=torch.from_numpy(pixel_values))
    features = (out.pooler_output if hasattr(out, "pooler_output") else out).numpy()
    return features / np.linalg.norm(features, axis=1, keepdims=True)


IMAGES = [make_image(seed, width, height) for seed, (width, height) in
          enumerate([(96, 64), (64, 96), (33, 33), (20, 50), (300, 41), (32, 32)])]


def test_preprocessing_is_hugging_faces(exported_models):
    preprocessing = read_manifest(exported_models.model_dir).preprocessing
    processor = reference_processor(exported_models.clip_dir)
    for image in IMAGES:  # landscape, portrait, odd sizes, smaller than the crop (padded), exact size
        ours = clip_pixels(image, preprocessing)
        theirs = processor(images=image, return_tensors="np")["pixel_values"][0]
        assert ours.shape == theirs.shape and np.abs(ours - theirs).max() < 1e-5


def test_image_tower_equals_transformers_on_identical_input(exported_models):
    processor = reference_processor(exported_models.clip_dir)
    pixel_values = processor(images=IMAGES, return_tensors="np")["pixel_values"].astype(np.float32)
    ours = _model(exported_models, "image_encoder").run_in_chunks(pixel_values, 4)  # two calls: 4 + 2
    theirs = _reference_image_embeddings(exported_models.clip_dir, pixel_values)
    assert ours.shape == (len(IMAGES), 768)
    assert np.abs(ours - theirs).max() < 1e-4
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)


def test_text_tower_and_tokenizer_equal_transformers(exported_models):
    manifest = read_manifest(exported_models.model_dir)
    tokenizer = CaptionTokenizer(os.path.join(exported_models.model_dir, "tokenizer.json"),
                                 context_length=manifest.text["context_length"],
                                 pad_token_id=manifest.text["pad_token_id"])
    captions = ["a photo of the cat", "The Cat and the dog!", "ünïcode — caption", "word " * 200]
    ours = tokenizer(captions)
    reference = transformers.AutoTokenizer.from_pretrained(exported_models.clip_dir)
    theirs = reference(captions, padding=True, truncation=True, max_length=77, return_tensors="np")
    assert ours["input_ids"].shape[1] == 77  # the long caption truncated to the context length
    assert (ours["input_ids"] == theirs["input_ids"]).all()
    assert (ours["attention_mask"] == theirs["attention_mask"]).all()
    embeddings = _model(exported_models, "text_encoder").run(ours)
    model = transformers.CLIPModel.from_pretrained(exported_models.clip_dir).eval()
    with torch.no_grad():
        out = model.get_text_features(input_ids=torch.from_numpy(theirs["input_ids"]),
                                      attention_mask=torch.from_numpy(theirs["attention_mask"]))
    expected = (out.pooler_output if hasattr(out, "pooler_output") else out).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.abs(embeddings - expected).max() < 1e-4


def test_heads_equal_their_numpy_forward(exported_models):
    from safetensors.numpy import load_file

    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(70, 768)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    aesthetic = _model(exported_models, "aesthetic").run_in_chunks(embeddings, 32)
    assert np.abs(aesthetic - aesthetic_numpy(load_file(exported_models.heads["aesthetic"]), embeddings)).max() < 1e-4
    nsfw_state = {key: value.numpy() for key, value in torch.load(exported_models.heads["nsfw"],
                                                                  weights_only=True).items()}
    nsfw = _model(exported_models, "nsfw").run_in_chunks(embeddings, 32)
    assert np.abs(nsfw - nsfw_numpy(nsfw_state, embeddings)).max() < 1e-4
    assert ((nsfw > 0) & (nsfw < 1)).all()


def test_heads_run_on_the_calling_thread_with_the_same_scores(exported_models):
    """The stages load the heads with one intra-op thread (no pool whose threads spin after each call,
    taking CPU from DALI's decoding) and the image tower with ONNX Runtime's default pool."""
    from beam_curator.models.handler import OnnxModels

    loaded = OnnxModels.load(read_manifest(exported_models.model_dir), ("image_encoder", "aesthetic", "nsfw"),
                             use_gpu=False).sessions
    threads = {role: model.session.get_session_options().intra_op_num_threads for role, model in loaded.items()}
    assert threads == {"image_encoder": 0, "aesthetic": 1, "nsfw": 1}
    embeddings = np.random.default_rng(1).normal(size=(40, 768)).astype(np.float32)
    for role in ("aesthetic", "nsfw"):
        pooled = _model(exported_models, role).run_in_chunks(embeddings, 16)
        assert np.abs(loaded[role].run_in_chunks(embeddings, 16) - pooled).max() < 1e-6


def test_export_refuses_heads_that_are_not_the_real_architecture(exported_models, tmp_path):
    from safetensors.torch import save_file

    from beam_curator.models.export import export_models

    wrong_size = str(tmp_path / "small.safetensors")  # a 512-input head against 768-dim CLIP
    save_file({f"layers.{i}.{p}": torch.zeros(*(s if p == "weight" else s[:1])) for i, s in
               zip((0, 2, 4, 6, 7), [(1024, 512), (128, 1024), (64, 128), (16, 64), (1, 16)]) for p in ("weight", "bias")},
              wrong_size)
    with pytest.raises(ValueError, match="expected \\(1024, 768\\)"):
        export_models(exported_models.clip_dir, str(tmp_path / "out"), aesthetic=wrong_size)
    with pytest.raises(ValueError, match="not a nsfw head"):
        export_models(exported_models.clip_dir, str(tmp_path / "out"), nsfw=exported_models.heads["aesthetic"])

    pickled = str(tmp_path / "code.pth")
    torch.save({"layers.0.weight": os.system}, pickled)  # a pickle that would call code if fully unpickled
    with pytest.raises(ValueError, match="weights_only=True"):
        export_models(exported_models.clip_dir, str(tmp_path / "out"), aesthetic=pickled)
    assert not os.path.exists(tmp_path / "out" / MANIFEST_FILE)


def _batch(objects) -> ImageBatch:
    return ImageBatch(task_id="t", dataset_name="d", data=objects,
                      origin=BatchOrigin(partition=0, batch_index=0, last=True, source_files=("x.tar",)))


def _ready(stage):
    stage.setup()
    assert stage.models  # loaded
    return stage


def test_thresholds_follow_nemo_curator_at_the_boundary(exported_models):
    from beam_curator.transforms import ImageAestheticFilterStage, ImageNSFWFilterStage

    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(3, 768)).astype(np.float32)
    objects = [ImageObject(image_id=f"i{n}", embedding=v / np.linalg.norm(v)) for n, v in enumerate(vectors)]
    scorer = _ready(ImageAestheticFilterStage(exported_models.model_dir, score_threshold=None))
    scores = [obj.aesthetic_score for obj in scorer.process_batch(_batch(objects)).kept]
    assert len(scores) == 3 and all(isinstance(score, float) for score in scores)
    at = sorted(scores)[1]  # the threshold equal to the middle score: kept by aesthetic (>=)
    outcome = _ready(ImageAestheticFilterStage(exported_models.model_dir, score_threshold=at)).process_batch(
        _batch(objects))
    assert sorted(obj.aesthetic_score for obj in outcome.kept) == sorted(scores)[1:]
    assert [(d.score, d.threshold) for d in outcome.dropped] == [(sorted(scores)[0], at)]

    nsfw_scores = [obj.nsfw_score for obj in _ready(ImageNSFWFilterStage(
        exported_models.model_dir, score_threshold=None)).process_batch(_batch(objects)).kept]
    at = sorted(nsfw_scores)[1]  # equal to the threshold: dropped by NSFW (keeps <)
    outcome = _ready(ImageNSFWFilterStage(exported_models.model_dir, score_threshold=at)).process_batch(_batch(objects))
    assert [obj.nsfw_score for obj in outcome.kept] == [sorted(nsfw_scores)[0]]
    assert sorted(d.score for d in outcome.dropped) == sorted(nsfw_scores)[1:]
    assert ImageNSFWFilterStage(exported_models.model_dir).score_threshold == 0.5  # NeMo's defaults
    assert ImageAestheticFilterStage(exported_models.model_dir).score_threshold == 0.5


def test_a_filter_without_embeddings_names_the_stage_to_add(exported_models):
    from beam_curator.transforms import ImageNSFWFilterStage, ImageTextSimilarityFilterStage

    for stage in (ImageNSFWFilterStage(exported_models.model_dir),
                  ImageTextSimilarityFilterStage(exported_models.model_dir, score_threshold=0.1)):
        with pytest.raises(ValueError, match=r"add ImageEmbeddingStage\(model_dir\) before it"):
            _ready(stage).process_batch(_batch([ImageObject(image_id="a", image_data=IMAGES[0])]))


def test_stage_options_are_checked_at_construction(exported_models, tmp_path):
    from beam_curator.transforms import ImageAestheticFilterStage, ImageEmbeddingStage

    with pytest.raises(ValueError, match="model_inference_batch_size"):
        ImageEmbeddingStage(exported_models.model_dir, model_inference_batch_size=0)
    with pytest.raises(ValueError, match="num_gpus_per_worker"):
        ImageEmbeddingStage(exported_models.model_dir, num_gpus_per_worker=-1)
    with pytest.raises(ValueError, match="score_threshold"):
        ImageAestheticFilterStage(exported_models.model_dir, score_threshold="5")
    with pytest.raises(FileNotFoundError, match="export-models"):
        ImageEmbeddingStage(str(tmp_path))
    partial = tmp_path / "clip-only"
    partial.mkdir()
    manifest = _manifest(exported_models)
    manifest["files"].pop("aesthetic")
    (partial / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="--aesthetic FILE"):
        ImageAestheticFilterStage(str(partial))


def test_a_changed_model_file_is_refused(exported_models, tmp_path):
    import shutil

    from beam_curator.transforms import ImageEmbeddingStage

    copy = str(tmp_path / "models")
    shutil.copytree(exported_models.model_dir, copy)
    with open(os.path.join(copy, "image_encoder.onnx"), "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 1]))
    stage = ImageEmbeddingStage(copy)
    stage.setup()  # the sessions load on a thread of their own; the error comes with the first use
    with pytest.raises(ValueError, match="does not match its manifest"):
        assert stage.models


def test_curate_with_every_model_stage_accounts_for_every_image(exported_models, tmp_path, capsys):
    """Thresholds that split the data, a broken image, samples without caption: every input image is
    in the output, _filtered/ or _failures/ exactly once; scores are the heads' on stored embeddings."""
    samples = make_samples(0, 16) + make_samples(1, 16)
    for sample in samples[::5]:
        del sample.members["txt"]  # no caption: no clip_score, kept
    samples[3].members["jpg"] = samples[3].members["jpg"][:200]  # truncated: fails in the reader
    inputs = tmp_path / "input"
    inputs.mkdir()
    write_tar(str(inputs / "a.tar"), samples[:16])
    write_tar(str(inputs / "b.tar"), samples[16:])
    scored = str(tmp_path / "scored")
    assert cli.main(["curate", str(inputs), "--output", scored, "--model-dir", exported_models.model_dir,
                     "--scores", "aesthetic,nsfw,clip", "--embed", "--no-progress"]) == 0
    rows = pq.read_table(glob.glob(f"{scored}/*.parquet")).to_pylist()
    assert len(rows) == 31 and all(row["embedding"] is not None for row in rows)
    # Thresholds where each stage drops some of what the one before kept.
    aesthetic = float(np.median([row["aesthetic_score"] for row in rows]))
    survivors = [row for row in rows if row["aesthetic_score"] >= aesthetic]
    nsfw = max(row["nsfw_score"] for row in survivors)
    survivors = [row for row in survivors if row["nsfw_score"] < nsfw]
    clip = sorted(row["clip_score"] for row in survivors if row["clip_score"] is not None)[1]

    out = str(tmp_path / "out")
    code = cli.main(["curate", str(inputs), "--output", out, "--model-dir", exported_models.model_dir,
                     "--aesthetic-threshold", repr(aesthetic), "--nsfw-threshold", repr(nsfw),
                     "--clip-score-threshold", repr(clip), "--model-batch-size", "3", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0 and "reconciliation: 32 read = " in printed and printed.rstrip().endswith(": ok")
    written = pq.read_table(glob.glob(f"{out}/*.parquet")).to_pylist()
    filtered = pq.read_table(glob.glob(f"{out}/_filtered/*.parquet")).to_pylist()
    failed = pq.read_table(glob.glob(f"{out}/_failures/*.parquet")).to_pylist()
    keys = [row["original_key"] for row in written] + [row["key"] for row in filtered] + [row["key"] for row in failed]
    assert sorted(keys) == sorted(sample.key for sample in samples)  # each exactly once
    assert [row["key"] for row in failed] == [samples[3].key]
    by_stage = {stage: [row for row in filtered if row["stage"] == stage] for stage in
                ("aesthetic_filter", "nsfw_filter", "clip_score_filter")}
    assert all(by_stage.values()) and len(filtered) == sum(map(len, by_stage.values()))
    assert all(row["score"] < aesthetic and row["threshold"] == aesthetic for row in by_stage["aesthetic_filter"])
    assert all(row["score"] >= nsfw for row in by_stage["nsfw_filter"])
    assert all(row["score"] < clip for row in by_stage["clip_score_filter"])
    assert all(row["aesthetic_score"] >= aesthetic and row["nsfw_score"] < nsfw for row in written)
    assert all(row["embedding"] is None for row in written)  # computed for the filters, not stored without --embed
    uncaptioned = {s.key for s in samples if "txt" not in s.members}
    assert all((row["clip_score"] is None) == (row["original_key"] in uncaptioned) for row in written)
    stats = json.loads(Path(f"{out}/_stats.json").read_text())
    assert stats["filtered_by_stage"] == {stage: len(rows) for stage, rows in by_stage.items()}
    assert stats["options"]["model_dir"] == exported_models.model_dir

    # The scores in the parquet are what the exported heads give for the stored embeddings.
    stored = np.asarray([row["embedding"] for row in rows], dtype=np.float32)
    for role, column in (("aesthetic", "aesthetic_score"), ("nsfw", "nsfw_score")):
        again = _model(exported_models, role).run_in_chunks(stored, 32)
        assert np.abs(again - np.asarray([row[column] for row in rows])).max() < 1e-6


def test_pipeline_embeddings_agree_with_the_hugging_face_path(exported_models, tmp_path):
    dataset = build_dataset(tmp_path / "input", 2, 8)
    out = str(tmp_path / "out")
    assert cli.main(["curate", dataset.directory, "--output", out, "--model-dir", exported_models.model_dir,
                     "--embed", "--no-progress"]) == 0
    rows = {row["original_key"]: row for row in pq.read_table(glob.glob(f"{out}/*.parquet")).to_pylist()}
    from PIL import Image

    images = [np.asarray(Image.open(io.BytesIO(sample.members["jpg"])).convert("RGB")) for sample in dataset.samples]
    processor = reference_processor(exported_models.clip_dir)
    expected = _reference_image_embeddings(exported_models.clip_dir, processor(
        images=images, return_tensors="np")["pixel_values"].astype(np.float32))
    ours = np.asarray([rows[sample.key]["embedding"] for sample in dataset.samples], dtype=np.float32)
    cosines = (ours * expected).sum(axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(expected, axis=1)
    assert len(rows) == 16 and cosines.min() >= 0.99, cosines


def test_one_session_per_worker_process(exported_models, tmp_path, make_dataset):
    from beam_curator.transforms import (
        FilePartitioningStage,
        ImageAestheticFilterStage,
        ImageEmbeddingStage,
        ImageReaderStage,
        ImageWriterStage,
    )
    from beam_curator.transforms.metrics import query_counters
    from tests.support.helpers import run_pipeline

    dataset = make_dataset(shards=8, per_shard=5)

    def build(pipeline):
        batches = (pipeline | FilePartitioningStage(dataset.directory)
                   | ImageReaderStage(dali_batch_size=2, num_threads=1)
                   | ImageEmbeddingStage(exported_models.model_dir, model_inference_batch_size=2)
                   | ImageAestheticFilterStage(exported_models.model_dir, score_threshold=None))
        _ = batches | ImageWriterStage(str(tmp_path / "out"))

    counts = query_counters(run_pipeline(build, ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]))
    assert counts["dali_pipelines_built"] == 2  # both worker processes read
    assert counts["image_embedding_models_built"] == counts["aesthetic_filter_models_built"] == 2  # one each
    assert counts["images_committed"] == 40


def test_building_the_pipeline_loads_no_model(exported_models, tmp_path, make_dataset):
    dataset = make_dataset(shards=1, per_shard=2)
    script = f"""
import sys
from beam_curator import cli
from beam_curator.jobs.curate import build_pipeline
args, beam_args = cli.parse_command(["curate", {dataset.directory!r}, "--output", {str(tmp_path / 'out')!r},
    "--model-dir", {exported_models.model_dir!r}, "--aesthetic-threshold", "5", "--nsfw-threshold", "0.5",
    "--clip-score-threshold", "0.2", "--embed"])
pipeline, shards, _ = build_pipeline(args, beam_args)
labels = [t.full_label for t in pipeline.transforms_stack[0].parts]
loaded = sorted(m for m in ("onnxruntime", "tokenizers", "torch", "transformers", "nvidia.dali.backend") if m in sys.modules)
print(loaded, shards)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[] 1"


def test_model_options_need_a_model_dir(tmp_path, capsys, exported_models):
    assert cli.main(["curate", str(tmp_path), "--output", str(tmp_path / "o"), "--nsfw-threshold", "0.3"]) == 2
    assert "--nsfw-threshold needs --model-dir" in capsys.readouterr().err
    assert cli.main(["curate", str(tmp_path), "--output", str(tmp_path / "o"), "--model-dir",
                     exported_models.model_dir, "--scores", "aesthetic,beauty"]) == 2
    assert "unknown: beauty" in capsys.readouterr().err
    assert cli.main(["export-models", "--output", str(tmp_path / "m")]) == 2
    assert "--clip HF_DIR" in capsys.readouterr().err


def test_convert_carries_the_model_fields(exported_models):
    from beam_curator.transforms import convert_image_batch

    obj = ImageObject(image_id="a", embedding=np.ones(4, np.float32), aesthetic_score=5.5, nsfw_score=0.1,
                      scores={"clip_score": 0.3})
    frame = convert_image_batch(_batch([obj]), ["image_id", "embedding", "aesthetic_score", "nsfw_score",
                                                "clip_score"], "convert").data
    assert frame.loc[0, "clip_score"] == 0.3 and frame.loc[0, "aesthetic_score"] == 5.5
    assert list(frame.loc[0, "embedding"]) == [1, 1, 1, 1]


def test_remove_image_data_drops_only_pixels_the_writer_can_do_without(exported_models):
    from beam_curator.transforms import ImageEmbeddingStage

    stage = _ready(ImageEmbeddingStage(exported_models.model_dir, remove_image_data=True))
    decoded = ImageObject(image_id="decoded", image_data=IMAGES[0], decoded_pixels=IMAGES[0], image_bytes=b"jpeg")
    changed = ImageObject(image_id="changed", image_data=IMAGES[1], decoded_pixels=IMAGES[0], image_bytes=b"jpeg")
    kept = {obj.image_id: obj for obj in stage.process_batch(_batch([decoded, changed])).kept}
    assert kept["decoded"].image_data is None and kept["decoded"].pixels_unchanged  # the original bytes are written
    assert kept["changed"].image_data is IMAGES[1]  # nothing else holds these pixels
    assert all(obj.embedding is not None for obj in kept.values())


@pytest.mark.gpu
def test_the_gpu_session_gives_the_cpu_embeddings(exported_models):
    """On a GPU worker with onnxruntime-gpu: the CUDA provider is used, and agrees with the CPU."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider: pip install 'beam-curator[gpu]' (onnxruntime-gpu)")
    from beam_curator.transforms import ImageEmbeddingStage

    stage = _ready(ImageEmbeddingStage(exported_models.model_dir, num_gpus_per_worker=1))
    assert stage.models.device == "gpu"
    objects = [ImageObject(image_id=str(n), image_data=image) for n, image in enumerate(IMAGES)]
    on_gpu = np.stack([obj.embedding for obj in stage.process_batch(_batch(objects)).kept])
    on_cpu = np.stack([obj.embedding for obj in _ready(ImageEmbeddingStage(
        exported_models.model_dir, num_gpus_per_worker=0)).process_batch(_batch(objects)).kept])
    assert np.abs(on_gpu - on_cpu).max() < 1e-3


def test_fp16_export_agrees_with_fp32(exported_models, tmp_path):
    from beam_curator.transforms import ImageEmbeddingStage, ImageTextSimilarityFilterStage

    half = str(tmp_path / "fp16")
    assert cli.main(["export-models", "--clip", exported_models.clip_dir, "--output", half, "--fp16"]) == 0
    assert read_manifest(half).files.keys() == {"image_encoder", "text_encoder", "tokenizer"}
    assert _manifest(type(exported_models)(half, "", {}))["dtype"] == "float16"
    objects = [ImageObject(image_id=str(n), image_data=image, companions={"txt": b"a photo of the cat"})
               for n, image in enumerate(IMAGES)]
    results = {}
    for name, model_dir in (("fp32", exported_models.model_dir), ("fp16", half)):
        embedded = _ready(ImageEmbeddingStage(model_dir)).process_batch(_batch(objects)).kept
        scored = _ready(ImageTextSimilarityFilterStage(model_dir)).process_batch(_batch(embedded)).kept
        results[name] = (np.stack([obj.embedding for obj in embedded]), [obj.scores["clip_score"] for obj in scored])
    assert results["fp16"][0].dtype == np.float32
    assert (results["fp16"][0] * results["fp32"][0]).sum(axis=1).min() > 0.999
    assert np.abs(np.subtract(results["fp16"][1], results["fp32"][1])).max() < 2e-3


def test_export_then_curate_the_sample_dataset_from_the_command_line(exported_models, tmp_path):
    """The user's path, as commands: make-sample, export-models, curate --model-dir with thresholds."""

    def command(*args):
        done = subprocess.run([sys.executable, "-m", "beam_curator", *args], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    sample, model_dir = str(tmp_path / "sample"), str(tmp_path / "models")
    command("make-sample", sample)
    command("export-models", "--clip", exported_models.clip_dir, "--aesthetic", exported_models.heads["aesthetic"],
            "--nsfw", exported_models.heads["nsfw"], "--output", model_dir)
    command("curate", sample, "--output", str(tmp_path / "scored"), "--model-dir", model_dir, "--scores",
            "aesthetic,nsfw", "--no-progress")
    rows = pq.read_table(glob.glob(str(tmp_path / "scored" / "*.parquet"))).to_pylist()
    aesthetic = float(np.median([row["aesthetic_score"] for row in rows]))
    nsfw = float(np.quantile([row["nsfw_score"] for row in rows if row["aesthetic_score"] >= aesthetic], 0.5))
    printed = command("curate", sample, "--output", str(tmp_path / "out"), "--model-dir", model_dir,
                      "--aesthetic-threshold", repr(aesthetic), "--nsfw-threshold", repr(nsfw), "--no-progress")
    lines = printed.strip().splitlines()
    stats = json.loads(Path(tmp_path / "out" / "_stats.json").read_text())
    by_stage = stats["filtered_by_stage"]
    assert by_stage["aesthetic_filter"] > 0 and by_stage["nsfw_filter"] > 0
    assert f"  aesthetic_filter: {by_stage['aesthetic_filter']} filtered, 0 failed" in lines
    assert f"  nsfw_filter: {by_stage['nsfw_filter']} filtered, 0 failed" in lines
    assert lines[-1] == (f"reconciliation: 120 read = {stats['images_written']} written + 0 failed + "
                         f"{sum(by_stage.values())} filtered: ok")


def test_export_models_tiny_writes_a_model_dir_without_a_checkpoint(tmp_path, capsys):
    from beam_curator.models.model_dir import read_manifest

    out = str(tmp_path / "tiny")
    assert cli.main(["export-models", "--tiny", "--output", out]) == 0
    assert "exported" in capsys.readouterr().out
    manifest = read_manifest(out)
    assert manifest.embedding_dim == 768  # the heads' real input size
    for role in ("image_encoder", "text_encoder", "tokenizer", "aesthetic", "nsfw"):
        manifest.require(role, wanted_by="the test")
