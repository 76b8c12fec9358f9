"""Dedup at curate time: the perceptual hash of each image, and removing the ids a dedup run listed.

Finding duplicates needs a global view, so it is a job of its own over the curated parquet
(`beam-curator dedup`, beam_curator.transforms.find_duplicates); these two stages run inside `curate`:

- ImagePHashStage computes the 64-bit perceptual hash (beam_curator.dedup.algorithms.phash_of_image) from the
  decoded pixels into the parquet's `phash` column (`curate --phash`);
- ImageDuplicatesRemovalStage drops the images a removal list names (`curate --remove-duplicates`),
  each as a FilterRecord of stage `image_dedup_filter`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence

from beam_curator.dedup.removal import RemovalList, check_matches
from beam_curator.tasks import FileGroupTask, ImageBatch, ImageObject
from beam_curator.transforms.per_process import PerProcess
from beam_curator.transforms.stages.kit import CurationStage, Dropped, StageOutcome

__all__ = ["ImageDuplicatesRemovalStage", "ImagePHashStage"]

_LOG = logging.getLogger(__name__)


class ImagePHashStage(CurationStage):
    """Sets `phash` (int64) on every image from its decoded pixels; an image without pixels fails alone."""

    needs = ("image_data",)
    provides = ("phash",)

    def __init__(self, *, name: str = "phash"):
        super().__init__(name=name)

    def judge(self, image: ImageObject) -> ImageObject:
        from beam_curator.dedup.algorithms import phash_of_image

        if image.image_data is None:
            raise ValueError("the image has no decoded pixels (image_data is None)")
        return dataclasses.replace(image, phash=phash_of_image(image.image_data))


class ImageDuplicatesRemovalStage(CurationStage):
    """Drops the images whose image_id is in `removal_parquets_dir/*.parquet`'s column
    `duplicate_id_field` (what `beam-curator dedup` writes), as NeMo Curator's stage of that name; each
    becomes a FilterRecord (stage `image_dedup_filter`) naming the image kept in its place (`kept_id`)
    and the method. The list is loaded once per worker process, as sorted 64-bit digests
    (beam_curator.dedup.removal). check_input() tells, before a run, a list that matches nothing."""

    needs = ()  # ids only

    def __init__(self, removal_parquets_dir: str, duplicate_id_field: str = "id", verbose: bool = False, *,
                 name: str = "image_dedup_filter"):
        super().__init__(name=name)
        if not isinstance(removal_parquets_dir, str) or not removal_parquets_dir:
            raise ValueError(f"removal_parquets_dir must be the directory `beam-curator dedup` wrote, "
                             f"got {removal_parquets_dir!r}")
        if not isinstance(duplicate_id_field, str) or not duplicate_id_field:
            raise ValueError(f"duplicate_id_field must be a column name, got {duplicate_id_field!r}")
        self.removal_parquets_dir = removal_parquets_dir
        self.duplicate_id_field = duplicate_id_field
        self.verbose = verbose
        self.listed: int | None = None  # set by check_input
        self._lists: PerProcess[RemovalList] = PerProcess("removal_lists_loaded")

    def check_input(self, partitions: Sequence[FileGroupTask]) -> int:
        """Before the run (on the launcher): how many ids the list holds; ValueError when none of them
        can be an image of these partitions (see beam_curator.dedup.removal.check_matches)."""
        self.listed = check_matches(self.removal_parquets_dir, partitions, self.duplicate_id_field)
        return self.listed

    def setup(self) -> None:
        self._held = self._lists.acquire(
            lambda: RemovalList.load(self.removal_parquets_dir, self.duplicate_id_field),
            tag=(self.removal_parquets_dir, self.duplicate_id_field))

    def process_batch(self, batch: ImageBatch) -> StageOutcome:
        self._held.report_build()
        started = time.perf_counter()
        found = self._held.value.lookup([obj.image_id for obj in batch.data])
        outcome = StageOutcome(kept=[obj for obj, hit in zip(batch.data, found) if hit is None])
        for obj, hit in zip(batch.data, found):
            if hit is not None:
                kept_id, method = hit
                reason = (f"a {method or 'listed'} duplicate of {kept_id}" if kept_id
                          else f"listed as a duplicate in {self.removal_parquets_dir}")
                outcome.dropped.append(Dropped(obj, reason=reason, kept_id=kept_id, method=method))
        if self.verbose:
            _LOG.info("%s: %d of %d images of %s removed (%.3f s)", self.stage_name, len(outcome.dropped),
                      batch.num_items, batch.task_id, time.perf_counter() - started)
        return outcome

    def display_data(self):
        return {"name": self.stage_name, "removal_parquets_dir": self.removal_parquets_dir,
                "duplicate_id_field": self.duplicate_id_field}
