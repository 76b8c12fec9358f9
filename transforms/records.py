"""WriteRecords: the records of what is not in the output, as parquet. FailureRecords go under
DIR/_failures/, FilterRecords (images that stages dropped) under DIR/_filtered/, one file per source
shard with its rows sorted: the same records give the same bytes under the same name, so a retried
bundle rewrites a file identically. Both kinds share one GroupByKey."""

from __future__ import annotations

import hashlib
import io

import apache_beam as beam
import pyarrow.parquet as pq

from beam_curator import storage
from beam_curator.records import FilterRecord, failures_to_table, filtered_to_table

__all__ = ["FAILURES_DIR", "FILTERED_DIR", "RECORD_DIRS", "WriteFailures", "WriteRecords"]

FAILURES_DIR = "_failures"
FILTERED_DIR = "_filtered"
RECORD_DIRS = (FAILURES_DIR, FILTERED_DIR)


def _failure_order(record):
    return record.member, record.key, record.stage, record.scope, record.error_class, record.message


def _filtered_order(record):
    return record.member, record.key, record.image_id, record.stage, record.reason


# directory -> (file prefix, row order, table)
_KINDS = {
    FAILURES_DIR: ("failures", _failure_order, failures_to_table),
    FILTERED_DIR: ("filtered", _filtered_order, filtered_to_table),
}


def _keyed(record):
    # record -> ((directory, source), record)
    return (FILTERED_DIR if isinstance(record, FilterRecord) else FAILURES_DIR, record.source), record


class _WriteSourceRecordsFn(beam.DoFn):
    def __init__(self, output_dir: str):
        self._output_dir = output_dir

    def process(self, element):
        # ((directory, source), [record]) -> path of its parquet
        (directory, source), records = element
        prefix, order, to_table = _KINDS[directory]
        name = f"{prefix}-{hashlib.sha256(source.encode()).hexdigest()[:16]}.parquet"
        buffer = io.BytesIO()
        pq.write_table(to_table(sorted(records, key=order)), buffer)
        yield storage.write_atomically(storage.join(self._output_dir, directory, name), buffer.getvalue())


class WriteRecords(beam.PTransform):
    """FailureRecords and FilterRecords (one PCollection, or a tuple of them) -> the paths of
    `{output_dir}/_failures/failures-{hash of source}.parquet` and `_filtered/filtered-{...}.parquet`."""

    def __init__(self, output_dir: str):
        super().__init__()
        self.output_dir = output_dir.rstrip("/")

    def expand(self, records):
        if isinstance(records, (tuple, list)):
            records = tuple(records) | "AllRecords" >> beam.Flatten()
        return (
            records
            | "BySource" >> beam.Map(_keyed)  # ((directory, source), record)
            | "Group" >> beam.GroupByKey()  # ((directory, source), [record])
            | "Write" >> beam.ParDo(_WriteSourceRecordsFn(self.output_dir))  # path
        )


WriteFailures = WriteRecords  # the name of earlier releases: it writes either kind
