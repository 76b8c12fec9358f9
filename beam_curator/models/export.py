"""`beam-curator export-models`: a Hugging Face CLIP checkpoint and the two LAION heads -> MODEL_DIR.

The one place that uses torch and transformers (the optional `[export]` extra). It writes ONNX files
the curation runtime runs with ONNX Runtime alone, the tokenizer as tokenizer.json, and the manifest
(beam_curator.models.model_dir). Heads are read as state dicts, from safetensors or from a `.pth` with
`torch.load(weights_only=True)`: nothing is unpickled beyond tensors.

The heads, as NeMo Curator defines them (key names are the checkpoints' own):
- aesthetic (LAION improved aesthetic predictor): layers.{0,2,4,6,7} linear, D->1024->128->64->16->1,
  no activations (the dropouts between them do nothing at inference); the raw score, ~1-10.
- nsfw (LAION CLIP-based NSFW detector, torch port): (x - norm.mean) / sqrt(norm.variance), then
  linear_1..4, D->64->512->256->1, ReLU between, sigmoid at the end.
D is the CLIP embedding size (768 for ViT-L/14, which both were trained on).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import tempfile
import warnings
from typing import Any

from beam_curator import __version__, storage
from beam_curator.models.model_dir import MANIFEST_FILE, MANIFEST_FORMAT, sha256_of_file

__all__ = ["HUB_CHECKPOINTS", "export_models", "load_head_state_dict"]

_LOG = logging.getLogger(__name__)
OPSET = 17
# What NeMo Curator downloads (used by --from-hub; needs internet).
HUB_CHECKPOINTS = {
    "clip": "openai/clip-vit-large-patch14",
    "aesthetic": "ttj/sac-logos-ava1-l14-linearMSE",
    "nsfw": "https://github.com/LAION-AI/CLIP-based-NSFW-Detector/files/10250461/clip_autokeras_binary_nsfw.zip",
}
AESTHETIC_LAYERS = (0, 2, 4, 6, 7)
NSFW_LAYERS = (1, 2, 3, 4)


def _torch():
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as error:
        raise ImportError("export-models needs torch and transformers: pip install 'beam-curator[export]' "
                          f"({error})") from error
    return torch


def load_head_state_dict(path: str) -> dict[str, Any]:
    """A head's tensors from `.safetensors`, or from `.pth`/`.pt`/`.bin` with weights_only=True, on the CPU
    (LAION's aesthetic .pth holds tensors saved on cuda:0)."""
    torch = _torch()
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the pickle held more than tensors, or is not one
        raise ValueError(f"{path}: cannot read it as a state dict of tensors with weights_only=True ({error}); "
                         "save the head's state_dict() as safetensors or .pth") from error
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return state


def _check_keys(kind: str, path: str, state: dict[str, Any], expected: set[str]) -> None:
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"{path} is not a {kind} head: missing {missing}, unexpected {extra}")


