"""Sample identity and the output's owner, on planted corpora: every workflow keeps exactly the images it
should, checked by the sha256 of the image bytes that survive, never by counts alone."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from beam_curator import cli
from beam_curator.transforms import FilePartitioningStage, ImageReaderStage
from tests.support.helpers import Sample, encode, make_image, reader_fn, run_in_bundle, write_tar
from tests.support.output import image_digests, rows

KEYS = [f"k{index:02d}" for index in range(10)]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _images(seed: int) -> list[bytes]:
    return [encode(make_image(seed * 100 + index, 80, 56)) for index in range(len(KEYS))]


def _shard(path, images: list[bytes]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return write_tar(str(path), [Sample(key, {"jpg": data, "txt": key.encode()}) for key, data in zip(KEYS, images)])


def _main(*argv) -> int:
    return cli.main([*argv, "--no-progress"] if argv[0] == "curate" else list(argv))


@pytest.fixture
def crawls(tmp_path):
    """img2dataset names every crawl's shards alike: crawlC = P, Q; crawlD = R, then P again (byte copies)."""
    P, Q, R = _images(1), _images(2), _images(3)
    _shard(tmp_path / "crawlC" / "00000.tar", P)
    _shard(tmp_path / "crawlC" / "00001.tar", Q)
    _shard(tmp_path / "crawlD" / "00000.tar", R)
    _shard(tmp_path / "crawlD" / "00001.tar", P)
    for crawl in ("C", "D"):
        assert _main("curate", str(tmp_path / f"crawl{crawl}"), "--output", str(tmp_path / f"c{crawl}")) == 0
    return tmp_path, {_sha(image) for image in P + Q + R}


def test_two_crawls_with_the_same_names_lose_no_unique_image(crawls, capsys):
    root, unique = crawls
    ids = [row["image_id"] for out in ("cC", "cD") for row in rows(root / out)]
    assert len(ids) == len(set(ids)) == 40  # same shard names and keys, different images: different ids
    assert _main("dedup", str(root / "cC"), str(root / "cD"), "--method", "exact", "--output", str(root / "R")) == 0
    removal = pq.read_table(str(root / "R")).to_pylist()
    assert len(removal) == 10 and {row["method"] for row in removal} == {"exact"}
    # prune: every unique image exactly once
    assert _main("prune", str(root / "cC"), str(root / "cD"), "--remove-duplicates", str(root / "R"),
                 "--output", str(root / "P2")) == 0
    assert image_digests(root / "P2") == sorted(unique)
    filtered = pq.read_table(glob.glob(f"{root}/P2/_filtered/*.parquet")).to_pylist()
    kept_of = {row["id"]: row["kept_id"] for row in removal}
    assert {(row["image_id"], row["kept_id"], row["method"]) for row in filtered} == {
        (removed, kept, "exact") for removed, kept in kept_of.items()}
    # curate the raw crawls again with the list: the same images survive
    assert _main("curate", str(root / "crawlC"), str(root / "crawlD"), "--remove-duplicates", str(root / "R"),
                 "--output", str(root / "again")) == 0
    assert image_digests(root / "again") == sorted(unique)
    assert "matched 10 of 10" in capsys.readouterr().out


def test_a_removal_list_made_after_curate_a_matches_after_curate_a_b(tmp_path):
    P, B = _images(4), _images(5)
    _shard(tmp_path / "ds" / "shard-00000.tar", P)
    _shard(tmp_path / "ds" / "shard-00001.tar", P[:5] + _images(6)[5:])  # five byte copies of ds/shard-00000's
    _shard(tmp_path / "more" / "shard-00002.tar", B)
    assert _main("curate", str(tmp_path / "ds"), "--output", str(tmp_path / "A")) == 0
    assert _main("dedup", str(tmp_path / "A"), "--output", str(tmp_path / "R")) == 0
    listed = {row["id"] for row in pq.read_table(str(tmp_path / "R")).to_pylist()}
    assert len(listed) == 5
    assert _main("curate", str(tmp_path / "ds"), str(tmp_path / "more"), "--remove-duplicates", str(tmp_path / "R"),
                 "--output", str(tmp_path / "AB")) == 0
    ids_a = {row["image_id"] for row in rows(tmp_path / "A")}
    ids_ab = {row["image_id"] for row in rows(tmp_path / "AB")}
    assert ids_ab & listed == set() and ids_a - listed <= ids_ab  # the same images, by the same ids
    expected = sorted({_sha(image) for image in P + _images(6)[5:] + B})
    assert image_digests(tmp_path / "AB") == expected
    stats = json.loads((tmp_path / "AB" / "_stats.json").read_text())
    assert stats["filtered_by_stage"] == {"image_dedup_filter": 5}


