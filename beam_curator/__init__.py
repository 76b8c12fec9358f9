"""beam_curator: image-dataset curation on Apache Beam with NVIDIA DALI.

The data model is imported eagerly; the Beam stages (which import Apache Beam) on first use.
"""

from __future__ import annotations

from beam_curator.tasks import DocumentBatch, FileGroupTask, ImageBatch, ImageObject, StagePerf, Task

__all__ = [
    "ConvertImageBatchToDocumentBatchStage",
    "DocumentBatch",
    "FilePartitioningStage",
    "FileGroupTask",
    "ImageBatch",
    "ImageObject",
    "ImageReaderStage",
    "ImageWriterStage",
    "StagePerf",
    "Task",
    "WriteDocumentBatchesToParquet",
]

__version__ = "0.1.0"

_STAGES = {
    "ConvertImageBatchToDocumentBatchStage",
    "FilePartitioningStage",
    "ImageReaderStage",
    "ImageWriterStage",
    "WriteDocumentBatchesToParquet",
}


def __getattr__(name: str):
    if name in _STAGES:
        from beam_curator import transforms

        return getattr(transforms, name)
    raise AttributeError(f"module 'beam_curator' has no attribute {name!r}")
