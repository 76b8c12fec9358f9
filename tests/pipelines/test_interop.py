"""Read one run's output with the webdataset library, DALI (with and without index files), Hugging Face
datasets and duckdb, and compare keys, captions and bytes with the input."""

import glob
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.support.helpers import Sample, curate, encode, make_image, make_samples, write_tar

# Keys other readers would misread: a dot in a directory, a space, a name too long for USTAR.
AWKWARD_KEYS = ["dir.v1/image", "has space", "k" * 120]


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("interop")
    directory = root / "input"
    directory.mkdir()
    shards = {}
    for shard in range(2):
        samples = make_samples(shard, 7)
        if shard == 0:
            samples += [
                Sample(key, {"jpg": encode(make_image(900 + i)), "txt": f"awkward {i}".encode(),
                             "json": b"{}", "cls": b"1"})
                for i, key in enumerate(AWKWARD_KEYS)
            ]
        path = write_tar(str(directory / f"shard-{shard}.tar"), samples, tarfile.GNU_FORMAT)  # long names
        shards[path] = samples
    out = str(root / "out")
    curate(str(directory), out, reader={"dali_batch_size": 4}, writer={"images_per_tar": 4, "write_index": True})
    rows = pq.read_table(sorted(glob.glob(f"{out}/*.parquet"))).to_pylist()
    original = {s.key: s for samples in shards.values() for s in samples}
    # What each output key must hold: the input sample it came from.
    expected = {row["key"]: original[row["original_key"]] for row in rows}
    return out, expected, rows


def test_every_input_sample_is_in_the_output_once(curated):
    _out, expected, rows = curated
    assert len(rows) == len(expected) == 17
    assert {row["original_key"] for row in rows} >= set(AWKWARD_KEYS)
    mapped = [row["key"] for row in rows if row["original_key"] in AWKWARD_KEYS]
    assert all(key not in AWKWARD_KEYS and all(c.isalnum() or c in "_/-" for c in key) for key in mapped)


def test_webdataset_library(curated):
    import webdataset as wds

    out, expected, _ = curated
    read = {s["__key__"]: s for s in wds.WebDataset(sorted(glob.glob(f"{out}/*.tar")), shardshuffle=False)}
    assert read.keys() == expected.keys()
    for key, sample in expected.items():
        assert read[key]["jpg"] == sample.members["jpg"]  # byte-identical: no stage changed the pixels
        assert read[key]["txt"].decode() == sample.caption
        assert json.loads(read[key]["json"]) == json.loads(sample.members["json"])
        assert read[key]["cls"] == sample.members["cls"]


@pytest.mark.parametrize("with_index", [True, False], ids=["index", "no-index"])
def test_dali_webdataset_reader(curated, with_index):
    from nvidia.dali import fn, pipeline_def, types

    out, expected, _ = curated
    tars = sorted(glob.glob(f"{out}/*.tar"))
    index_paths = [tar[:-4] + ".idx" for tar in tars] if with_index else None
    assert all(os.path.exists(path) for path in index_paths or [])

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def read_back():
        return tuple(fn.readers.webdataset(
            paths=tars, index_paths=index_paths, ext=["jpg", "txt"], missing_component_behavior="error",
            random_shuffle=False, dtypes=[types.UINT8, types.UINT8],
        ))

    pipe = read_back()
    pipe.build()
    total = sum(meta["epoch_size"] for meta in pipe.reader_meta().values())
    assert total == len(expected)
    seen = {}
    for _ in range(total):
        jpg, txt = pipe.run()
        member = jpg[0].source_info().rsplit(":", 1)[1]  # "{tar}:{offset}:{member name}"
        seen[member[: -len(".jpg")]] = (np.array(jpg[0]).tobytes(), np.array(txt[0]).tobytes().decode())
    assert seen == {key: (s.members["jpg"], s.caption) for key, s in expected.items()}


def test_hugging_face_datasets_webdataset_loader(curated, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    out, expected, _ = curated
    loaded = datasets.load_dataset(
        "webdataset", data_files={"train": sorted(glob.glob(f"{out}/*.tar"))}, split="train",
        cache_dir=str(tmp_path / "hf-cache"),
    ).cast_column("jpg", datasets.Image(decode=False))
    assert len(loaded) == len(expected)
    for row in loaded:
        sample = expected[row["__key__"]]
        assert row["jpg"]["bytes"] == sample.members["jpg"]
        assert row["txt"] == sample.caption
        assert row["cls"] == int(sample.members["cls"])


def test_duckdb_reads_the_parquet(curated):
    import duckdb

    out, expected, _ = curated
    rows = duckdb.sql(
        f"SELECT key, original_key, caption, tar_file, member_name, width, embedding "
        f"FROM read_parquet('{out}/*.parquet') ORDER BY key"
    ).fetchall()
    assert [row[0] for row in rows] == sorted(expected)
    for key, original_key, caption, tar_file, member_name, width, embedding in rows:
        assert caption == expected[key].caption and original_key == expected[key].key
        assert member_name == f"{key}.jpg" and os.path.exists(os.path.join(out, tar_file))
        assert width > 0 and embedding is None


def test_index_files_sit_beside_their_tars(curated):
    out, _, _ = curated
    tars = sorted(glob.glob(f"{out}/*.tar"))
    assert [path[:-4] for path in sorted(glob.glob(f"{out}/*.idx"))] == [path[:-4] for path in tars]
    for tar in tars:
        with tarfile.open(tar) as archive:
            count = len({m.name.split(".")[0] for m in archive.getmembers()})
        assert Path(tar[:-4] + ".idx").read_text().splitlines(keepends=True)[0] == f"v1.2 {count}\n"

