"""The sample rules and the identity rule, as plain functions: no pipeline, no decoder."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq

from beam_curator.formats.sample_rules import SampleRules, curated_rows, with_row
from beam_curator.formats.webdataset import RawSample
from beam_curator.identity import canonical_path, image_id
from beam_curator.records import FailureRecord
from beam_curator.tasks import ImageObject
from tests.support.images import encode, make_image

RULES = SampleRules(stage="image_reader", max_image_pixels=10_000, max_member_bytes=1_000_000)
JPEG = encode(make_image(1, 40, 30))


def _sample(key: str, **members: bytes) -> RawSample:
    return RawSample(key, dict(members), {extension: f"{key}.{extension}" for extension in members})


def test_an_image_gets_its_id_from_its_provenance_and_its_bytes():
    (obj,) = RULES.to_image("/data/a.tar", _sample("k1", jpg=JPEG, txt=b"a caption"), {})
    digest = hashlib.sha256(JPEG).hexdigest()
    expected = hashlib.sha256(f"/data/a.tar\nk1\n0\n{digest}".encode()).hexdigest()[:32]
    assert obj.image_id == expected == image_id("/data/a.tar", "k1", 0, digest)
    assert (obj.sha256, obj.key, obj.image_path, obj.image_format) == (digest, "k1", "/data/a.tar#k1.jpg", "jpg")
    assert obj.caption == "a caption" and obj.image_bytes == JPEG


def test_ids_differ_by_shard_key_occurrence_and_content():
    seen: dict[str, int] = {}
    first = next(RULES.to_image("/c/00000.tar", _sample("k", jpg=JPEG), seen))
    again = next(RULES.to_image("/c/00000.tar", _sample("k", jpg=JPEG), seen))  # the key repeated in the shard
    other_crawl = next(RULES.to_image("/d/00000.tar", _sample("k", jpg=JPEG), {}))
    other_bytes = next(RULES.to_image("/c/00000.tar", _sample("k", jpg=encode(make_image(2, 40, 30))), {}))
    ids = {first.image_id, again.image_id, other_crawl.image_id, other_bytes.image_id}
    assert len(ids) == 4 and all(len(one) == 32 for one in ids)


def test_canonical_paths_resolve_spelling_and_symlinks(tmp_path, monkeypatch):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    assert canonical_path("real/x.tar") == canonical_path(str(tmp_path / "link" / "x.tar")) == str(
        (tmp_path / "real" / "x.tar").resolve())
    assert canonical_path("gs://bucket/x.tar") == "gs://bucket/x.tar"


def test_samples_that_cannot_be_used_are_records():
    def records(sample):
        return [item for item in RULES.to_image("/s.tar", sample, {}) if isinstance(item, FailureRecord)]

    assert [r.error_class for r in records(_sample("t", txt=b"no image"))] == ["NoImageMember"]
    assert [r.error_class for r in records(_sample("e", jpg=b""))] == ["EmptyImage"]
    big = encode(make_image(3, 200, 100))  # 20,000 pixels over the limit of 10,000
    assert [r.error_class for r in records(_sample("b", jpg=big))] == ["ImageTooLarge"]
    bad = records(_sample("c", jpg=JPEG, txt=b"\xff\xfe", json=b"{not json"))
    assert sorted((r.scope, r.member, r.error_class) for r in bad) == [
        ("companion", "c.json", "JSONDecodeError"), ("companion", "c.txt", "UnicodeDecodeError")]


def test_the_json_companion_becomes_metadata_and_is_kept_as_bytes():
    raw = json.dumps({"url": "http://x", "caption": "c"}).encode()
    (obj,) = RULES.to_image("/s.tar", _sample("j", jpg=JPEG, json=raw), {})
    assert obj.metadata == {"url": "http://x", "caption": "c"} and obj.companions["json"] == raw


def test_a_curated_row_gives_its_identity_and_columns(tmp_path):
    row = {"image_id": "f" * 32, "key": "k_out", "original_key": "k.in", "original_path": "/raw/x.tar#k.in.jpg",
           "member_name": "k_out.jpg", "sha256": "ab" * 32, "metadata": '{"a": 1}', "embedding": [0.5, 0.5],
           "aesthetic_score": 5.5, "nsfw_score": None, "clip_score": 0.25, "phash": 7, "width": 40, "height": 30,
           "sharpness": 0.75}
    path = tmp_path / "images-0000000000000000-000000.parquet"
    pq.write_table(pa.Table.from_pylist([row]), str(path))
    assert list(curated_rows(str(path))) == ["k_out"]
    (obj,) = RULES.to_image("/out/images-x.tar", _sample("k_out", jpg=JPEG), {})
    carried = with_row(obj, curated_rows(str(path))["k_out"])
    assert (carried.image_id, carried.key, carried.image_path, carried.sha256) == (
        "f" * 32, "k.in", "/raw/x.tar#k.in.jpg", "ab" * 32)
    assert carried.score("aesthetic_score") == 5.5 and carried.score("clip_score") == 0.25
    assert carried.score("sharpness") == 0.75 and carried.phash == 7 and carried.metadata == {"a": 1}
    assert carried.image_bytes == JPEG  # the bytes are the tar's


def test_scores_have_one_home():
    obj = ImageObject(image_id="i")
    scored = obj.with_score("aesthetic_score", 6).with_score("clip_score", 0.3).with_score("mine", 1)
    assert (scored.aesthetic_score, scored.scores) == (6.0, {"clip_score": 0.3, "mine": 1.0})
    assert obj.scores == {} and obj.aesthetic_score is None  # a copy: the input is never modified
    assert scored.with_score("nsfw_score", None) is scored
