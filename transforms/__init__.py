"""The Beam layer of beam_curator: PTransforms over the core, installed as `beam_curator.transforms`."""

from .basic_filters import CaptionFilterStage, ImageSizeFilterStage
from .convert import (
    ConvertImageBatchToDocumentBatchStage,
    WriteDocumentBatchesToParquet,
    convert_image_batch,
)
from .dedup_stages import ImageDuplicatesRemovalStage, ImagePHashStage
from .image_reader import ImageReaderStage, ReadResult
from .image_writer import ImageWriterStage, WriteResult
from .model_stages import (
    ImageAestheticFilterStage,
    ImageEmbeddingStage,
    ImageNSFWFilterStage,
    ImageTextSimilarityFilterStage,
)
from .partitioning import FilePartitioningStage
from .records import WriteFailures, WriteRecords
from .stages import CurationStage, Dropped, Failed, FilterImages, ScoreImages, StageOutcome
from .stats import WriteRunStats

__all__ = [
    "CaptionFilterStage",
    "ConvertImageBatchToDocumentBatchStage",
    "CurationStage",
    "Dropped",
    "Failed",
    "FilePartitioningStage",
    "FilterImages",
    "ImageAestheticFilterStage",
    "ImageDuplicatesRemovalStage",
    "ImageEmbeddingStage",
    "ImageNSFWFilterStage",
    "ImagePHashStage",
    "ImageReaderStage",
    "ImageSizeFilterStage",
    "ImageTextSimilarityFilterStage",
    "ImageWriterStage",
    "ReadResult",
    "ScoreImages",
    "StageOutcome",
    "WriteDocumentBatchesToParquet",
    "WriteFailures",
    "WriteRecords",
    "WriteResult",
    "WriteRunStats",
    "convert_image_batch",
]
