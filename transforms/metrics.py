"""Beam metrics, all under one namespace so a job's figures are easy to find and query."""

from __future__ import annotations

from apache_beam.metrics import Metrics

__all__ = ["NAMESPACE", "counter", "query_counters", "query_string_sets", "string_set"]

NAMESPACE = "beam_curator"


def counter(name: str):
    return Metrics.counter(NAMESPACE, name)


def string_set(name: str):
    return Metrics.string_set(NAMESPACE, name)


def query_counters(result) -> dict[str, int]:
    """The beam_curator counters of a finished pipeline result: committed values where the runner
    reports them (retried bundles counted once), attempted ones otherwise."""
    from apache_beam.metrics.metric import MetricsFilter

    values: dict[str, int] = {}
    for metric in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = metric.committed if metric.committed is not None else metric.attempted
        values[metric.key.metric.name] = values.get(metric.key.metric.name, 0) + int(value or 0)
    return values


def query_string_sets(result) -> dict[str, set[str]]:
    """The beam_curator string sets of a finished pipeline result."""
    from apache_beam.metrics.metric import MetricsFilter

    values: dict[str, set[str]] = {}
    for metric in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["string_sets"]:
        value = metric.committed if metric.committed is not None else metric.attempted
        values.setdefault(metric.key.metric.name, set()).update(value or ())
    return values
