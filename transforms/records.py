"""Records of what is not in the output, as parquet: failures under DIR/_failures/, images that stages
dropped under DIR/_filtered/, one file per source shard with its rows sorted (the same records give the
same bytes under the same name, so a retried bundle rewrites a file identically)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable

import apache_beam as beam
import pyarrow.parquet as pq

from beam_curator import storage
from beam_curator.records import failures_to_table, filtered_to_table

__all__ = ["FAILURES_DIR", "FILTERED_DIR", "RECORD_DIRS", "WriteFailures", "WriteFiltered"]

FAILURES_DIR = "_failures"
FILTERED_DIR = "_filtered"
RECORD_DIRS = (FAILURES_DIR, FILTERED_DIR)


class _WriteSourceRecordsFn(beam.DoFn):
    def __init__(self, directory: str, prefix: str, sort_key: Callable, to_table: Callable):
        self._directory = directory
        self._prefix = prefix
        self._sort_key = sort_key
        self._to_table = to_table

    def process(self, element):
        # (source, [record]) -> path of its parquet
        source, records = element
        rows = sorted(records, key=self._sort_key)
        name = f"{self._prefix}-{hashlib.sha256(source.encode()).hexdigest()[:16]}.parquet"
        buffer = io.BytesIO()
        pq.write_table(self._to_table(rows), buffer)
        yield storage.write_atomically(storage.join(self._directory, name), buffer.getvalue())


class _WriteRecords(beam.PTransform):
    def __init__(self, output_dir: str, subdirectory: str, prefix: str, sort_key: Callable, to_table: Callable):
        super().__init__()
        self.directory = storage.join(output_dir.rstrip("/"), subdirectory)
        self._fn = _WriteSourceRecordsFn(self.directory, prefix, sort_key, to_table)

    def expand(self, records):
        return (
            records
            | "BySource" >> beam.Map(lambda record: (record.source, record))  # (source, record)
            | "Group" >> beam.GroupByKey()  # (source, [record])
            | "Write" >> beam.ParDo(self._fn)  # path
        )


def _failure_order(record):
    return record.member, record.key, record.stage, record.scope, record.error_class, record.message


def _filtered_order(record):
    return record.member, record.key, record.image_id, record.stage, record.reason


class WriteFailures(_WriteRecords):
    """Write FailureRecords as `{output_dir}/_failures/failures-{hash of source}.parquet`, rows sorted."""

    def __init__(self, output_dir: str):
        super().__init__(output_dir, FAILURES_DIR, "failures", _failure_order, failures_to_table)


class WriteFiltered(_WriteRecords):
    """Write FilterRecords as `{output_dir}/_filtered/filtered-{hash of source}.parquet`, rows sorted."""

    def __init__(self, output_dir: str):
        super().__init__(output_dir, FILTERED_DIR, "filtered", _filtered_order, filtered_to_table)
