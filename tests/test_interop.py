"""Read a run's output back with other readers and compare with the input."""

import glob
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.helpers import curate


@pytest.fixture
def curated(tmp_path, make_dataset):
    dataset = make_dataset(shards=2, per_shard=9)
    out = str(tmp_path / "out")
    curate(dataset.directory, out, reader={"dali_batch_size": 4}, writer={"images_per_tar": 5})
    return dataset, out


def test_webdataset_library_reads_every_sample_and_companion(curated):
    import webdataset as wds

    dataset, out = curated
    tars = sorted(glob.glob(f"{out}/*.tar"))
    read = {sample["__key__"]: sample for sample in wds.WebDataset(tars, shardshuffle=False)}
    expected = {s.key: s for s in dataset.samples}
    assert read.keys() == expected.keys()
    for key, sample in expected.items():
        got = read[key]
        assert got["jpg"] == sample.members["jpg"]  # byte-identical: no stage changed the pixels
        assert got["txt"].decode() == sample.caption
        assert json.loads(got["json"]) == json.loads(sample.members["json"])
        assert got["cls"] == sample.members["cls"]


def test_dali_webdataset_reader_reads_the_output(curated):
    from nvidia.dali import fn, pipeline_def, types

    dataset, out = curated
    tars = sorted(glob.glob(f"{out}/*.tar"))
    expected = {s.key: s for s in dataset.samples}

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def read_back():
        return tuple(fn.readers.webdataset(
            paths=tars, ext=["jpg", "txt"], missing_component_behavior="error",
            random_shuffle=False, dtypes=[types.UINT8, types.UINT8],
        ))

    pipe = read_back()
    pipe.build()
    total = sum(pipe.reader_meta()[name]["epoch_size"] for name in pipe.reader_meta())
    assert total == len(expected) == 18
    seen = {}
    for _ in range(total):
        jpg, txt = pipe.run()
        member = jpg[0].source_info().rsplit(":", 1)[1]  # "{tar}:{offset}:{member name}"
        seen[member[: -len(".jpg")]] = (np.array(jpg[0]).tobytes(), np.array(txt[0]).tobytes().decode())
    assert seen == {key: (s.members["jpg"], s.caption) for key, s in expected.items()}


def test_pyarrow_reads_the_metadata(curated):
    dataset, out = curated
    table = pq.read_table(sorted(glob.glob(f"{out}/*.parquet")))
    rows = table.to_pylist()
    assert sorted(row["key"] for row in rows) == sorted(s.key for s in dataset.samples)
    captions = {s.key: s.caption for s in dataset.samples}
    assert all(row["caption"] == captions[row["key"]] for row in rows)
    # Each row names the tar and member where its image is.
    for row in rows:
        assert row["member_name"] == f"{row['key']}.jpg" and glob.glob(f"{out}/{row['tar_file']}")
