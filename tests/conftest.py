"""pytest set-up: the gpu marker, the make_dataset fixture, and tiny exported models."""

from dataclasses import dataclass

import pytest

from tests.support.helpers import build_dataset


def pytest_collection_modifyitems(config, items):
    from beam_curator.formats.decoding import cuda_device_count

    if cuda_device_count() > 0:
        return
    skip = pytest.mark.skip(reason="no CUDA device on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

@pytest.fixture
def make_dataset(tmp_path):
    """make_dataset(shards=2, per_shard=12, name="input", ...) -> Dataset of tars in tmp_path/name."""

    def build(shards: int = 2, per_shard: int = 12, name: str = "input", **options):
        return build_dataset(tmp_path / name, shards, per_shard, **options)

    return build


@pytest.fixture(scope="session")
def exported_models(tmp_path_factory):
    """A tiny random CLIP (Hugging Face format) and the two heads at their real sizes, exported with
    `beam-curator export-models`: (model_dir, clip_dir, head paths)."""
    from beam_curator import cli
    from beam_curator.models.tiny import make_clip_checkpoint, make_heads

    root = tmp_path_factory.mktemp("models")
    clip_dir = make_clip_checkpoint(str(root / "clip"))
    heads = make_heads(str(root / "heads"))
    model_dir = str(root / "exported")
    code = cli.main(["export-models", "--clip", clip_dir, "--aesthetic", heads["aesthetic"], "--nsfw", heads["nsfw"],
                     "--output", model_dir])
    assert code == 0
    return ExportedModels(model_dir, clip_dir, heads)


@dataclass(frozen=True)
class ExportedModels:
    model_dir: str  # what export-models wrote
    clip_dir: str  # the Hugging Face checkpoint it read
    heads: dict  # {"aesthetic": .safetensors, "nsfw": .pth}
