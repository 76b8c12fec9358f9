"""Each guard of the stage platform has a test that fails without it: each case monkeypatches one guard
away (no source file is edited) and runs that guard's test, which must then fail."""

from __future__ import annotations

import pytest
from _pytest.outcomes import Failed

from beam_curator.output import commit, stats
from beam_curator.output.packing import PartitionPacker
from beam_curator.tasks import BatchOrigin
from beam_curator.transforms.io import image_writer
from beam_curator.transforms.stages import kit
from tests.pipelines import test_stages as guarded
from tests.support.helpers import build_dataset


def _no_order_check(monkeypatch):  # batches may come in any order
    def start_batch(self, batch_index):
        if self._last_batch == -1 and batch_index != 0:
            raise guarded.BatchOrderError(f"batch {batch_index} of partition {self.partition} is the first of it")
        self._last_batch = batch_index

    monkeypatch.setattr(PartitionPacker, "start_batch", start_batch)


def _no_first_batch_check(monkeypatch):  # a partition may start midway
    original = PartitionPacker.start_batch

    def start_batch(self, batch_index):
        if self._last_batch == -1:
            self._last_batch = batch_index - 1
        return original(self, batch_index)

    monkeypatch.setattr(PartitionPacker, "start_batch", start_batch)


def _parquets_first(monkeypatch):  # commit_shards's two rename calls swapped: parquets, then tars
    calls = []
    real = commit.storage.rename_many

    def rename_many(pairs):
        calls.append(list(pairs))
        if len(calls) == 2:
            real(calls[1])
            real(calls[0])
            calls.clear()
        return 0

    monkeypatch.setattr(commit.storage, "rename_many", rename_many)


def _dropped_last_batch_never_closed(monkeypatch):  # finish_bundle forgets unclosed partitions
    def finish_bundle(self):
        self._partitions = {}
        return iter(())

    monkeypatch.setattr(image_writer._WriteShardsFn, "finish_bundle", finish_bundle)


def _filtered_by_difference(monkeypatch):  # images_filtered derived as read - written - failed
    original = stats.RunStats.from_counts.__func__

    def from_counts(cls, counts, **kwargs):
        result = original(cls, counts, **kwargs)
        result.images_filtered = result.samples_read - result.images_written - result.images_failed
        return result

    monkeypatch.setattr(stats.RunStats, "from_counts", classmethod(from_counts))


def _origin_not_checked(monkeypatch):  # the writer takes a batch without origin as partition 0
    original = image_writer._WriterCore._take

    def take(self, batch):
        if batch.origin is None:
            batch.origin = BatchOrigin(partition=0, batch_index=0, last=True, source_files=("?",))
        return original(self, batch)

    monkeypatch.setattr(image_writer._WriterCore, "_take", take)


def _accounting_not_checked(monkeypatch):
    monkeypatch.setattr(kit, "_check_accounted", lambda stage, batch, outcome: None)


GUARDS = {
    "in-order": (_no_order_check, [guarded.test_guard_fused_writer_refuses_batches_out_of_order,
                                   guarded.test_guard_a_batch_after_the_partitions_last_is_refused]),
    "first-batch": (_no_first_batch_check, [guarded.test_guard_fused_writer_refuses_a_partition_that_starts_midway]),
    "parquet-last": (_parquets_first, [guarded.test_guard_parquets_are_renamed_after_every_tar]),
    "close-dropped-last": (_dropped_last_batch_never_closed,
                           [guarded.test_guard_a_partition_whose_last_batch_was_dropped_is_still_closed]),
    "mismatch-by-difference": (_filtered_by_difference,
                               [guarded.test_guard_an_image_lost_without_a_record_is_a_mismatch]),
    "missing-origin": (_origin_not_checked, [guarded.test_guard_a_batch_without_origin_is_refused_with_the_fix]),
    "accounting": (_accounting_not_checked, [guarded.test_guard_a_stage_must_account_for_every_image]),
}


def _arguments(test, tmp_path, monkeypatch) -> dict:
    """What the guard's test asks for, as its fixtures would give it."""
    names = test.__code__.co_varnames[:test.__code__.co_argcount]
    tmp_path.mkdir(parents=True)
    given = {"tmp_path": tmp_path, "monkeypatch": monkeypatch, "mode": "fused",
             "make_dataset": lambda shards=2, per_shard=12, name="input", **options: build_dataset(
                 tmp_path / name, shards, per_shard, **options)}
    return {name: given[name] for name in names}


@pytest.mark.parametrize("guard", list(GUARDS))
def test_each_guard_has_a_test_that_fails_without_it(guard, tmp_path, monkeypatch):
    mutate, tests = GUARDS[guard]
    for test in tests:  # with the guard: the test passes
        test(**_arguments(test, tmp_path / f"with-{test.__name__}", monkeypatch))
    mutate(monkeypatch)
    # Without it the test fails: an assertion, a pytest.raises that did not raise, or an error further on
    # (it passed with the guard above, so what goes wrong is the guard's absence).
    for test in tests:
        with pytest.raises((Exception, Failed)):
            test(**_arguments(test, tmp_path / f"without-{test.__name__}", monkeypatch))
