"""Beam metrics, all under one namespace so a job's figures are easy to find and query."""

from __future__ import annotations

from apache_beam.metrics import Metrics

__all__ = ["NAMESPACE", "counter", "string_set"]

NAMESPACE = "beam_curator"


def counter(name: str):
    return Metrics.counter(NAMESPACE, name)


def string_set(name: str):
    return Metrics.string_set(NAMESPACE, name)
