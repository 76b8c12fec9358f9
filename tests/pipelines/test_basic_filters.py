"""The basic filters: image size and caption length, at their boundaries and through curate."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_curator import cli
from beam_curator.tasks import BatchOrigin, ImageBatch, ImageObject
from beam_curator.transforms import CaptionFilterStage, ImageSizeFilterStage
from tests.support.helpers import make_samples, write_tar


def _batch(objects) -> ImageBatch:
    return ImageBatch(task_id="t", dataset_name="d", data=objects,
                      origin=BatchOrigin(partition=0, batch_index=0, last=True, source_files=("x.tar",)))


def _sized(name: str, width: int, height: int) -> ImageObject:
    return ImageObject(image_id=name, width=width, height=height)


def test_image_size_limits_are_inclusive():
    stage = ImageSizeFilterStage(min_size=64, max_aspect_ratio=2.0, max_pixels=64 * 200)
    images = [_sized("at_min", 64, 100), _sized("small", 63, 100), _sized("at_ratio", 64, 128),
              _sized("wide", 200, 64), _sized("at_pixels", 100, 128), _sized("big", 101, 128)]
    outcome = stage.process_batch(_batch(images))
    assert [obj.image_id for obj in outcome.kept] == ["at_min", "at_ratio", "at_pixels"]
    reasons = {d.image.image_id: (d.reason, d.score, d.threshold) for d in outcome.dropped}
    assert reasons["small"] == ("shortest side 63 px < min_size 64", 63, 64)
    assert reasons["wide"][1:] == (200 / 64, 2.0) and reasons["big"][1:] == (101 * 128, 64 * 200)
    unknown = stage.process_batch(_batch([ImageObject(image_id="x")]))
    assert [f.image.image_id for f in unknown.failed] == ["x"]
    pixels_only = ImageObject(image_id="p", image_data=np.zeros((70, 80, 3), np.uint8))
    assert stage.process_batch(_batch([pixels_only])).kept == [pixels_only]


def test_caption_limits():
    stage = CaptionFilterStage(min_words=3, min_chars=10, max_chars=20)

    def caption(name: str, text: str | None) -> ImageObject:
        return ImageObject(image_id=name, companions={} if text is None else {"txt": text.encode()})

    images = [caption("ok", "a b cdefghij"), caption("two_words", "ab cdefghijk"), caption("short", "a b c"),
              caption("long", "a b " + "c" * 20), caption("none", None), caption("padded", "  a b cdefghij  ")]
    outcome = CaptionFilterStage(min_words=3, min_chars=10, max_chars=20).process_batch(_batch(images))
    assert [obj.image_id for obj in outcome.kept] == ["ok", "padded"]
    assert {d.image.image_id: d.reason for d in outcome.dropped} == {
        "two_words": "2 words < min_words 3", "short": "5 characters < min_chars 10",
        "long": "24 characters > max_chars 20", "none": "the sample has no caption (.txt)"}
    assert CaptionFilterStage(max_chars=5).process_batch(_batch([caption("none", None)])).dropped == []
    assert stage.stage_name == "caption_filter"


@pytest.mark.parametrize("options, message", [
    ({}, "needs at least one of"), ({"min_size": 0}, "min_size must be an integer >= 1"),
    ({"max_aspect_ratio": 0.5}, "max_aspect_ratio must be a number >= 1"),
])
def test_image_size_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        ImageSizeFilterStage(**options)


def test_curate_with_basic_filters_accounts_for_every_image(tmp_path, capsys):
    samples = make_samples(0, 15)  # widths 64-96, heights 48-64; captions of 8 words
    for sample in samples[::4]:
        del sample.members["txt"]
    inputs = tmp_path / "input"
    inputs.mkdir()
    write_tar(str(inputs / "a.tar"), samples)
    out = str(tmp_path / "out")
    assert cli.main(["curate", str(inputs), "--output", out, "--min-size", "56", "--min-caption-words", "8",
                     "--no-progress"]) == 0
    stats = json.loads(Path(f"{out}/_stats.json").read_text())
    filtered = pq.read_table(glob.glob(f"{out}/_filtered/*.parquet")).to_pylist()
    written = pq.read_table(glob.glob(f"{out}/*.parquet")).to_pylist()
    assert stats["reconciles"] and stats["samples_read"] == 15
    assert stats["filtered_by_stage"] == {stage: sum(row["stage"] == stage for row in filtered)
                                          for stage in ("caption_filter", "image_size_filter")}
    assert all(min(row["width"], row["height"]) >= 56 and row["caption"] for row in written)
    keys = [row["key"] for row in filtered] + [row["original_key"] for row in written]
    assert sorted(keys) == sorted(s.key for s in samples)  # each exactly once
    assert "image_size_filter:" in capsys.readouterr().out
