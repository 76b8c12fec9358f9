import json

import numpy as np
import pandas as pd
import pytest

from beam_curator import DocumentBatch, FileGroupTask, ImageBatch, ImageObject, StagePerf, Task


def _obj(image_id, pixels=None):
    return ImageObject(image_id=image_id, image_data=pixels)


def test_image_object_has_every_nemo_field_with_nemo_defaults():
    obj = ImageObject()
    assert (obj.image_path, obj.image_id, obj.metadata) == ("", "", {})
    assert obj.image_data is None and obj.embedding is None
    assert obj.aesthetic_score is None and obj.nsfw_score is None


def test_validate_accepts_good_batch():
    pixels = np.zeros((4, 5, 3), np.uint8)
    batch = ImageBatch(task_id="t", dataset_name="d", data=[_obj("a", pixels), _obj("b")])
    assert batch.validate() and batch.num_items == 2


@pytest.mark.parametrize(
    "objects",
    [
        [_obj("")],
        [_obj("a"), _obj("a")],
        [_obj("a", np.zeros((4, 5, 3), np.float32))],
        [_obj("a", np.zeros((4, 5), np.uint8))],
        [_obj("a", np.zeros((4, 5, 4), np.uint8))],
        [_obj("a", [[1, 2, 3]])],
    ],
    ids=["empty-id", "duplicate-id", "float", "2d", "rgba", "not-array"],
)
def test_validate_rejects(objects):
    assert not ImageBatch(task_id="t", dataset_name="d", data=objects).validate()


def test_stage_perf_is_appended():
    task = FileGroupTask(task_id="t", dataset_name="d", data=["a.tar"])
    task.add_stage_perf("reader", 1.5, 7)
    assert task._stage_perf == [StagePerf(stage="reader", seconds=1.5, items=7)]
    assert task.num_items == 1 and task.validate()


def test_caption_and_pixels_unchanged():
    pixels = np.ones((2, 2, 3), np.uint8)
    obj = ImageObject(image_id="a", image_bytes=b"x", companions={"txt": "héllo".encode()})
    obj.image_data = obj.decoded_pixels = pixels
    assert obj.caption == "héllo" and obj.pixels_unchanged
    obj.image_data = pixels.copy()
    assert not obj.pixels_unchanged
    assert ImageObject(image_id="b").caption is None


def test_metadata_json_is_json_not_repr():
    obj = ImageObject(metadata={"score": np.float32(0.5), "tags": ["a"], "vec": np.arange(2)})
    assert json.loads(obj.metadata_json()) == {"score": 0.5, "tags": ["a"], "vec": [0, 1]}
    with pytest.raises(TypeError, match="not JSON serialisable"):
        ImageObject(metadata={"x": object()}).metadata_json()


def test_task_and_document_batch():
    assert Task(task_id="t", dataset_name="d").num_items == 0
    frame = pd.DataFrame({"image_id": ["a", "b"]})
    assert DocumentBatch(task_id="t", dataset_name="d", data=frame).num_items == 2
