"""Property test: mutated shards never crash the reader, and every sample read is accounted for."""

import io
import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beam_curator.formats.webdataset import RawSample, iter_samples
from tests.pipelines.test_broken_input import read
from tests.support.helpers import make_samples, write_tar

_SHARD = None


def _valid_shard(directory) -> bytes:
    global _SHARD
    if _SHARD is None:
        samples = make_samples(7, 6)
        _SHARD = Path(write_tar(os.path.join(directory, "valid.tar"), samples)).read_bytes()
    return _SHARD


mutations = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 255)),
        st.tuples(st.just("cut"), st.floats(0, 1), st.just(0)),
        st.tuples(st.just("insert"), st.floats(0, 1), st.integers(1, 700)),
    ),
    min_size=1,
    max_size=4,
)


def _mutate(data: bytes, steps) -> bytes:
    data = bytearray(data)
    for kind, where, amount in steps:
        position = int(where * max(len(data) - 1, 0))
        if kind == "flip" and data:
            data[position] ^= amount
        elif kind == "cut":
            del data[position:]
        elif kind == "insert":
            data[position:position] = os.urandom(amount)
    return bytes(data)


def _samples_parsed(data: bytes) -> int:
    """How many samples the tar parser yields before any damage stops it."""
    count = 0
    try:
        for item in iter_samples(io.BytesIO(data)):
            count += isinstance(item, RawSample)
    except Exception:
        pass
    return count


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=mutations)
def test_mutated_shards_are_accounted_for(tmp_path, steps):
    data = _mutate(_valid_shard(str(tmp_path)), steps)
    path = tmp_path / "mutated.tar"
    path.write_bytes(data)
    images, failures = read([path])  # must not raise
    sample_failures = [f for f in failures if f.scope == "sample"]
    assert len(images) + len(sample_failures) == _samples_parsed(data)
    assert sum(f.scope == "shard" for f in failures) <= 1
    assert all(obj.image_data is not None and obj.image_data.ndim == 3 for obj in images)
