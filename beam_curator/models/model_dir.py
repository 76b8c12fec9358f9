"""MODEL_DIR: the ONNX models `beam-curator export-models` writes, and how a worker gets a checked copy.

MODEL_DIR holds one file per model role and a manifest, `beam_curator_models.json`:

    {"format": 1, "embedding_dim": 768,
     "preprocessing": {"shortest_edge": 224, "crop_height": 224, "crop_width": 224, "resample": "bicubic",
                       "rescale_factor": 0.00392156862745098, "mean": [...], "std": [...]},
     "text": {"context_length": 77},
     "files": {"image_encoder": {"path": "image_encoder.onnx", "sha256": "...", "bytes": 351234567}, ...},
     "sources": {...}, "created_by": "beam-curator 0.1.0"}

Roles: image_encoder (pixels -> L2-normalised embedding), text_encoder and tokenizer (caption ->
L2-normalised embedding), aesthetic and nsfw (embedding -> score). The runtime reads nothing else:
no torch, no pickle, no hub. MODEL_DIR may be local or any Beam filesystem (gs://, s3://); a remote one
is copied once per worker machine into a local cache, and every file is checked against the manifest's
sha256 before a model is built from it. No Beam pipeline code here: files go through beam_curator.storage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from beam_curator import storage

__all__ = ["CACHE_ENV", "MANIFEST_FILE", "ROLES", "ModelManifest", "fetch_model_files", "read_manifest", "sha256_of_file"]

MANIFEST_FILE = "beam_curator_models.json"
MANIFEST_FORMAT = 1
ROLES = ("image_encoder", "text_encoder", "tokenizer", "aesthetic", "nsfw")
CACHE_ENV = "BEAM_CURATOR_MODEL_CACHE"  # where remote MODEL_DIRs are copied (default ~/.cache/beam_curator/models)
_CHUNK = 8 << 20
_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelManifest:
    """A MODEL_DIR's manifest, checked. files: role -> {"path", "sha256", "bytes"}."""

    model_dir: str
    embedding_dim: int
    preprocessing: dict[str, Any]
    text: dict[str, Any]
    files: dict[str, dict[str, Any]]
    raw: bytes  # the manifest as stored: its digest names the local cache
    dtype: str = "float32"  # of the CLIP towers' inputs and weights ("float16" with export-models --fp16)

    def require(self, role: str, *, wanted_by: str) -> None:
        """ValueError naming the export-models option that adds `role`, when the manifest lacks it."""
        if role not in self.files:
            option = {"aesthetic": "--aesthetic FILE", "nsfw": "--nsfw FILE"}.get(role, "--clip HF_DIR")
            raise ValueError(f"{wanted_by} needs the {role} model, which {self.model_dir} does not have; export it "
                             f"with `beam-curator export-models {option} ...`")


def read_manifest(model_dir: str) -> ModelManifest:
    """The manifest of model_dir (local, gs://, s3://). Reads one small file; loads no model."""
    if not isinstance(model_dir, str) or not model_dir:
        raise ValueError(f"model_dir must be the directory `beam-curator export-models` wrote, got {model_dir!r}")
    path = storage.join(model_dir, MANIFEST_FILE)
    try:
        with storage.open_read(path) as handle:
            raw = handle.read()
    except (FileNotFoundError, OSError) as error:
        raise FileNotFoundError(f"{model_dir} has no {MANIFEST_FILE}: point model_dir at a directory written by "
                                f"`beam-curator export-models` ({error})") from error
    try:
        manifest = json.loads(raw)
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, this version reads format {MANIFEST_FORMAT}")
        files = manifest["files"]
        for role, entry in files.items():
            if role not in ROLES or not {"path", "sha256", "bytes"} <= set(entry):
                raise ValueError(f"bad entry for {role!r}: {entry!r}")
        return ModelManifest(model_dir=model_dir.rstrip("/"), embedding_dim=int(manifest["embedding_dim"]),
                             preprocessing=dict(manifest.get("preprocessing") or {}),
                             text=dict(manifest.get("text") or {}), files=dict(files), raw=raw,
                             dtype=str(manifest.get("dtype", "float32")))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} is not a manifest this version of beam-curator reads: {error}") from error


_FETCH_LOCK = threading.Lock()
# (model_dir, sha256) -> (local path, its size and mtime when checked): checked once per process while
# the file stays as it was.
_CHECKED: dict[tuple[str, str], tuple[str, tuple[int, int]]] = {}


def fetch_model_files(manifest: ModelManifest, roles: tuple[str, ...]) -> dict[str, str]:
    """role -> a local path of that file, its sha256 checked against the manifest. A remote MODEL_DIR
    is copied into the local cache first; a cached copy that still matches is reused, so a machine
    copies each file once whatever number of worker processes it runs."""
    paths = {}
    with _FETCH_LOCK:  # the DoFn threads of a process: one copies, the others wait and reuse
        for role in roles:
            manifest.require(role, wanted_by="this stage")
            entry = manifest.files[role]
            key = (manifest.model_dir, entry["sha256"])
            known = _CHECKED.get(key)
            if known is None or _stat(known[0]) != known[1]:
                path = _fetch_one(manifest, entry)
                known = _CHECKED[key] = (path, _stat(path))
            paths[role] = known[0]
    return paths


def _stat(path: str) -> tuple[int, int]:
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return (-1, -1)
    return (status.st_size, status.st_mtime_ns)


def _fetch_one(manifest: ModelManifest, entry: dict[str, Any]) -> str:
    source = storage.join(manifest.model_dir, entry["path"])
    if "://" not in manifest.model_dir:  # local: use it where it is
        _check(source, sha256_of_file(source), entry)
        return source
    cache = os.path.join(_cache_root(), hashlib.sha256(manifest.raw).hexdigest()[:16])
    local = os.path.join(cache, entry["path"])
    if os.path.exists(local) and os.path.getsize(local) == entry["bytes"] and sha256_of_file(local) == entry["sha256"]:
        return local
    os.makedirs(os.path.dirname(local), exist_ok=True)
    # Copied to a name of its own and renamed: two processes copying at once both end with a whole file.
    temporary = f"{local}.tmp-{uuid.uuid4().hex[:12]}"
    digest = hashlib.sha256()
    try:
        with storage.open_read(source) as reader, open(temporary, "wb") as writer:
            while chunk := reader.read(_CHUNK):
                digest.update(chunk)
                writer.write(chunk)
        _check(source, digest.hexdigest(), entry)
        os.replace(temporary, local)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    _LOG.info("copied %s to %s (%d bytes, sha256 checked)", source, local, entry["bytes"])
    return local


def _check(source: str, sha256: str, entry: dict[str, Any]) -> None:
    if sha256 != entry["sha256"]:
        raise ValueError(f"{source} does not match its manifest (sha256 {sha256[:12]}..., expected "
                         f"{entry['sha256'][:12]}...): the file changed since `beam-curator export-models` wrote it, "
                         "or the copy is damaged; export the models again")


def _cache_root() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "beam_curator", "models")


def sha256_of_file(path: str) -> str:
    """The hex sha256 of a local file (what the manifest records)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
