"""The Beam layer of beam_curator: PTransforms over the core, installed as `beam_curator.transforms`."""

from .convert import (
    ConvertImageBatchToDocumentBatchStage,
    WriteDocumentBatchesToParquet,
    convert_image_batch,
)
from .failures import WriteFailures
from .image_reader import ImageReaderStage
from .image_writer import ImageWriterStage
from .partitioning import FilePartitioningStage

__all__ = [
    "ConvertImageBatchToDocumentBatchStage",
    "FilePartitioningStage",
    "ImageReaderStage",
    "ImageWriterStage",
    "WriteDocumentBatchesToParquet",
    "WriteFailures",
    "convert_image_batch",
]
