"""WriteFailures: FailureRecord -> one parquet of failures per source shard, under DIR/_failures/."""

from __future__ import annotations

import hashlib
import io

import apache_beam as beam
import pyarrow.parquet as pq

from beam_curator import storage
from beam_curator.failures import failures_to_table

__all__ = ["FAILURES_DIR", "WriteFailures"]

FAILURES_DIR = "_failures"


class _WriteSourceFailuresFn(beam.DoFn):
    def __init__(self, directory: str):
        self._directory = directory

    def process(self, element):
        # (source, [FailureRecord]) -> path of its parquet
        source, records = element
        rows = sorted(records, key=lambda r: (r.member, r.key, r.stage, r.scope, r.error_class, r.message))
        name = f"failures-{hashlib.sha256(source.encode()).hexdigest()[:16]}.parquet"
        final = storage.join(self._directory, name)
        buffer = io.BytesIO()
        pq.write_table(failures_to_table(rows), buffer)
        # Same records, same bytes, same name: a retried bundle rewrites it identically.
        temporary = storage.join(self._directory, f".{name}.tmp")
        with storage.create(temporary) as handle:
            handle.write(buffer.getvalue())
        storage.rename_if_present(temporary, final)
        yield final


class WriteFailures(beam.PTransform):
    """Write FailureRecords as `{output_dir}/_failures/failures-{hash of source}.parquet`, rows sorted."""

    def __init__(self, output_dir: str):
        super().__init__()
        self.directory = storage.join(output_dir.rstrip("/"), FAILURES_DIR)

    def expand(self, failures):
        return (
            failures
            | "BySource" >> beam.Map(lambda record: (record.source, record))  # (source, FailureRecord)
            | "Group" >> beam.GroupByKey()  # (source, [FailureRecord])
            | "Write" >> beam.ParDo(_WriteSourceFailuresFn(self.directory))
        )
