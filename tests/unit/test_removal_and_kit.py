"""Removal lists and the stage kit as plain objects: lookups with the kept id and method, the check that
a list matches the input, the per-image hook, declared needs, and the readers' result."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_curator.dedup.removal import RemovalList, check_matches
from beam_curator.errors import StageContractError
from beam_curator.tasks import BatchOrigin, FileGroupTask, ImageBatch, ImageObject, PartitionInfo
from beam_curator.transforms import CurationStage, Dropped, FilterImages, ScoreImages
from beam_curator.transforms.stages.kit import check_needs


def _removal(directory, rows) -> str:
    directory.mkdir()
    table = pa.table({"id": [r[0] for r in rows], "kept_id": [r[1] for r in rows], "method": [r[2] for r in rows],
                      "original_path": [r[3] for r in rows]})
    pq.write_table(table, str(directory / "duplicates-exact-00000.parquet"))
    return str(directory)


def _task(source: str, metadata: str | None = None) -> FileGroupTask:
    return FileGroupTask(task_id="t", dataset_name="d", data=[source],
                         partition=PartitionInfo(index=0, source_files=(source,), metadata_files=(metadata,)))


def test_a_removal_list_names_the_kept_image_and_the_method(tmp_path):
    path = _removal(tmp_path / "r", [("b", "a", "exact", "/s/x.tar#b.jpg"), ("c", "a", "perceptual", "/s/x.tar#c.jpg"),
                                     ("b", "a", "exact", "/s/x.tar#b.jpg")])  # b listed twice
    removal = RemovalList.load(path)
    assert len(removal) == 2
    assert removal.lookup(["a", "b", "c", "z"]) == [None, ("a", "exact"), ("a", "perceptual"), None]
    assert removal.contains(["c", "a"]).tolist() == [True, False]


def test_a_list_that_cannot_match_the_input_is_refused(tmp_path):
    path = _removal(tmp_path / "r", [("b", "a", "exact", "/s/x.tar#b.jpg")])
    assert check_matches(path, [_task("/s/x.tar")]) == 1  # a raw shard the listed image came from
    with pytest.raises(ValueError, match=r"none of them is in this input.*/s/x.tar"):
        check_matches(path, [_task("/s/y.tar")])
    curated = tmp_path / "images-0000000000000000-000000.parquet"
    pq.write_table(pa.table({"image_id": ["q", "b"]}), str(curated))
    assert check_matches(path, [_task("/out/images-0000000000000000-000000.tar", str(curated))]) == 1
    pq.write_table(pa.table({"image_id": ["q"]}), str(curated))
    with pytest.raises(ValueError, match="none of them is in this input"):
        check_matches(path, [_task("/out/images-0000000000000000-000000.tar", str(curated))])
    empty = _removal(tmp_path / "e", [])
    assert check_matches(empty, [_task("/s/y.tar")]) == 0  # nothing listed: nothing to remove, not an error


def _batch(*ids: str) -> ImageBatch:
    return ImageBatch(task_id="t", dataset_name="d", data=[ImageObject(image_id=i, width=10 * len(i)) for i in ids],
                      origin=BatchOrigin(partition=0, batch_index=0, last=True, source_files=("s",)))


def test_the_per_image_hook_keeps_drops_and_fails():
    class Judge(CurationStage):
        def judge(self, image):
            if image.image_id == "boom":
                raise RuntimeError("no")
            return image if image.width >= 20 else Dropped(image, reason="narrow", score=image.width, threshold=20)

    outcome = Judge(name="j").process_batch(_batch("a", "bb", "boom"))
    assert [o.image_id for o in outcome.kept] == ["bb"]
    assert [(d.image.image_id, d.reason, d.score) for d in outcome.dropped] == [("a", "narrow", 10)]
    assert [(f.image.image_id, str(f.error)) for f in outcome.failed] == [("boom", "no")]
    scored = ScoreImages(lambda image: image.width / 100, name="s", column="wideness").process_batch(_batch("abc"))
    assert scored.kept[0].score("wideness") == 0.3
    kept = FilterImages(lambda image: image.image_id != "x", name="f").process_batch(_batch("x", "y"))
    assert [o.image_id for o in kept.kept] == ["y"] and kept.dropped[0].reason == "<lambda> returned False"

    class Nothing(CurationStage):
        pass

    with pytest.raises(TypeError, match="must implement judge"):
        Nothing(name="n")

    class Wrong(CurationStage):
        def judge(self, image):
            return True

    with pytest.raises(StageContractError, match="must return the ImageObject to keep or a Dropped"):
        Wrong(name="w").process_batch(_batch("a"))


def test_declared_needs_must_be_met_by_a_stage_before():
    class Embed(CurationStage):
        provides = ("embedding",)

        def judge(self, image):
            return image

    class UsesEmbedding(CurationStage):
        needs = ("embedding",)

        def judge(self, image):
            return image

    check_needs([Embed(name="e"), UsesEmbedding(name="u")])
    with pytest.raises(ValueError, match=r"stage 'u' .* needs embedding.*ImageEmbeddingStage"):
        check_needs([UsesEmbedding(name="u"), Embed(name="e")])
    check_needs([UsesEmbedding(name="u")], carried=True)  # a curated input's parquet may carry it
    from beam_curator.transforms import ImagePHashStage

    with pytest.raises(ValueError, match=r"needs image_data.*not prune"):
        check_needs([ImagePHashStage()], provided=())


def test_a_readers_result_pipes_on_as_its_batches():
    import apache_beam as beam

    from beam_curator.transforms import FilePartitioningStage, ImageReaderStage
    from beam_curator.transforms.io.image_reader import ReadResult

    pipeline = beam.Pipeline()
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = pipeline | FilePartitioningStage(tests_dir, file_extensions=[".py"]) | ImageReaderStage()
    assert isinstance(result, ReadResult)
    batches, failures = result
    mapped = result | beam.Map(lambda batch: batch.num_items)
    assert mapped.producer.inputs[0] is batches and failures is not batches  # building is enough: no run