def test_an_output_inside_its_input_is_never_read_back(tmp_path, caplog):
    data = tmp_path / "data"
    images = _images(7) + _images(8)
    _shard(data / "a.tar", images[:10])
    _shard(data / "sub" / "b.tar", images[10:])
    expected = sorted(_sha(image) for image in images)
    for output, extra in (("curated", ()), ("curated2", ()), ("curated", ("--overwrite",))):
        assert _main("curate", str(data), "--output", str(data / output), *extra) == 0
        assert image_digests(data / output) == expected  # every image once: no earlier output read
        stats = json.loads((data / output / "_stats.json").read_text())
        assert (stats["samples_read"], stats["shards_read"], stats["shards_failed"]) == (20, 2, 0)
    listing = FilePartitioningStage(str(data), exclude=[str(data / "curated")]).partitions()
    assert [os.path.basename(path) for task in listing for path in task.data] == ["a.tar", "b.tar"]


def test_an_output_given_as_input_keeps_its_ids(tmp_path):
    _shard(tmp_path / "raw" / "x.tar", _images(9))
    assert _main("curate", str(tmp_path / "raw"), "--output", str(tmp_path / "one")) == 0
    assert _main("curate", str(tmp_path / "one"), "--output", str(tmp_path / "two"), "--min-size", "1") == 0
    first, second = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert [(r["image_id"], r["original_path"], r["original_key"], r["sha256"]) for r in first] == [
        (r["image_id"], r["original_path"], r["original_key"], r["sha256"]) for r in second]
    assert image_digests(tmp_path / "one") == image_digests(tmp_path / "two")


def test_an_input_inside_the_output_is_refused(tmp_path, capsys):
    _shard(tmp_path / "out" / "in" / "x.tar", _images(10))
    assert _main("curate", str(tmp_path / "out" / "in"), "--output", str(tmp_path / "out")) == 2
    assert "inside the output directory" in capsys.readouterr().err


def test_ids_do_not_depend_on_how_the_inputs_are_spelled(tmp_path, monkeypatch):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    source = tmp_path / "source"
    shards = {f"s{index}.tar": _images(20 + index)[:3] for index in range(4)}
    for name, images in shards.items():
        _shard(source / name, images)
    stage = ImageReaderStage(dali_batch_size=8, num_threads=1)  # one decoder for every example

    def ids_of(patterns) -> dict[str, str]:
        tasks = FilePartitioningStage(patterns).partitions()
        batches = run_in_bundle(reader_fn(stage), tasks)
        return {obj.sha256: obj.image_id for batch in batches for obj in batch.data}

    monkeypatch.chdir(tmp_path)
    layout_root = tmp_path / "layouts"
    expected = ids_of([str(source)])
    assert len(expected) == 12

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(groups=st.lists(st.integers(0, 2), min_size=4, max_size=4),
           spellings=st.lists(st.sampled_from(["absolute", "relative", "slash", "glob", "files"]), min_size=3,
                              max_size=3),
           order=st.permutations(range(3)))
    def check(groups, spellings, order):
        shutil.rmtree(layout_root, ignore_errors=True)
        for (name, _), group in zip(sorted(shards.items()), groups):
            os.makedirs(layout_root / f"d{group}", exist_ok=True)
            os.link(source / name, layout_root / f"d{group}" / name)
        patterns = []
        for group in order:
            folder = layout_root / f"d{group}"
            if not folder.exists():
                continue
            spelling = spellings[group]
            relative = os.path.relpath(folder, tmp_path)
            patterns += {"absolute": [str(folder)], "relative": [relative], "slash": [relative + "/"],
                         "glob": [str(folder / "*.tar")],
                         "files": [os.path.join(relative, name) for name in sorted(os.listdir(folder))]}[spelling]
        got = ids_of(patterns)
        # The same bytes in other files (hard links of the source's) are other samples, by the rule: their
        # ids differ from the source's, but are the same whatever the spelling of these files.
        assert set(got) == set(expected) and len(set(got.values())) == 12
        assert got == ids_of([str(layout_root)])

    check()


def _photo(size: int) -> Image.Image:
    skimage = pytest.importorskip("skimage")
    photo = Image.open(os.path.join(os.path.dirname(skimage.__file__), "data", "astronaut.png")).convert("RGB")
    return photo.resize((size, size), Image.Resampling.LANCZOS)


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def test_dedup_keeps_the_largest_copy(tmp_path, capsys):
    original = _photo(512)
    copies = {"orig": _jpeg(original, 90), "q40": _jpeg(original, 40),
              "small": _jpeg(original.resize((384, 384), Image.Resampling.LANCZOS), 90)}
    other = _jpeg(_photo(300).rotate(90), 90)
    # The original comes last in the shard, and its id is whatever it is: only the policy can keep it.
    os.makedirs(tmp_path / "in")
    write_tar(str(tmp_path / "in" / "z.tar"), [Sample(name, {"jpg": data}) for name, data in [
        ("a_q40", copies["q40"]), ("b_small", copies["small"]), ("c_other", other), ("z_orig", copies["orig"])]])
    assert _main("curate", str(tmp_path / "in"), "--output", str(tmp_path / "cur"), "--phash") == 0
    key_of = {row["image_id"]: row["original_key"] for row in rows(tmp_path / "cur")}
    for keep, kept in (("largest", "z_orig"), ("smallest-id", None)):
        out = tmp_path / f"r-{keep}"
        assert _main("dedup", str(tmp_path / "cur"), "--method", "perceptual", "--keep", keep, "--output",
                     str(out)) == 0
        removal = pq.read_table(str(out)).to_pylist()
        assert {key_of[row["id"]] for row in removal} | {key_of[row["kept_id"]] for row in removal} == {
            "a_q40", "b_small", "z_orig"}
        kept_ids = {row["kept_id"] for row in removal}
        assert len(kept_ids) == 1 and {row["keep"] for row in removal} == {keep}
        if kept:
            assert key_of[kept_ids.pop()] == kept
        else:
            assert kept_ids.pop() == min(image_id for image_id, key in key_of.items() if key != "c_other")
    assert _main("prune", str(tmp_path / "cur"), "--remove-duplicates", str(tmp_path / "r-largest"), "--output",
                 str(tmp_path / "pruned")) == 0
    assert image_digests(tmp_path / "pruned") == sorted([_sha(copies["orig"]), _sha(other)])


