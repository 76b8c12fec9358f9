"""WriteRecords: records of what is not in the output, as parquet files grouped by source shard.

ImageWriterStage writes the records of each partition it writes itself (with the partition's commit);
WriteRecords is for pipelines that keep records without that writer, such as a reader whose failures
are wanted on their own. FailureRecords go under DIR/_failures/, FilterRecords under DIR/_filtered/,
one file per source shard with its rows sorted (beam_curator.records.record_files): the same records
give the same bytes under the same name, so a retried bundle rewrites a file identically.
"""

from __future__ import annotations

import hashlib

import apache_beam as beam

from beam_curator import storage
from beam_curator.records import FAILURES_DIR, FILTERED_DIR, RECORD_DIRS, record_files

__all__ = ["FAILURES_DIR", "FILTERED_DIR", "RECORD_DIRS", "WriteFailures", "WriteRecords"]


class _WriteSourceRecordsFn(beam.DoFn):
    def __init__(self, output_dir: str):
        self._output_dir = output_dir

    def process(self, element):
        # (source, [record]) -> path of each parquet written
        source, records = element
        for relative, data in record_files(records, hashlib.sha256(source.encode()).hexdigest()[:16]):
            yield storage.write_atomically(storage.join(self._output_dir, relative), data)


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
            | "BySource" >> beam.Map(lambda record: (record.source, record))  # (source, record)
            | "Group" >> beam.GroupByKey()  # (source, [record])
            | "Write" >> beam.ParDo(_WriteSourceRecordsFn(self.output_dir))  # path
        )


WriteFailures = WriteRecords  # the name of earlier releases: it writes either kind
