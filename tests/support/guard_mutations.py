"""Checks that each documented guard of the stage platform has a test that fails without it: removes
one guard at a time from the source, runs its test, puts the guard back. `python3 tests/support/guard_mutations.py`
(about 15 s); every line must say FAILS."""
import os
import subprocess
import sys

os.chdir(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
M = [
 ("in-order", "beam_curator/output/packing.py", "if self.closed or batch_index <= self._last_batch:", "if False:", "test_guard_fused_writer_refuses_batches_out_of_order or test_guard_a_batch_after"),
 ("first-batch", "beam_curator/output/packing.py", "if self._last_batch == -1 and batch_index != 0:", "if False:", "starts_midway"),
 ("parquet-last", "beam_curator/output/commit.py", "    storage.rename_many(first)\n    storage.rename_many(last)", "    storage.rename_many(last)\n    storage.rename_many(first)", "test_guard_parquets_are_renamed_after_every_tar"),
 ("close-dropped-last", "transforms/io/image_writer.py", "            if not self._partitions[partition][0].closed:\n", "            if False:\n", "test_guard_a_partition_whose_last_batch_was_dropped_is_still_closed"),
 ("mismatch-by-difference", "beam_curator/output/stats.py", "images_filtered=int(sum(counts.filtered_by_stage.values())),", "images_filtered=reader['samples_read'] - counts.images_written - int(scopes.get('sample', 0)),", "test_guard_an_image_lost_without_a_record_is_a_mismatch"),
 ("missing-origin", "transforms/io/image_writer.py", "        if batch.origin is None:\n            raise _missing_origin(batch)", "        if batch.origin is None:\n            pass", "test_guard_a_batch_without_origin_is_refused_with_the_fix"),
 ("accounting", "transforms/stages/kit.py", "        _check_accounted(self._name, batch, outcome)\n", "", "test_guard_a_stage_must_account_for_every_image"),
]
for name, path, old, new, test in M:
    src = open(path).read()
    assert old in src, name
    open(path, "w").write(src.replace(old, new))
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/pipelines/test_stages.py", "-k", test], capture_output=True, text=True)
        last = r.stdout.strip().splitlines()[-1]
        print(f"{name}: guard removed -> {'FAILS (good)' if r.returncode else 'PASSES (bad)'}: {last}")
    finally:
        open(path, "w").write(src)
