"""beam_curator: image-dataset curation on Apache Beam with NVIDIA DALI.

The data model is imported eagerly; the Beam stages (which import Apache Beam) on first use.
"""

from __future__ import annotations

from beam_curator.tasks import BatchOrigin, DocumentBatch, FileGroupTask, ImageBatch, ImageObject, StagePerf, Task

__all__ = [
    "BatchOrigin",
    "CaptionFilterStage",
    "ConvertImageBatchToDocumentBatchStage",
    "CurationStage",
    "DocumentBatch",
    "FilePartitioningStage",
    "FileGroupTask",
    "FilterImages",
    "ImageAestheticFilterStage",
    "ImageBatch",
    "ImageDuplicatesRemovalStage",
    "ImageEmbeddingStage",
    "ImageNSFWFilterStage",
    "ImageObject",
    "ImagePHashStage",
    "ImageReaderStage",
    "ImageTextSimilarityFilterStage",
    "ImageWriterStage",
    "RunStats",
    "ScoreImages",
    "StagePerf",
    "Task",
    "WriteDocumentBatchesToParquet",
    "curate",
]

__version__ = "0.1.0"

_STAGES = {
    "CaptionFilterStage",
    "ImageSizeFilterStage",
    "ConvertImageBatchToDocumentBatchStage",
    "CurationStage",
    "FilterImages",
    "ScoreImages",
    "FilePartitioningStage",
    "ImageAestheticFilterStage",
    "ImageEmbeddingStage",
    "ImageNSFWFilterStage",
    "ImageTextSimilarityFilterStage",
    "ImageReaderStage",
    "ImageWriterStage",
    "WriteDocumentBatchesToParquet",
}


def __getattr__(name: str):
    if name == "curate":
        from beam_curator.jobs.curate import curate

        return curate
    if name == "RunStats":
        from beam_curator.output.stats import RunStats

        return RunStats
    if name in _STAGES:
        from beam_curator import transforms

        return getattr(transforms, name)
    raise AttributeError(f"module 'beam_curator' has no attribute {name!r}")
