"""Prometheus metrics of one process, in a registry of its own (so tests and apps never share counters).

When serve runs several HTTP processes (RECIPROCITY_HTTP_WORKERS), a scrape reaches any one of them, so
their metrics live in files of a directory they share (prometheus_client's multiprocess mode): counters
and histograms add up over the processes, and the gauges say how they combine.
"""

from __future__ import annotations

import os
from collections import Counter as Tally
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess, values

SHARED_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own name; children inherit it


def share_metrics_between_processes(directory: Path) -> None:
    """From now on this process and the children it starts keep their metrics in `directory`."""
    os.environ[SHARED_DIR_ENV] = str(directory)
    # prometheus_client picks its value store when it is imported; metrics made after this use the files.
    values.ValueClass = values.get_value_class()


def forget_process(pid: int) -> None:
    """A process that exited no longer counts in the live gauges (its counters stay in the totals)."""
    if os.environ.get(SHARED_DIR_ENV):
        multiprocess.mark_process_dead(pid)


BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
RECOMPUTE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Methods as labels: any other token a client sends counts as OTHER, so a client cannot add series at will.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Every metric, by its attribute on Metrics: (kind, name, help, labels, options).
METRICS: dict[str, tuple[type, str, str, tuple[str, ...], dict[str, Any]]] = {
    "ingest_requests": (
        Counter,
        "reciprocity_ingest_requests_total",
        "Webhook requests by outcome (recorded, duplicate, batch, or the problem that refused them).",
        ("outcome",),
        {},
    ),
    "ingest_facts": (
        Counter,
        "reciprocity_ingest_facts_total",
        "Facts received by webhook, by outcome (recorded, duplicate, rejected).",
        ("outcome",),
        {},
    ),
    "commit_batch_size": (
        Histogram,
        "reciprocity_commit_batch_size",
        "Facts per store transaction (group commit gathers concurrent requests).",
        (),
        {"buckets": BATCH_BUCKETS},
    ),
    "commit_duration": (
        Histogram,
        "reciprocity_commit_duration_seconds",
        "Time to plan and durably commit one gathered batch.",
        (),
        {"buckets": LATENCY_BUCKETS},
    ),
    "http_requests": (
        Counter,
        "reciprocity_http_requests_total",
        "HTTP requests answered, by method, route (its pattern: never an id) and status.",
        ("method", "route", "status"),
        {},
    ),
    # The one latency histogram, of every HTTP request (view queries, webhooks, operations): DESIGN section 5
    # names it with its `route` label; `sum by (le, route)` gives a route's latency as it always did.
    "query_duration": (
        Histogram,
        "reciprocity_query_duration_seconds",
        "HTTP request handling time, by method, route (its pattern) and status.",
        ("method", "route", "status"),
        {"buckets": LATENCY_BUCKETS},
    ),
    "http_errors": (
        Counter,
        "reciprocity_http_internal_errors_total",
        "Requests answered 500 because of a fault of ours (each is logged with its request line).",
        ("route",),
        {},
    ),
    "projection_failures": (
        Counter,
        "reciprocity_projection_failures_total",
        "Pages of the log a view failed to apply (each is logged with the failing fact, when found).",
        ("view",),
        {},
    ),
    "view_lag_events": (
        Gauge,
        "reciprocity_view_lag_events",
        "Facts in the log the view does not reflect yet.",
        ("view",),
        {"multiprocess_mode": "mostrecent"},  # set on each scrape by the process that answers it
    ),
    "view_lag_seconds": (
        Gauge,
        "reciprocity_view_lag_seconds",
        "Age of the oldest fact the view does not reflect yet.",
        ("view",),
        {"multiprocess_mode": "mostrecent"},
    ),
    "relay_position": (
        Gauge,
        "reciprocity_relay_position",
        "Position of the last fact the relay published.",
        (),
        {"multiprocess_mode": "max"},
    ),
    "nats_connected": (
        Gauge,
        "reciprocity_nats_connected",
        "1 while this process (with several: every live process) is connected to NATS.",
        (),
        {"multiprocess_mode": "livemin"},
    ),
    "worker_active": (
        Gauge,
        "reciprocity_worker_active",
        "1 on the process holding the worker's lock (projector, relay), 0 on one standing by for it.",
        ("worker",),
        {"multiprocess_mode": "livemax"},  # under serve: 1 when any of its live processes holds it
    ),
    "kv_writer_lag": (
        Gauge,
        "reciprocity_kv_writer_lag_events",
        "Positions of the view the KV writer has not written to the bucket yet.",
        ("bucket",),
        {"multiprocess_mode": "mostrecent"},  # set on each scrape
    ),
    "influence_recompute": (
        Histogram,
        "reciprocity_influence_recompute_seconds",
        "Time to recompute one tenant's influence (in the influence worker process, as the projector waits).",
        (),
        {"buckets": RECOMPUTE_BUCKETS},
    ),
    "ingest_held": (
        Counter,
        "reciprocity_ingest_held_total",
        "Webhook requests that waited for the views to come within RECIPROCITY_VIEW_LAG_MAX of the log.",
        (),
        {},
    ),
    "commit_queue": (
        Gauge,
        "reciprocity_commit_queue_facts",
        "Facts waiting in the group committer for a transaction (ingest answers 503 past the queue's bound).",
        (),
        {"multiprocess_mode": "livesum"},  # each HTTP process has its own committer
    ),
    "log_head": (
        Gauge,
        "reciprocity_log_head_position",
        "Position of the newest fact in the store.",
        (),
        {"multiprocess_mode": "max"},
    ),
}


