import glob
import os

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_curator.tasks import ImageBatch, ImageObject, StagePerf
from beam_curator.transforms import (
    ConvertImageBatchToDocumentBatchStage,
    FilePartitioningStage,
    ImageReaderStage,
    WriteDocumentBatchesToParquet,
    convert_image_batch,
)
from tests.support.helpers import collect_to, read_collected, run_pipeline


def _batch():
    return ImageBatch(
        task_id="task7",
        dataset_name="ds",
        data=[ImageObject(image_id="a", aesthetic_score=0.5), ImageObject(image_id="b", nsfw_score=0.1)],
        _metadata={"partition_index": 3},
        _stage_perf=[StagePerf("image_reader", 1.0, 2)],
    )


def test_default_is_image_id_only_and_task_metadata_is_kept():
    document = convert_image_batch(_batch(), [], "convert_image_batch_to_document_batch")
    assert list(document.data.columns) == ["image_id"] and document.data["image_id"].tolist() == ["a", "b"]
    assert document.task_id == "task7_convert_image_batch_to_document_batch"
    assert document.dataset_name == "ds" and document._metadata == {"partition_index": 3}
    assert [perf.stage for perf in document._stage_perf] == ["image_reader", "convert_image_batch_to_document_batch"]


def test_named_fields_and_none_for_missing_attributes():
    document = convert_image_batch(_batch(), ["image_id", "aesthetic_score", "no_such_field"], "c")
    frame = document.data
    assert list(frame.columns) == ["image_id", "aesthetic_score", "no_such_field"]
    assert frame["aesthetic_score"].tolist()[0] == 0.5 and np.isnan(frame["aesthetic_score"].tolist()[1])
    assert frame["no_such_field"].tolist() == [None, None]
    assert document.task_id == "task7_c"


def test_fields_must_be_a_list():
    with pytest.raises(ValueError, match="fields must be a list"):
        ConvertImageBatchToDocumentBatchStage(fields="image_id")


def test_pipeline_converts_and_writes_parquet(tmp_path, make_dataset):
    dataset = make_dataset(shards=2, per_shard=3)
    out, docs = str(tmp_path / "parquet"), str(tmp_path / "docs")

    def build(pipeline):
        documents = (
            pipeline
            | FilePartitioningStage(dataset.directory)
            | ImageReaderStage(dali_batch_size=2)
            | beam.Map(_embed)
            | ConvertImageBatchToDocumentBatchStage(fields=["image_id", "key", "caption", "width", "embedding"])
        )
        collect_to(documents, docs)
        collect_to(documents | WriteDocumentBatchesToParquet(out), str(tmp_path / "paths"), label="CollectPaths")

    run_pipeline(build)
    paths = sorted(read_collected(str(tmp_path / "paths")))
    assert paths == sorted(glob.glob(f"{out}/*.parquet")) and len(paths) == 4  # 2 batches per shard
    rows = pq.read_table(paths).to_pylist()
    assert sorted(row["key"] for row in rows) == sorted(s.key for s in dataset.samples)
    captions = {s.key: s.caption for s in dataset.samples}
    assert all(row["caption"] == captions[row["key"]] for row in rows)
    assert all(row["embedding"] == [float(row["width"]), 1.0] for row in rows)
    assert str(pq.read_schema(paths[0]).field("embedding").type) == "list<element: float>"  # float32, as the writer's
    documents = read_collected(docs)
    assert sum(document.num_items for document in documents) == 6
    assert all(name.endswith(".parquet") and not name.startswith(".") for name in os.listdir(out))  # no temporary file


def _embed(batch):
    for obj in batch.data:
        obj.embedding = np.array([obj.width, 1.0], dtype=np.float32)
    return batch