def _aesthetic_head(path: str, embedding_dim: int):
    torch = _torch()
    state = load_head_state_dict(path)
    _check_keys("aesthetic", path, state, {f"layers.{i}.{p}" for i in AESTHETIC_LAYERS for p in ("weight", "bias")})
    sizes = [embedding_dim, 1024, 128, 64, 16, 1]
    layers = []
    for index, (n_in, n_out) in zip(AESTHETIC_LAYERS, itertools.pairwise(sizes)):
        while len(layers) < index:
            layers.append(torch.nn.Identity())  # the dropouts at 1, 3, 5 (identity at inference)
        if tuple(state[f"layers.{index}.weight"].shape) != (n_out, n_in):
            raise ValueError(f"{path}: layers.{index}.weight is {tuple(state[f'layers.{index}.weight'].shape)}, "
                             f"expected {(n_out, n_in)} for {embedding_dim}-dimensional CLIP embeddings")
        layers.append(torch.nn.Linear(n_in, n_out))

    class Aesthetic(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.Sequential(*layers)

        def forward(self, x):
            return self.layers(x).reshape(-1)

    model = Aesthetic()
    model.load_state_dict({key: value.float() for key, value in state.items()})
    return model


def _nsfw_head(path: str, embedding_dim: int):
    torch = _torch()
    state = load_head_state_dict(path)
    expected = {"norm.mean", "norm.variance"} | {f"linear_{i}.{p}" for i in NSFW_LAYERS for p in ("weight", "bias")}
    _check_keys("nsfw", path, state, expected)
    sizes = [embedding_dim, 64, 512, 256, 1]
    if tuple(state["linear_1.weight"].shape) != (64, embedding_dim):
        raise ValueError(f"{path}: linear_1.weight is {tuple(state['linear_1.weight'].shape)}, expected "
                         f"{(64, embedding_dim)} for {embedding_dim}-dimensional CLIP embeddings")

    class Nsfw(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.Module()
            self.norm.register_buffer("mean", torch.zeros(state["norm.mean"].shape))
            self.norm.register_buffer("variance", torch.ones(state["norm.variance"].shape))
            for i, (n_in, n_out) in zip(NSFW_LAYERS, itertools.pairwise(sizes)):
                setattr(self, f"linear_{i}", torch.nn.Linear(n_in, n_out))

        def forward(self, x):
            x = (x - self.norm.mean) / self.norm.variance.sqrt()
            x = torch.relu(self.linear_1(x))
            x = torch.relu(self.linear_2(x))
            x = torch.relu(self.linear_3(x))
            return torch.sigmoid(self.linear_4(x)).reshape(-1)

    model = Nsfw()
    model.load_state_dict({key: value.float() for key, value in state.items()})
    return model


def _clip_towers(clip_dir: str):
    torch = _torch()
    from transformers import CLIPModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Loading weights" bars: noise in a command's output
    model = CLIPModel.from_pretrained(clip_dir, attn_implementation="eager").eval()

    def normalised(features):
        return features / features.norm(dim=-1, keepdim=True)

    class ImageTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.clip = model

        def forward(self, pixel_values):
            pooled = self.clip.vision_model(pixel_values=pixel_values).pooler_output
            return normalised(self.clip.visual_projection(pooled))

    class TextTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.clip = model

        def forward(self, input_ids, attention_mask):
            pooled = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
            return normalised(self.clip.text_projection(pooled))

    return model, ImageTower().eval(), TextTower().eval()


def _preprocessing(clip_dir: str) -> dict[str, Any]:
    """CLIP's preprocessing constants from the checkpoint's preprocessor_config.json."""
    path = os.path.join(clip_dir, "preprocessor_config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{clip_dir} has no preprocessor_config.json: pass the checkpoint directory as "
                                "Hugging Face saves it (config.json, weights, tokenizer and preprocessor files)")
    with open(path) as handle:
        config = json.load(handle)
    size, crop = config.get("size", 224), config.get("crop_size", 224)
    shortest = size["shortest_edge"] if isinstance(size, dict) else int(size)
    crop_height, crop_width = (crop["height"], crop["width"]) if isinstance(crop, dict) else (int(crop), int(crop))
    resample = {2: "bilinear", 3: "bicubic"}.get(config.get("resample", 3))
    if resample is None or not config.get("do_resize", True) or not config.get("do_center_crop", True):
        raise ValueError(f"{path}: only CLIP's resize (bicubic or bilinear) + centre crop preprocessing is supported")
    return {"shortest_edge": int(shortest), "crop_height": int(crop_height), "crop_width": int(crop_width),
            "resample": resample, "rescale_factor": float(config.get("rescale_factor", 1 / 255)),
            "mean": [float(x) for x in config["image_mean"]], "std": [float(x) for x in config["image_std"]]}


def _export(module, inputs: tuple, path: str, input_names: list[str], dynamic: dict[str, dict[int, str]]) -> None:
    torch = _torch()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter: dependable on these models, no onnxscript needed. Its tracer warnings
        # are about branches on shapes that CLIP takes the same way for every input of the right size.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, path, input_names=input_names, output_names=["output"],
                          dynamic_axes={**dynamic, "output": {0: "batch"}}, opset_version=OPSET, dynamo=False)


def export_models(clip_dir: str, output: str, *, aesthetic: str | None = None, nsfw: str | None = None,
                  sources: dict[str, str] | None = None, fp16: bool = False) -> dict[str, Any]:
    """Export the CLIP towers (and the heads given) from clip_dir into output (local or any Beam
    filesystem); the manifest written. Returns the manifest.

    fp16: the two CLIP towers in float16 (for GPUs: half the memory, tensor cores; ONNX Runtime's CPU
    provider runs them too, slowly). The heads stay float32: they are small and take the embeddings
    as float32."""
    torch = _torch()
    from transformers import AutoTokenizer

    model, image_tower, text_tower = _clip_towers(clip_dir)
    dtype = torch.float16 if fp16 else torch.float32
    image_tower, text_tower = image_tower.to(dtype), text_tower.to(dtype)
    preprocessing = _preprocessing(clip_dir)
    embedding_dim = int(model.config.projection_dim)
    tokenizer = AutoTokenizer.from_pretrained(clip_dir)
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ValueError(f"{clip_dir}: its tokenizer has no fast (tokenizers) form to save as tokenizer.json")
    context_length = int(model.config.text_config.max_position_embeddings)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    with tempfile.TemporaryDirectory(prefix="beam-curator-export-") as work:
        files: dict[str, str] = {}
        pixels = torch.zeros(2, 3, preprocessing["crop_height"], preprocessing["crop_width"], dtype=dtype)
        files["image_encoder"] = "image_encoder.onnx"
        _export(image_tower, (pixels,), os.path.join(work, files["image_encoder"]), ["pixel_values"],
                {"pixel_values": {0: "batch"}})
        tokens = tokenizer(["a photo", "a longer caption of a photo"], padding=True, return_tensors="pt")
        files["text_encoder"] = "text_encoder.onnx"
        _export(text_tower, (tokens["input_ids"], tokens["attention_mask"]), os.path.join(work, files["text_encoder"]),
                ["input_ids", "attention_mask"], {"input_ids": {0: "batch", 1: "tokens"},
                                                  "attention_mask": {0: "batch", 1: "tokens"}})
        files["tokenizer"] = "tokenizer.json"
        tokenizer.backend_tokenizer.save(os.path.join(work, files["tokenizer"]))
        embeddings = torch.nn.functional.normalize(torch.randn(2, embedding_dim), dim=-1)
        for role, path, build in (("aesthetic", aesthetic, _aesthetic_head), ("nsfw", nsfw, _nsfw_head)):
            if path:
                files[role] = f"{role}_head.onnx"
                _export(build(path, embedding_dim).eval(), (embeddings,), os.path.join(work, files[role]),
                        ["embedding"], {"embedding": {0: "batch"}})
        manifest = {
            "format": MANIFEST_FORMAT,
            "embedding_dim": embedding_dim,
            "dtype": "float16" if fp16 else "float32",  # of the CLIP towers
            "preprocessing": preprocessing,
            "text": {"context_length": context_length, "pad_token_id": int(pad_token_id)},
            "files": {role: {"path": name, "sha256": sha256_of_file(os.path.join(work, name)),
                             "bytes": os.path.getsize(os.path.join(work, name))} for role, name in files.items()},
            "sources": sources or {"clip": os.path.abspath(clip_dir), **({"aesthetic": aesthetic} if aesthetic else {}),
                                   **({"nsfw": nsfw} if nsfw else {})},
            "opset": OPSET,
            "created_by": f"beam-curator {__version__}",
        }
        for name in files.values():  # the models first, the manifest last: a manifest names only whole files
            with open(os.path.join(work, name), "rb") as source, storage.create(storage.join(output, name)) as target:
                shutil.copyfileobj(source, target, 8 << 20)
        storage.write_atomically(storage.join(output, MANIFEST_FILE), json.dumps(manifest, indent=2).encode())
    _LOG.info("exported %s to %s", ", ".join(files), output)
    return manifest


def download_from_hub(directory: str) -> dict[str, str]:
    """NeMo Curator's checkpoints (HUB_CHECKPOINTS) downloaded into directory: {"clip": HF_DIR,
    "aesthetic": FILE, "nsfw": FILE}. Needs internet and huggingface_hub."""
    import io
    import urllib.request
    import zipfile

    from huggingface_hub import snapshot_download

    clip_dir = snapshot_download(HUB_CHECKPOINTS["clip"], local_dir=os.path.join(directory, "clip"),
                                 allow_patterns=["*.json", "*.txt", "*.safetensors"])
    aesthetic_dir = snapshot_download(HUB_CHECKPOINTS["aesthetic"], local_dir=os.path.join(directory, "aesthetic"))
    weights = sorted(name for name in os.listdir(aesthetic_dir) if name.endswith((".safetensors", ".pth", ".pt")))
    if not weights:
        raise FileNotFoundError(f"{HUB_CHECKPOINTS['aesthetic']} holds no .safetensors or .pth file")
    nsfw_dir = os.path.join(directory, "nsfw")
    with urllib.request.urlopen(HUB_CHECKPOINTS["nsfw"], timeout=120) as response:
        zipfile.ZipFile(io.BytesIO(response.read())).extractall(nsfw_dir)
    nsfw_weights = sorted(os.path.join(root, name) for root, _, names in os.walk(nsfw_dir) for name in names
                          if name.endswith((".pth", ".safetensors")))
    if not nsfw_weights:
        raise FileNotFoundError(f"{HUB_CHECKPOINTS['nsfw']} holds no .pth file (it may hold the Keras model only)")
    return {"clip": clip_dir, "aesthetic": os.path.join(aesthetic_dir, weights[0]), "nsfw": nsfw_weights[0]}
