"""Beam metrics, all under one namespace so a job's figures are easy to find and query."""

from __future__ import annotations

from apache_beam.metrics import Metrics

__all__ = ["NAMESPACE", "counter", "query_counters"]

NAMESPACE = "beam_curator"


def counter(name: str):
    return Metrics.counter(NAMESPACE, name)

def query_counters(result) -> dict[str, int]:
    """The beam_curator counters of a finished pipeline result: committed values where the runner
    reports them (retried bundles counted once), attempted ones otherwise."""
    from apache_beam.metrics.metric import MetricsFilter

    values: dict[str, int] = {}
    for metric in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = metric.committed if metric.committed is not None else metric.attempted
        values[metric.key.metric.name] = values.get(metric.key.metric.name, 0) + int(value or 0)
    return values

