"""Sample identity: what an image's `image_id` is, so that every step can name the same image.

An image gets its id once, when it is first curated from a source shard:

    image_id = sha256("{shard}\\n{key}\\n{occurrence}\\n{content}") as hex, first 32 digits (128 bits)

- shard: the canonical URI of the source shard: an absolute local path with symlinks resolved, or the
  URL as given (`gs://...`, `s3://...`). So `in/`, `/data/in/`, a glob, or the shard listed among other
  inputs all give the same id, and img2dataset's `00000.tar` of two crawls give different ones.
- key: the sample's WebDataset key in that shard; occurrence: how many earlier samples of the shard
  had the same key (0 but for a shard that repeats a key).
- content: the sha256 of the image member's bytes, so that two different files that happen to share a
  path (on two machines, say) still give different ids.

Curated output carries the id in its parquet, and every later step keeps it: a curated or pruned output
given to `curate` or `prune` as input is read with the ids of its parquet, never new ones. A removal
list made at any step therefore names the same images at any later step.
"""

from __future__ import annotations

import hashlib
import os

__all__ = ["ID_HEX_DIGITS", "canonical_path", "image_id"]

ID_HEX_DIGITS = 32  # 128 bits: a billion images collide with probability ~1e-21


def canonical_path(path: str) -> str:
    """The form of a shard's path that identity and output names use: local paths absolute with
    symlinks resolved (whatever the working directory and spelling), URLs unchanged."""
    return path if "://" in path else os.path.realpath(path)


def image_id(shard: str, key: str, occurrence: int, content_sha256: str) -> str:
    """The id of the sample `key` (its `occurrence`-th in the shard, from 0) of the canonical shard
    URI `shard`, whose image bytes have the sha256 `content_sha256` (hex)."""
    payload = f"{shard}\n{key}\n{occurrence}\n{content_sha256}"
    return hashlib.sha256(payload.encode()).hexdigest()[:ID_HEX_DIGITS]
