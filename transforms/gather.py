"""GatherAll: a whole PCollection as one element, a list, for the steps that need everything on one worker
(the writer's commit, perceptual dedup's pairs, semantic dedup's k-means sample).

The list is made from a side input, whose elements the runner keeps as separate records. Neither a ToList
combine nor a GroupByKey on one key does on Flink: a ToList moves each bundle's elements as one
accumulator, and Flink's batch translation of a GroupByKey first concatenates each key's values in each
task into one list (Beam's FlinkBatchPortablePipelineTranslator), so either way one record holds every
element a task gathered, and Flink's sorter refuses a record larger than its sort buffer ("The record
exceeds the maximum size of a sort buffer": 207 MB on the TaskManagers of engines/cluster.py;
`benchmarks/flink_gather.py`). The side input is read once, by the one element of a Create, so the list
is always there, once, and empty when the PCollection is.
"""

from __future__ import annotations

import apache_beam as beam

__all__ = ["GatherAll"]


class GatherAll(beam.PTransform):
    """PCollection of elements -> one element: the list of them all (empty when there are none), in no
    particular order."""

    def expand(self, pcoll):
        return (pcoll.pipeline | "Once" >> beam.Create([None])
                | "List" >> beam.Map(lambda _, elements: list(elements), beam.pvalue.AsIter(pcoll)))
