"""ConvertImageBatchToDocumentBatchStage, and writing DocumentBatches to parquet."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Sequence

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from beam_curator import storage
from beam_curator.tasks import DocumentBatch, ImageBatch

__all__ = ["ConvertImageBatchToDocumentBatchStage", "WriteDocumentBatchesToParquet", "convert_image_batch"]

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def convert_image_batch(task: ImageBatch, fields: Sequence[str], name: str) -> DocumentBatch:
    """NeMo Curator's semantics: the named ImageObject attributes as columns (None where an object
    lacks one); only image_id when no field is named. A score a stage stored under a column of its
    own (clip_score, ...) is a field too."""
    started = time.perf_counter()
    if fields:
        data = {field: [_field(obj, field) for obj in task.data] for field in fields}
    else:
        data = {"image_id": [obj.image_id for obj in task.data]}
    result = DocumentBatch(
        task_id=f"{task.task_id}_{name}",
        dataset_name=task.dataset_name,
        data=pd.DataFrame(data),
        _metadata=task._metadata,
        _stage_perf=list(task._stage_perf),
    )
    result.add_stage_perf(name, time.perf_counter() - started, len(task.data))
    return result


def _field(obj, name: str):
    if hasattr(obj, name):
        return getattr(obj, name)
    return obj.scores.get(name)


class ConvertImageBatchToDocumentBatchStage(beam.PTransform):
    """ImageBatch -> DocumentBatch holding a pandas DataFrame of the chosen ImageObject fields."""

    def __init__(self, fields: Sequence[str] | None = None, *, name: str = "convert_image_batch_to_document_batch"):
        super().__init__()
        if isinstance(fields, str):
            raise ValueError(f"fields must be a list of ImageObject attribute names, got the string {fields!r}")
        self.fields = list(fields or [])
        self.stage_name = name

    def expand(self, batches):
        # ImageBatch -> DocumentBatch
        return batches | "ToDocumentBatch" >> beam.Map(convert_image_batch, self.fields, self.stage_name)

    def display_data(self):
        return {"fields": str(self.fields)}


class _WriteDocumentBatchFn(beam.DoFn):
    def __init__(self, output_dir: str):
        self._output_dir = output_dir

    def process(self, batch: DocumentBatch):
        # DocumentBatch -> path of its parquet file
        final = storage.join(self._output_dir, f"{_UNSAFE_NAME.sub('_', batch.task_id)}.parquet")
        buffer = io.BytesIO()
        pq.write_table(_to_arrow(batch.data), buffer)
        # A retried bundle writes the same bytes under the same name; the rename makes it atomic.
        yield storage.write_atomically(final, buffer.getvalue())


def _to_arrow(frame: pd.DataFrame) -> pa.Table:
    """The DataFrame as an arrow table; numpy array cells (embeddings) become float lists."""
    columns = {}
    for column in frame.columns:
        values = frame[column].tolist()
        if any(hasattr(value, "tolist") and getattr(value, "ndim", 0) > 0 for value in values):
            # float32 lists, as the curated parquet's embedding column
            values = pa.array([None if value is None else np.asarray(value, dtype=np.float32).ravel()
                               for value in values], type=pa.list_(pa.float32()))
        columns[str(column)] = values
    return pa.Table.from_pydict(columns)


class WriteDocumentBatchesToParquet(beam.PTransform):
    """Write each DocumentBatch as `{output_dir}/{task_id}.parquet`; returns the paths written."""

    def __init__(self, output_dir: str):
        super().__init__()
        if not output_dir or not isinstance(output_dir, str):
            raise ValueError(f"output_dir must be a directory path or URL, got {output_dir!r}")
        self.output_dir = output_dir.rstrip("/")

    def expand(self, batches):
        return batches | "WriteParquet" >> beam.ParDo(_WriteDocumentBatchFn(self.output_dir))

    def display_data(self):
        return {"output_dir": self.output_dir}