class Metrics:
    """One process's metrics: the attributes METRICS names, made in a registry of their own."""

    ingest_requests: Counter
    ingest_facts: Counter
    commit_batch_size: Histogram
    commit_duration: Histogram
    http_requests: Counter
    query_duration: Histogram
    http_errors: Counter
    projection_failures: Counter
    view_lag_events: Gauge
    view_lag_seconds: Gauge
    relay_position: Gauge
    nats_connected: Gauge
    worker_active: Gauge
    kv_writer_lag: Gauge
    influence_recompute: Histogram
    ingest_held: Counter
    commit_queue: Gauge
    log_head: Gauge

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        for attribute, (kind, name, documentation, labels, options) in METRICS.items():
            setattr(self, attribute, kind(name, documentation, labels, registry=self.registry, **options))
        self._requests: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._ingest_outcomes: dict[str, Any] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Counts and times one answered request. `route` is the route's pattern, never the path: ids are
        personal data, and one series per id would grow without bound."""
        # Labelled children are looked up once per label values: labels() is not free at this rate.
        key = (method, route, status)
        children = self._requests.get(key)
        if children is None:
            labels = {"method": method if method in HTTP_METHODS else "OTHER", "route": route, "status": str(status)}
            children = (self.http_requests.labels(**labels), self.query_duration.labels(**labels))
            if method in HTTP_METHODS:  # (an unknown method's key is not kept: there is no end to them)
                self._requests[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def set_lag(self, lag: dict[str, dict[str, float]]) -> None:
        for view, figures in lag.items():
            self.view_lag_events.labels(view=view).set(figures["events"])
            self.view_lag_seconds.labels(view=view).set(figures["seconds"])

    def set_kv_lag(self, lag: dict[str, int]) -> None:
        for bucket, behind in lag.items():
            self.kv_writer_lag.labels(bucket=bucket).set(behind)

    def count_ingest_request(self, outcome: str) -> None:
        child = self._ingest_outcomes.get(outcome)
        if child is None:
            child = self._ingest_outcomes[outcome] = self.ingest_requests.labels(outcome=outcome)
        child.inc()

    def count_facts(self, outcomes: list[Any]) -> None:
        counted = Tally(outcome.status for outcome in outcomes)  # a batch's hundred facts, a few statuses
        for status, facts in counted.items():
            self.ingest_facts.labels(outcome=status).inc(facts)

    def observe_commit(self, facts: int, seconds: float) -> None:
        self.commit_batch_size.observe(facts)
        self.commit_duration.observe(seconds)

    def render(self) -> bytes:
        if os.environ.get(SHARED_DIR_ENV):
            shared = CollectorRegistry()
            multiprocess.MultiProcessCollector(shared)
            return generate_latest(shared)
        return generate_latest(self.registry)
