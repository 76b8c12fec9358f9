"""Randomly initialised models of the real architectures, saved in the real formats: to try the model
path without downloading weights (`beam-curator export-models --tiny --output MODEL_DIR`), and for tests.
Their scores and embeddings mean nothing; the code that loads and runs them is the real one.

make_clip_checkpoint writes a Hugging Face CLIP checkpoint directory (config.json, model.safetensors,
tokenizer files, preprocessor_config.json) as `CLIPModel.save_pretrained` and friends write it; the
tokenizer is CLIP's BPE over a small vocabulary (the 512 byte symbols, a few merges, the two specials).
make_heads writes the two LAION heads at their real sizes: aesthetic as safetensors, nsfw as a `.pth`
state dict, with the checkpoints' key names. export_tiny_models does both and exports them with
export-models' own code. Needs torch and transformers (the `[export]` extra).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

__all__ = ["TINY", "VIT_B_32", "VIT_L_14", "export_tiny_models", "make_clip_checkpoint", "make_heads"]

TINY = {"vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       image_size=32, patch_size=8),
        "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        "projection_dim": 768, "image_size": 32}
# ViT-B/32's sizes (the real compute of openai/clip-vit-base-patch32), random weights.
VIT_B_32 = {"vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=32),
            "text": dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
            "projection_dim": 512, "image_size": 224}
# ViT-L/14's (openai/clip-vit-large-patch14, what NeMo Curator uses), for the GPU benchmark.
VIT_L_14 = {"vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14),
            "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
            "projection_dim": 768, "image_size": 224}
_MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("c", "a"), ("ca", "t</w>"), ("o", "f</w>"),
           ("p", "h"), ("ph", "o"), ("pho", "t"), ("phot", "o</w>")]


def _byte_symbols() -> list[str]:
    """The 256 printable symbols byte-level BPE uses for bytes (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            symbols.append(256 + extra)
            extra += 1
    return [chr(code) for code in symbols]


def make_clip_checkpoint(directory: str, *, sizes: dict = TINY, seed: int = 0) -> str:
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    os.makedirs(directory, exist_ok=True)
    vocab: dict[str, int] = {}
    for symbol in _byte_symbols():
        vocab[symbol] = len(vocab)
    for symbol in _byte_symbols():
        vocab[symbol + "</w>"] = len(vocab)
    for left, right in _MERGES:
        vocab[left + right] = len(vocab)
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    tokenizer = CLIPTokenizer(vocab=vocab, merges=list(_MERGES))  # type: ignore[arg-type]  # pairs, as it reads them
    tokenizer.save_pretrained(directory)

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={**sizes["text"], "vocab_size": len(vocab), "max_position_embeddings": 77,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config=sizes["vision"], projection_dim=sizes["projection_dim"])
    CLIPModel(config).eval().save_pretrained(directory)
    _image_processor(sizes["image_size"]).save_pretrained(directory)
    return directory


def _processor_class():
    """Hugging Face's CLIP image processor, the Pillow one (the reference path)."""
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # transformers 4
        from transformers import CLIPImageProcessor as Processor
    return Processor


def _image_processor(size: int):
    return _processor_class()(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def make_heads(directory: str, *, embedding_dim: int = 768, seed: int = 0) -> dict[str, str]:
    """{"aesthetic": path.safetensors, "nsfw": path.pth}, random weights at the real sizes."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)

    def linear(n_in: int, n_out: int) -> tuple:
        bound = 1 / np.sqrt(n_in)
        return ((torch.rand(n_out, n_in, generator=generator) * 2 - 1) * bound,
                (torch.rand(n_out, generator=generator) * 2 - 1) * bound)

    os.makedirs(directory, exist_ok=True)
    aesthetic = {}
    sizes = [embedding_dim, 1024, 128, 64, 16, 1]
    for index, n_in, n_out in zip((0, 2, 4, 6, 7), sizes, sizes[1:]):
        aesthetic[f"layers.{index}.weight"], aesthetic[f"layers.{index}.bias"] = linear(n_in, n_out)
    aesthetic["layers.7.bias"] += 5.0  # a realistic centre: LAION's scores sit around 5
    nsfw = {"norm.mean": torch.randn(embedding_dim, generator=generator) * 0.01,
            "norm.variance": torch.rand(embedding_dim, generator=generator) * 0.002 + 0.0005}
    sizes = [embedding_dim, 64, 512, 256, 1]
    for index, n_in, n_out in zip((1, 2, 3, 4), sizes, sizes[1:]):
        nsfw[f"linear_{index}.weight"], nsfw[f"linear_{index}.bias"] = linear(n_in, n_out)
    paths = {"aesthetic": os.path.join(directory, "aesthetic.safetensors"), "nsfw": os.path.join(directory, "nsfw.pth")}
    save_file(aesthetic, paths["aesthetic"])
    torch.save(nsfw, paths["nsfw"])
    return paths




def export_tiny_models(output: str, *, sizes: dict = TINY, seed: int = 0, fp16: bool = False) -> dict:
    """A MODEL_DIR at output: a CLIP of `sizes` (tiny by default) and the two heads, random weights,
    exported through beam_curator.models.export; its manifest."""
    from beam_curator.models.export import export_models

    with tempfile.TemporaryDirectory(prefix="beam_curator-tiny-") as scratch:
        clip = make_clip_checkpoint(os.path.join(scratch, "clip"), sizes=sizes, seed=seed)
        heads = make_heads(os.path.join(scratch, "heads"), embedding_dim=sizes["projection_dim"], seed=seed)
        return export_models(clip, output, aesthetic=heads["aesthetic"], nsfw=heads["nsfw"], fp16=fp16)
