"""The Beam layer of beam_curator: PTransforms over the core, installed as `beam_curator.transforms`."""

from beam_curator.public import TRANSFORMS
from beam_curator.transforms.io.convert import (
    ConvertImageBatchToDocumentBatchStage,
    WriteDocumentBatchesToParquet,
    convert_image_batch,
)
from beam_curator.transforms.io.curated_reader import CuratedShardReader
from beam_curator.transforms.io.image_reader import ImageReaderStage, ReadResult
from beam_curator.transforms.io.image_writer import ImageWriterStage, WriteResult
from beam_curator.transforms.io.partitioning import FilePartitioningStage
from beam_curator.transforms.io.stats import WriteRunStats
from beam_curator.transforms.stages.basic_filters import CaptionFilterStage, ImageSizeFilterStage
from beam_curator.transforms.stages.duplicates import ImageDuplicatesRemovalStage, ImagePHashStage
from beam_curator.transforms.stages.kit import CurationStage, Dropped, Failed, FilterImages, ScoreImages, StageOutcome
from beam_curator.transforms.stages.models import (
    ImageAestheticFilterStage,
    ImageEmbeddingStage,
    ImageNSFWFilterStage,
    ImageTextSimilarityFilterStage,
)

__all__ = list(TRANSFORMS)  # one list, which beam_curator's top level offers too
