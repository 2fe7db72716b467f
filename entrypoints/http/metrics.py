"""Prometheus metrics of the service (prometheus-client, the ``[server]`` extra): ``/metrics``.

:class:`ServiceMetrics` holds one registry per app: the requests (observed by
:class:`~.observe.ObservedRequests`: a count by route, method and status, a latency histogram by
route; turns and their latency) and :class:`LedgerCollector`, which reads the ledger when scraped: its
counts (:class:`~chatledger.application.counters.LedgerCounters`: commits, events appended,
conflicts and the re-runs that were not conflicts, sweeps, erasures), the group commit's batches,
and from the database each read model's lag and the sweep's backlog. A scrape runs in one of
the ledger's worker threads, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from starlette.types import Scope

from ... import ChatLedger

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

COUNTS = {  # LedgerCounters name -> (metric, help)
    "commands": ("chatledger_commands", "Commands that committed events."),
    "events_appended": ("chatledger_events_appended", "Events stored by this process."),
    "conflicts": ("chatledger_conflicts", "Saves that lost an optimistic-concurrency race to another writer."),
    "fresh_reads": ("chatledger_fresh_reads",
                    "Commands re-run on fresh reads after deciding on cached copies (no race: not conflicts)."),
    "retries": ("chatledger_retries", "Re-runs of a command (after a conflict or for fresh reads)."),
    "conflicts_exhausted": ("chatledger_conflicts_exhausted",
                            "Commands that failed with ConcurrencyConflictError after every retry."),
    "sweeps": ("chatledger_sweeps", "Sweeps run by this process."),
    "sweep_seconds": ("chatledger_sweep_seconds", "Time spent sweeping."),
    "sweep_timed_out": ("chatledger_sweep_timed_out_sessions", "Sessions timed out by sweeps."),
    "erasures": ("chatledger_erasures", "Erasures recorded."),
}


class LedgerCollector:
    """The ledger's own metrics, read at each scrape (see the module docstring)."""

    def __init__(self, ledger: ChatLedger) -> None:
        self.ledger = ledger

    def collect(self) -> Iterator[Metric]:
        ledger = self.ledger
        for name, value in ledger.counters.values().items():
            metric, help_ = COUNTS[name]
            yield CounterMetricFamily(metric, help_, value=value)
        events = ledger.events
        batches = SummaryMetricFamily(
            "chatledger_group_commit_batch_callers",
            "Commands committed together in one transaction (transactions of more than one).",
            count_value=getattr(events, "batches", 0), sum_value=getattr(events, "batched_callers", 0),
        )
        yield batches
        up = GaugeMetricFamily("chatledger_database_up", "1 if the last scrape read the database.")
        try:
            status = ledger.projection_status()
            backlog = ledger.sweep_backlog(all_tenants=True)
        except Exception:  # noqa: BLE001 - an unreachable store is a metric, not a failed scrape
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        lag = GaugeMetricFamily(
            "chatledger_projection_lag_events", "Events in the log a read model has not applied.",
            labels=["read_model"],
        )
        failed = GaugeMetricFamily(
            "chatledger_projection_failed_events", "Events a read model could not apply.",
            labels=["read_model"],
        )
        for s in status:
            lag.add_metric([s.name], s.lag)
            failed.add_metric([s.name], s.failed)
        yield lag
        yield failed
        yield GaugeMetricFamily(
            "chatledger_sweep_backlog_sessions",
            "Sessions past their deadline not yet timed out (as the live-session index has them).",
            value=backlog,
        )


def ledger_registry(ledger: ChatLedger, registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """A registry with the ledger's metrics (the service's, or a worker's own)."""
    registry = registry if registry is not None else CollectorRegistry()
    registry.register(LedgerCollector(ledger))
    return registry


def route_of(scope: Scope) -> str:
    """The template of the route that answered (``unmatched`` if none did)."""
    return getattr(scope.get("route"), "path", None) or "unmatched"


class ServiceMetrics:
    """The registry of one app: its requests, and the ledger once :meth:`watch` is called."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "chatledger_http_requests", "HTTP requests answered.", ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "chatledger_http_request_duration_seconds", "Time to answer an HTTP request.", ["route"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.turns = Counter(
            "chatledger_turns", "User messages received (duplicate: a retry, nothing appended).",
            ["duplicate"], registry=self.registry,
        )
        self.turn_latency = Histogram(
            "chatledger_turn_duration_seconds", "Time to record a user message over HTTP.",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self._new, self._duplicate = self.turns.labels("false"), self.turns.labels("true")
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def watch(self, ledger: ChatLedger) -> None:
        ledger_registry(ledger, self.registry)

    def exposition(self) -> bytes:
        """The text format (reads the database: call it in a worker thread)."""
        return generate_latest(self.registry)

    def observe(self, scope: Scope, status: int, seconds: float) -> str:
        """Count and time one request; its route template."""
        path = route_of(scope)
        method = scope.get("method", "")
        children = self._children.get((method, path, status))
        if children is None:  # once per route and status: .labels() is the costly part
            children = self.requests.labels(method, path, str(status)), self.latency.labels(path)
            if len(self._children) < 1000:
                self._children[(method, path, status)] = children
        children[0].inc()
        children[1].observe(seconds)
        turn = scope.get("state", {}).get("turn")
        if turn is not None:
            (self._duplicate if turn.duplicate else self._new).inc()
            self.turn_latency.observe(seconds)
        return path


__all__ = ["LedgerCollector", "ServiceMetrics", "ledger_registry", "route_of"]
