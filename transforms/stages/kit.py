"""The stage kit: ImageBatch -> ImageBatch curation stages, and two ready-made ones.

A stage subclasses CurationStage and answers, per image in `judge` (keep it, perhaps changed, or drop
it; raising fails the image alone) or per batch in `process_batch` (which images it keeps, which it
drops, with a reason, and the score and threshold it decided on, and which failed: for stages that
work on the whole batch at once, such as a model). It may declare the ImageObject fields it reads that
a stage before it must set (`needs`) and those it sets (`provides`): the curate job refuses a pipeline
whose stages do not line up before anything runs. The base does the rest, the same way for every
stage:

- the output is a new batch with the input's origin (the writer needs it), typed ImageBatch (so Beam
  uses ImageBatchCoder, not pickling every batch to estimate its size);
- every input image is accounted for: kept, dropped or failed, checked by image_id;
- dropped images become FilterRecords and failed ones FailureRecords; they travel in `batch.records`
  to ImageWriterStage, which emits them on its tagged outputs (the CLI writes them to `_filtered/`
  and `_failures/`), so records survive any shuffle between the stage and the writer;
- counts (in, kept, dropped, failed) and the time taken are appended to `_stage_perf` under the
  stage's name: they reach `_stats.json` as data. The batch element itself is never dropped, even
  when it is left empty: it still carries its partition's end to the writer.

See docs/STAGES.md for what a stage may change and a complete example.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import apache_beam as beam

from beam_curator.errors import StageContractError
from beam_curator.formats.schema import check_score_column
from beam_curator.formats.thumbnails import thumbnail_from_bytes, thumbnail_of
from beam_curator.records import FailureRecord, FilterRecord
from beam_curator.tasks import ImageBatch, ImageObject
from beam_curator.transforms.coders import ImageBatchCoder  # noqa: F401 - registers the ImageBatch coder
from beam_curator.transforms.metrics import counter

__all__ = ["CurationStage", "Dropped", "Failed", "FilterImages", "ScoreImages", "StageOutcome", "check_needs"]

_LOG = logging.getLogger(__name__)


@dataclass
class Dropped:
    """An image a stage drops on purpose, and why."""

    image: ImageObject
    reason: str
    score: float | None = None
    threshold: float | None = None
    kept_id: str | None = None  # a removed duplicate: the image kept in its place
    method: str | None = None  # a removed duplicate: how it was found


@dataclass
class Failed:
    """An image a stage could not handle (its model raised on it, say)."""

    image: ImageObject
    error: BaseException | str


@dataclass
class StageOutcome:
    """What a stage did with one batch. kept images go on, in the order given."""

    kept: list[ImageObject]
    dropped: list[Dropped] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)


class CurationStage(beam.PTransform):
    """Base of ImageBatch -> ImageBatch stages. Subclasses implement judge (per image) or process_batch
    (per batch), and setup when they hold something heavy (a model): it runs once per DoFn instance,
    on the worker.

    needs: the ImageObject fields it reads that something before it must set ("image_data": decoded
    pixels, which ImageReaderStage provides; "model_input": a model's preprocessed input, the reader's
    or made from the pixels; "embedding": ImageEmbeddingStage's). The default, ("image_data",), is the
    safe guess for a stage that does not say; a stage that reads no pixels says needs = () and the
    reader then copies none (on the GPU, none leave the device). provides: the fields it sets. record_thumbnails: each FilterRecord carries a small JPEG of the dropped image (~3 KB,
    for the run report); set it False on a stage to leave them out."""

    record_thumbnails = True
    needs: tuple[str, ...] = ("image_data",)
    provides: tuple[str, ...] = ()

    def __init__(self, *, name: str):
        super().__init__()
        if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"name must be a short identifier like 'min_size' (it names the stage's records and "
                             f"counts), got {name!r}")
        if type(self).judge is CurationStage.judge and type(self).process_batch is CurationStage.process_batch:
            raise TypeError(f"{type(self).__name__} must implement judge(image) or process_batch(batch)")
        self.stage_name = name

    def setup(self) -> None:
        """Build what the stage needs per worker (called on the worker, never on the launcher)."""

    def judge(self, image: ImageObject) -> ImageObject | Dropped:
        """The per-image hook: the image to keep (itself, or a copy with what the stage set, e.g.
        image.with_score(...)), or Dropped(image, reason, score, threshold). Raising fails the image
        alone (a FailureRecord); the job goes on."""
        raise NotImplementedError

    def process_batch(self, batch: ImageBatch) -> StageOutcome:
        """The per-batch hook; the default applies judge to each image."""
        outcome = StageOutcome(kept=[])
        for image in batch.data:
            try:
                verdict = self.judge(image)
            except Exception as error:  # the image fails alone, the job goes on
                outcome.failed.append(Failed(image, error))
                continue
            if isinstance(verdict, Dropped):
                outcome.dropped.append(verdict)
            elif isinstance(verdict, ImageObject):
                outcome.kept.append(verdict)
            else:
                raise StageContractError(f"{type(self).__name__}.judge must return the ImageObject to keep or a "
                                         f"Dropped, got {type(verdict).__name__}")
        return outcome

    def expand(self, batches):
        # ImageBatch -> ImageBatch (same origin; records of dropped and failed images inside)
        return batches | "Process" >> beam.ParDo(_StageFn(self)).with_input_types(ImageBatch).with_output_types(
            ImageBatch)

    def display_data(self):
        return {"name": self.stage_name}


def _check_accounted(stage: str, batch: ImageBatch, outcome: StageOutcome) -> None:
    """Every image that came in is kept, dropped or failed, exactly once."""
    came_in = Counter(obj.image_id for obj in batch.data)
    went_out = Counter([obj.image_id for obj in outcome.kept] + [d.image.image_id for d in outcome.dropped]
                       + [f.image.image_id for f in outcome.failed])
    if came_in != went_out:
        lost, extra = sorted((came_in - went_out).elements()), sorted((went_out - came_in).elements())
        raise StageContractError(
            f"stage {stage!r} must account for every image of a batch exactly once (kept, dropped or failed); "
            f"not accounted for: {lost[:5]}{'...' if len(lost) > 5 else ''}, unknown or repeated: "
            f"{extra[:5]}{'...' if len(extra) > 5 else ''}")


def _filter_record(stage: str, dropped: Dropped, with_thumbnail: bool) -> FilterRecord:
    obj = dropped.image
    source, _, member = obj.image_path.partition("#")
    thumbnail = None
    if with_thumbnail:  # the image leaves the pipeline here: keep a glimpse of it for the run report
        thumbnail = thumbnail_of(obj.image_data) if obj.image_data is not None else (
            thumbnail_from_bytes(obj.image_bytes) if obj.image_bytes else None)
    return FilterRecord(image_id=obj.image_id, key=obj.key, source=source, member=member, stage=stage,
                        reason=str(dropped.reason),
                        score=None if dropped.score is None else float(dropped.score),
                        threshold=None if dropped.threshold is None else float(dropped.threshold),
                        thumbnail=thumbnail, kept_id=dropped.kept_id, method=dropped.method)


def _failure_record(stage: str, failed: Failed) -> FailureRecord:
    obj = failed.image
    source, _, member = obj.image_path.partition("#")
    error = failed.error
    error_class, message = (type(error).__name__, str(error)) if isinstance(error, BaseException) else (
        "StageError", str(error))
    return FailureRecord(source=source, member=member, key=obj.key, stage=stage, scope="sample",
                         error_class=error_class, message=message, image_id=obj.image_id)


class _StageFn(beam.DoFn):
    def __init__(self, stage: CurationStage):
        self._stage = stage
        self._name = stage.stage_name

    def setup(self):
        self._stage.setup()

    def process(self, batch: ImageBatch):
        # ImageBatch -> ImageBatch, always one (possibly empty)
        started = time.perf_counter()
        outcome = self._stage.process_batch(batch)
        if not isinstance(outcome, StageOutcome):
            raise StageContractError(f"{type(self._stage).__name__}.process_batch must return a StageOutcome, "
                            f"got {type(outcome).__name__}")
        _check_accounted(self._name, batch, outcome)
        records: list[FailureRecord | FilterRecord] = [
            _filter_record(self._name, dropped, self._stage.record_thumbnails) for dropped in outcome.dropped]
        for failed in outcome.failed:
            record = _failure_record(self._name, failed)
            _LOG.warning("%s failed %s: %s: %s", self._name, failed.image.image_path or failed.image.image_id,
                         record.error_class, record.message)
            records.append(record)
        result = batch.with_images(outcome.kept, records=records)
        counts = {"in": batch.num_items, "kept": len(outcome.kept), "dropped": len(outcome.dropped),
                  "failed": len(outcome.failed)}
        for what in ("dropped", "failed"):
            if counts[what]:
                counter(f"{self._name}_{what}").inc(counts[what])
        result.add_stage_perf(self._name, time.perf_counter() - started, len(outcome.kept), counts)
        yield result


class FilterImages(CurationStage):
    """Keep the images for which predicate(image) is true, as beam.Filter; drop the others with a
    FilterRecord. An image on which the predicate raises fails alone (a FailureRecord). needs: pass ()
    when the predicate reads no pixels (the reader then hands none over)."""

    def __init__(self, predicate: Callable[[ImageObject], bool], *, name: str, needs: tuple[str, ...] = ("image_data",)):
        super().__init__(name=name)
        self.needs = tuple(needs)
        if not callable(predicate):
            raise ValueError(f"predicate must be a function of an ImageObject returning True to keep it, "
                             f"got {predicate!r}")
        self.predicate = predicate

    def judge(self, image: ImageObject) -> ImageObject | Dropped:
        if self.predicate(image):
            return image
        return Dropped(image, reason=f"{getattr(self.predicate, '__name__', 'predicate')} returned False")

    def display_data(self):
        return {"name": self.stage_name, "predicate": getattr(self.predicate, "__qualname__", repr(self.predicate))}


class ScoreImages(CurationStage):
    """Store fn(image) (a float) on every image under the parquet column `column` (aesthetic_score and
    nsfw_score go to NeMo Curator's attributes of those names: ImageObject.with_score). An image on which
    fn raises, or returns something that is not a number, fails alone. needs: pass () when fn reads no
    pixels."""

    def __init__(self, fn: Callable[[ImageObject], float], *, name: str, column: str,
                 needs: tuple[str, ...] = ("image_data",)):
        super().__init__(name=name)
        self.needs = tuple(needs)
        if not callable(fn):
            raise ValueError(f"fn must be a function of an ImageObject returning a float, got {fn!r}")
        self.fn = fn
        self.column = check_score_column(column)
        self.provides = (column,)

    def judge(self, image: ImageObject) -> ImageObject:
        return image.with_score(self.column, float(self.fn(image)))

    def display_data(self):
        return {"name": self.stage_name, "column": self.column,
                "fn": getattr(self.fn, "__qualname__", repr(self.fn))}


# What to add before a stage that needs a field no stage before it sets.
_PROVIDERS = {"embedding": "ImageEmbeddingStage(model_dir) (curate: --model-dir)",
              "image_data": "a reader that decodes the images (ImageReaderStage, curate; not prune)",
              "model_input": "a reader that decodes the images (ImageReaderStage, curate; not prune)"}


def check_needs(stages, provided: tuple[str, ...] = ("image_data",), *, carried: bool = False) -> None:
    """ValueError when a stage needs an ImageObject field that nothing before it sets. provided: what
    the reader sets; carried: the input is a beam_curator output, whose parquet may carry any score or
    embedding (then only pixels are checked)."""
    have = set(provided)
    for stage in stages:
        for needed in getattr(stage, "needs", ()):
            if needed not in have and not (carried and needed != "image_data"):
                name = getattr(stage, "stage_name", None) or getattr(stage, "label", type(stage).__name__)
                raise ValueError(f"stage {name!r} ({type(stage).__name__}) needs {needed}, which nothing before it "
                                 f"sets: add {_PROVIDERS.get(needed, 'a stage that sets it')} before it")
        have.update(getattr(stage, "provides", ()))
