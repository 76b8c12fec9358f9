"""Stages for the tests, in a module of their own so that worker processes can import them
(`--stage tests.support.stage_examples:drop_some`)."""

import apache_beam as beam

from beam_curator.tasks import ImageBatch
from beam_curator.transforms import CurationStage, Dropped, FilterImages, ScoreImages, StageOutcome


def _even_index(image) -> bool:
    return int(image.key[-1]) % 2 == 0


def _brightness(image) -> float:
    return float(image.image_data.mean()) / 255.0


def _refuse_index_3(image) -> bool:
    if image.key.endswith("3"):
        raise RuntimeError("cannot judge this one")
    return True


drop_some = FilterImages(_even_index, name="drop_odd")
shuffle = beam.Reshuffle()


def score_brightness():
    return ScoreImages(_brightness, name="brightness", column="brightness")


def fail_some():
    return FilterImages(_refuse_index_3, name="picky")


class KeepBright(CurationStage):
    """A stage written on the kit: drops images darker than a threshold, with its score."""

    def __init__(self, threshold: float = 0.45, *, name: str = "keep_bright"):
        super().__init__(name=name)
        self.threshold = threshold

    def process_batch(self, batch: ImageBatch) -> StageOutcome:
        outcome = StageOutcome(kept=[])
        for image in batch.data:
            score = float(image.image_data.mean()) / 255.0
            if score >= self.threshold:
                outcome.kept.append(image)
            else:
                outcome.dropped.append(Dropped(image, reason="too dark", score=score, threshold=self.threshold))
        return outcome


def _lose_first(batch):
    return batch.with_images(batch.data[1:])  # a bug: an image vanishes without a record


def _rebuild_without_origin(batch):
    return ImageBatch(task_id=batch.task_id, dataset_name=batch.dataset_name, data=batch.data)


def _not_last(batch) -> bool:
    return not batch.origin.last


class LoseOne(CurationStage):
    """A bug on purpose: the first image of every batch is neither kept, dropped nor failed, which
    the stage kit refuses (the job fails, naming the stage)."""

    def process_batch(self, batch: ImageBatch) -> StageOutcome:
        return StageOutcome(kept=batch.data[1:])


def lose_one():
    return LoseOne(name="lose_one")


def _slowly(image) -> bool:
    import os
    import time

    # Seconds per image from the environment (0: none), so that a test can kill an engine's worker
    # mid-run while its reference run, with the same stage and so the same output, goes at full speed.
    time.sleep(float(os.environ.get("BEAM_CURATOR_TEST_SLOW_SECONDS", "0")))
    return True


slow = FilterImages(_slowly, name="slow", needs=())
