"""The public names of beam_curator.transforms, kept here (a module that imports nothing) so that the
package's top level can offer them lazily without importing Apache Beam: `import beam_curator` stays
fast, `beam_curator.ImageReaderStage` and `from beam_curator import *` import Beam when used."""

TRANSFORMS = (
    "CaptionFilterStage",
    "ConvertImageBatchToDocumentBatchStage",
    "CuratedShardReader",
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
    "WriteResult",
    "WriteRunStats",
    "convert_image_batch",
)
