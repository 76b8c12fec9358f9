"""Deduplication end to end: fingerprints at curate time, `beam-curator dedup` on a planted corpus of
natural photos, removal in curate, determinism across runners."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from beam_curator import cli
from tests.support.helpers import Sample, write_tar

skimage = pytest.importorskip("skimage")
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "motorcycle_left.png",
          "rocket.jpg", "retina.jpg", "ihc.png"]


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """16 distinct photos (8 of scikit-image's, each also mirrored), and for each a byte copy, a
    re-encoded copy (JPEG q60) and a resized copy (0.5x): 64 samples over 4 shards."""
    root = tmp_path_factory.mktemp("planted")
    photo_dir = os.path.join(os.path.dirname(skimage.__file__), "data")
    originals = {}
    for index, name in enumerate(PHOTOS):
        photo = Image.open(os.path.join(photo_dir, name)).convert("RGB")
        photo = photo.resize((320, int(320 * photo.height / photo.width)))
        originals[f"p{index}"] = photo
        originals[f"p{index}m"] = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    samples, copies = [], {}
    for key, photo in originals.items():
        data = _jpeg(photo)
        samples.append(Sample(key, {"jpg": data, "txt": key.encode()}))
        variants = {"byte": data, "q60": _jpeg(photo, 60),
                    "half": _jpeg(photo.resize((photo.width // 2, photo.height // 2), Image.Resampling.LANCZOS))}
        for kind, payload in variants.items():
            samples.append(Sample(f"{key}_{kind}", {"jpg": payload, "txt": key.encode()}))
            copies[f"{key}_{kind}"] = key
    rng = np.random.default_rng(0)
    order = rng.permutation(len(samples))
    inputs = root / "input"
    inputs.mkdir()
    for shard in range(4):
        write_tar(str(inputs / f"s{shard}.tar"), [samples[i] for i in order[shard::4]])
    curated = str(root / "curated")
    assert cli.main(["curate", str(inputs), "--output", curated, "--phash", "--no-progress"]) == 0
    return {"root": root, "inputs": str(inputs), "curated": curated, "copies": copies, "originals": list(originals),
            "samples": {s.key: s for s in samples}}


def _rows(directory: str) -> list[dict]:
    return pq.read_table(sorted(glob.glob(f"{directory}/*.parquet"))).to_pylist()


def _dedup(planted, method: str, *extra: str) -> list[dict]:
    out = str(planted["root"] / f"removal-{method}-{len(extra)}")
    assert cli.main(["dedup", planted["curated"], "--output", out, "--method", method, *extra]) == 0
    return _rows(out)


def test_curate_stores_sha256_and_phash(planted):
    from beam_curator.dedup.algorithms import phash_of_image

    rows = {row["original_key"]: row for row in _rows(planted["curated"])}
    assert len(rows) == 64
    for key, row in rows.items():
        data = planted["samples"][key].members["jpg"]
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert row["phash"] == phash_of_image(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_exact_finds_exactly_the_byte_copies(planted, capsys):
    found = _dedup(planted, "exact")
    ids = {row["image_id"]: row["original_key"] for row in _rows(planted["curated"])}
    removed = {ids[row["id"]]: ids[row["kept_id"]] for row in found}
    byte_copies = {copy for copy, kind in ((c, c.rsplit("_", 1)[1]) for c in planted["copies"]) if kind == "byte"}
    assert set(removed) | set(removed.values()) == byte_copies | {planted["copies"][c] for c in byte_copies}
    assert len(removed) == len(byte_copies) == 16
    assert all(row["method"] == "exact" and row["distance"] == 0 for row in found)
    assert all(row["kept_id"] < row["id"] for row in found)  # the smallest image_id of a group is kept
    assert "dedup (exact, keep largest): images: 64  duplicate groups: 16  removed: 16" in capsys.readouterr().out


def test_perceptual_finds_the_copies_and_pairs_no_two_photos(planted):
    found = _dedup(planted, "perceptual", "--max-hamming", "6")
    ids = {row["image_id"]: row["original_key"] for row in _rows(planted["curated"])}
    source = {key: planted["copies"].get(key, key) for key in ids.values()}  # each sample's photo
    assert all(source[ids[row["id"]]] == source[ids[row["kept_id"]]] for row in found)  # no two photos paired
    removed = {ids[row["id"]] for row in found}
    planted_copies = len(planted["copies"])  # 48: every group of 4 keeps one
    assert len(removed) >= 0.95 * planted_copies
    assert all(0 <= row["distance"] <= 64 for row in found)


def _perceptual_removal(planted) -> tuple[str, set[str]]:
    """The perceptual dedup's removal list of the planted corpus, and the ids it removes."""
    removal = str(planted["root"] / "removal-perceptual-2")
    if not os.path.exists(removal):
        _dedup(planted, "perceptual", "--max-hamming", "6")
    return removal, {row["id"] for row in _rows(removal)}


def test_removal_in_curate_leaves_input_minus_removed(planted):
    removal, removed = _perceptual_removal(planted)
    out = str(planted["root"] / "deduped")
    assert cli.main(["curate", planted["inputs"], "--output", out, "--remove-duplicates", removal,
                     "--no-progress"]) == 0
    written = {row["image_id"] for row in _rows(out)}
    filtered = pq.read_table(glob.glob(f"{out}/_filtered/*.parquet")).to_pylist()
    everything = {row["image_id"] for row in _rows(planted["curated"])}
    assert written == everything - removed
    assert sorted(row["image_id"] for row in filtered) == sorted(removed)  # each once
    assert {row["stage"] for row in filtered} == {"image_dedup_filter"}
    stats = json.loads(Path(f"{out}/_stats.json").read_text())
    assert stats["filtered_by_stage"] == {"image_dedup_filter": len(removed)} and stats["reconciles"]


def _embedding_corpus(directory, rng, n=3000, copies=150, dim=64):
    """n random unit vectors and `copies` near-copies (cosine >= 0.999 with their source), as a
    curated parquet (image_id, embedding)."""
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sources = rng.choice(n, copies, replace=False)
    noise = rng.normal(size=(copies, dim)).astype(np.float32)
    near = vectors[sources] + 0.02 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    assert ((near * vectors[sources]).sum(axis=1) >= 0.999).all()
    everything = np.concatenate([vectors, near])
    ids = [f"img{i:06d}" for i in range(n)] + [f"copy{i:06d}" for i in range(copies)]
    os.makedirs(directory)
    for part in range(3):
        table = pa.table({"image_id": ids[part::3], "embedding": pa.array(list(everything[part::3]),
                                                                         type=pa.list_(pa.float32()))})
        pq.write_table(table, os.path.join(directory, f"images-{part:016d}-000000.parquet"))
    return dict(zip(ids, everything)), {f"copy{i:06d}": f"img{s:06d}" for i, s in enumerate(sources)}


def test_semantic_finds_planted_near_duplicates(tmp_path):
    vectors, planted = _embedding_corpus(str(tmp_path / "curated"), np.random.default_rng(3))
    out = str(tmp_path / "removal")
    eps = 0.002
    assert cli.main(["dedup", str(tmp_path / "curated"), "--output", out, "--method", "semantic", "--eps", str(eps),
                     "--n-clusters", "8", "--sample-size", "1000"]) == 0
    found = _rows(out)
    removed = {row["id"]: row["kept_id"] for row in found}
    pairs = {frozenset(pair) for pair in planted.items()}
    caught = sum(1 for row in found if frozenset((row["id"], row["kept_id"])) in pairs)
    assert caught >= 0.95 * len(planted)
    for removed_id, kept_id in removed.items():  # brute force: each removed id has a kept id close enough
        assert kept_id not in removed
        assert float(vectors[removed_id] @ vectors[kept_id]) >= 1 - eps - 1e-6


@pytest.mark.parametrize("method", ["exact", "perceptual", "semantic"])
def test_dedup_is_the_same_on_two_worker_processes(planted, method, tmp_path):
    source = planted["curated"]
    extra = []
    if method == "semantic":
        source = str(tmp_path / "embeddings")
        _embedding_corpus(source, np.random.default_rng(5), n=1500, copies=60)
        extra = ["--eps", "0.002", "--n-clusters", "6", "--sample-size", "500"]
    one = str(tmp_path / f"one-{method}")
    two = str(tmp_path / f"two-{method}")
    assert cli.main(["dedup", source, "--output", one, "--method", method, *extra]) == 0
    assert cli.main(["dedup", source, "--output", two, "--method", method, *extra, "--direct_num_workers=2",
                     "--direct_running_mode=multi_processing"]) == 0

    def files(directory):
        return {os.path.basename(p): Path(p).read_bytes() for p in glob.glob(f"{directory}/duplicates-*.parquet")}

    assert files(one) == files(two) and files(one)


def test_dedup_refuses_what_it_cannot_use(planted, tmp_path, capsys):
    assert cli.main(["dedup", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "holds no curated parquet" in capsys.readouterr().err
    assert cli.main(["dedup", planted["curated"], "--output", str(tmp_path / "o"), "--method", "semantic"]) == 2
    err = capsys.readouterr().err
    assert "has a value in the embedding column" in err and "--embed" in err
    assert not (tmp_path / "o").exists()
    assert cli.main(["dedup", planted["curated"], "--output", str(tmp_path / "o")]) == 0
    assert cli.main(["dedup", planted["curated"], "--output", str(tmp_path / "o")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def _members(directory: str) -> dict[str, bytes]:
    import tarfile

    members = {}
    for path in sorted(glob.glob(f"{directory}/*.tar")):
        with tarfile.open(path) as archive:
            for member in archive.getmembers():
                members[member.name] = archive.extractfile(member).read()
    return members


def test_prune_removes_without_decoding_and_keeps_bytes_and_columns(planted):
    removal, removed = _perceptual_removal(planted)
    out = str(planted["root"] / "pruned")
    assert cli.main(["prune", planted["curated"], "--remove-duplicates", removal, "--output", out,
                     "--images-per-tar", "7"]) == 0
    before = {row["image_id"]: row for row in _rows(planted["curated"])}
    after = {row["image_id"]: row for row in _rows(out)}
    assert set(after) == set(before) - removed
    moved = {"tar_file", "key", "member_name"}  # where the sample now lives
    assert all({k: v for k, v in row.items() if k not in moved} == {k: v for k, v in before[i].items() if k not in moved}
               for i, row in after.items())
    old, new = _members(planted["curated"]), _members(out)
    for image_id, row in after.items():
        was = before[image_id]
        assert new[row["member_name"]] == old[was["member_name"]]
        for extension in ("txt",):
            assert new[f"{row['key']}.{extension}"] == old[f"{was['key']}.{extension}"]
    filtered = pq.read_table(glob.glob(f"{out}/_filtered/*.parquet")).to_pylist()
    assert sorted(row["image_id"] for row in filtered) == sorted(removed)
    stats = json.loads(Path(f"{out}/_stats.json").read_text())
    assert stats["images_decoded"] == 0 and stats["reconciles"] and stats["samples_read"] == 64
    assert stats["images_written"] == 64 - len(removed)


def test_dedup_and_prune_stop_on_an_unknown_option(tmp_path, capsys):
    assert cli.main(["dedup", str(tmp_path), "--output", str(tmp_path / "o"), "--max-haming", "3"]) == 2
    assert "unrecognized option --max-haming (did you mean --max-hamming?)" in capsys.readouterr().err
    assert cli.main(["prune", str(tmp_path), "--remove-duplicates", str(tmp_path), "--output", str(tmp_path / "o"),
                     "--images_per_tar=5"]) == 2
    assert "did you mean --images-per-tar?" in capsys.readouterr().err
