"""beam_curator: image-dataset curation on Apache Beam with NVIDIA DALI.

The data model is imported eagerly; the Beam stages (beam_curator.transforms, which import Apache
Beam), curate() and RunStats on first use.
"""

from __future__ import annotations

from beam_curator.public import TRANSFORMS
from beam_curator.tasks import (
    BatchOrigin,
    DocumentBatch,
    FileGroupTask,
    ImageBatch,
    ImageObject,
    PartitionInfo,
    StagePerf,
    Task,
)

_DATA_MODEL = ["BatchOrigin", "DocumentBatch", "FileGroupTask", "ImageBatch", "ImageObject", "PartitionInfo",
               "StagePerf", "Task"]
_LAZY = {"curate": "beam_curator.jobs.curate", "RunStats": "beam_curator.output.stats"}

__all__ = sorted([*_DATA_MODEL, *_LAZY, *TRANSFORMS])
__version__ = "0.1.0"


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in TRANSFORMS:
        return getattr(importlib.import_module("beam_curator.transforms"), name)
    raise AttributeError(f"module 'beam_curator' has no attribute {name!r}")