def _embeddings_output(directory, vectors: np.ndarray, sizes: list[tuple[int, int, int]], prefix="img") -> list[str]:
    """A curated output's parquet as dedup reads it: ids, embeddings and sizes."""
    os.makedirs(directory)
    ids = [hashlib.sha256(f"{prefix}{index}".encode()).hexdigest()[:32] for index in range(len(vectors))]
    table = pa.table({"image_id": ids, "width": [s[0] for s in sizes], "height": [s[1] for s in sizes],
                      "file_size": [s[2] for s in sizes], "original_path": [f"/src/x.tar#{i}.jpg" for i in ids],
                      "embedding": pa.array(list(vectors), type=pa.list_(pa.float32()))})
    pq.write_table(table, os.path.join(directory, "images-0000000000000000-000000.parquet"))
    return ids


def test_semantic_dedup_with_default_options_finds_near_copies_in_small_data(tmp_path, capsys):
    rng = np.random.default_rng(0)
    distinct = rng.normal(size=(30, 64)).astype(np.float32)
    distinct /= np.linalg.norm(distinct, axis=1, keepdims=True)
    copies = distinct[:5] + 0.005 * rng.normal(size=(5, 64)).astype(np.float32)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    vectors = np.concatenate([distinct, copies])
    # each copy is larger than its original: the default policy keeps the copy
    sizes = [(100, 100, 5000)] * 30 + [(200, 200, 9000)] * 5
    ids = _embeddings_output(tmp_path / "cur", vectors, sizes)
    assert _main("dedup", str(tmp_path / "cur"), "--method", "semantic", "--output", str(tmp_path / "r")) == 0
    rows = pq.read_table(str(tmp_path / "r")).to_pylist()
    assert {(row["id"], row["kept_id"]) for row in rows} == {(ids[i], ids[30 + i]) for i in range(5)}
    summary = json.loads((tmp_path / "r" / "_dedup.json").read_text())
    assert summary["n_clusters"] == 1 and summary["keep"] == "largest"
    assert "clusters: 1" in capsys.readouterr().out
    assert _main("dedup", str(tmp_path / "cur"), "--method", "semantic", "--keep", "hard", "--output",
                 str(tmp_path / "r-hard")) == 0


def test_dedup_refuses_colliding_ids_and_the_same_output_twice(crawls, capsys):
    root, _ = crawls
    assert _main("dedup", str(root / "cC"), str(root / "cC") + "/", "--output", str(root / "r1")) == 2
    assert "given twice" in capsys.readouterr().err
    shutil.copytree(root / "cC", root / "copy-of-cC")  # the same images under the same ids
    assert _main("dedup", str(root / "cC"), str(root / "copy-of-cC"), "--output", str(root / "r2")) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("beam-curator dedup: error:")]
    assert "under one id" in line and "while running" not in line
    assert not glob.glob(f"{root}/r2/duplicates-*")


def test_perceptual_dedup_without_phash_is_refused(crawls, capsys):
    root, _ = crawls
    assert _main("dedup", str(root / "cC"), "--method", "perceptual", "--output", str(root / "r")) == 2
    assert "phash" in capsys.readouterr().err and not (root / "r").exists()


def test_a_removal_list_that_matches_nothing_is_refused_before_anything_isimage_digests(crawls, tmp_path, capsys):
    root, _ = crawls
    assert _main("dedup", str(root / "cC"), str(root / "cD"), "--output", str(root / "R")) == 0
    _shard(tmp_path / "elsewhere" / "e.tar", _images(30))
    assert _main("curate", str(tmp_path / "elsewhere"), "--output", str(tmp_path / "o1"), "--remove-duplicates",
                 str(root / "R")) == 2
    assert "none of them is in this input" in capsys.readouterr().err and not (tmp_path / "o1").exists()
    assert _main("curate", str(tmp_path / "elsewhere"), "--output", str(tmp_path / "e")) == 0
    assert _main("prune", str(tmp_path / "e"), "--remove-duplicates", str(root / "R"), "--output",
                 str(tmp_path / "o2")) == 2
    assert "none of them is in this input" in capsys.readouterr().err and not (tmp_path / "o2").exists()
