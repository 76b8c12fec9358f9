"""pytest set-up: the gpu marker, and the make_dataset fixture."""

import pytest

from tests.helpers import build_dataset


def pytest_collection_modifyitems(config, items):
    from beam_curator.decoding import cuda_device_count

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
