"""Prometheus metrics of one service: the store's and the streaming app's counters read at scrape time.

Each service has its own `CollectorRegistry` (`ServiceState.metrics`), never the process-global one,
so several services in one process (the tests) keep separate numbers. Most values are read from the
components' own stats by a custom collector when `/metrics` is scraped; the only metrics recorded as
they happen are the query latency histogram (`observe_query`, fed by the service façade around every
query) and the ingest outcomes of `POST /v2/ticks` (`count_ingest`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Final, Protocol

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from ib_stream import __version__
from ib_stream.store.tickstore import TickStore
from ib_stream.streaming import StreamingApp

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
QUERY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LAG_QUANTILES: Final = (0.5, 0.9, 0.99, 1.0)


class ServiceStatus(Protocol):
    """What the collector reads of the service itself (the façade provides it)."""

    source_name: str
    ready: bool
    started_at: float

    def store_status(self) -> tuple[bool, str]: ...


class ServiceMetrics:
    """The registry of one service: the scrape-time collector plus the histogram and counter fed as things happen."""

    def __init__(self, service: ServiceStatus, store: TickStore, streaming: StreamingApp) -> None:
        self.registry = CollectorRegistry()
        self.query_seconds = Histogram(
            "ib_stream_query_seconds",
            "Time to answer a query (read, merge, bars), by endpoint.",
            ["endpoint"],
            buckets=QUERY_BUCKETS,
            registry=self.registry,
        )
        self.ingest_batches = Counter(
            "ib_stream_ingest_batches",
            "Batches received by POST /v2/ticks, by outcome (stored, replayed, rejected).",
            ["outcome"],
            registry=self.registry,
        )
        self.errors = Counter(
            "ib_stream_http_errors",
            "Requests answered with an error, by error code (QUERY_TIMEOUT, PAYLOAD_TOO_LARGE, UNAUTHORIZED, ...).",
            ["code", "status"],
            registry=self.registry,
        )
        self.registry.register(StatsCollector(service, store, streaming))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def observe_query(self, endpoint: str, seconds: float) -> None:
        """Record how long a query of `endpoint` took."""
        self.query_seconds.labels(endpoint=endpoint).observe(seconds)

    def count_error(self, code: str, status: int) -> None:
        """Count one request answered with an error."""
        self.errors.labels(code=code, status=str(status)).inc()

    def count_ingest(self, outcome: str) -> None:
        """Count one POST /v2/ticks batch by outcome: stored, replayed or rejected."""
        self.ingest_batches.labels(outcome=outcome).inc()


class StatsCollector(Collector):
    """Reads the buffer, archiver, cache and streaming stats of one service at scrape time."""

    def __init__(self, service: ServiceStatus, store: TickStore, streaming: StreamingApp) -> None:
        self.service = service
        self.store = store
        self.streaming = streaming

    def collect(self) -> Iterator[Metric]:
        service, store, app = self.service, self.store, self.streaming
        buffer = store.buffer.stats
        streaming = app.stats
        cache = store.cache

        yield InfoMetricFamily(
            "ib_stream_build", "Version and live source.", {"version": __version__, "source": service.source_name}
        )
        writable, _ = service.store_status()
        yield GaugeMetricFamily(
            "ib_stream_ready",
            "1 when the service is ready to serve (started, and the store accepts appends).",
            1.0 if service.ready and writable else 0.0,
        )
        yield GaugeMetricFamily(
            "ib_stream_uptime_seconds", "Seconds since the service started.", time.time() - service.started_at
        )

        # Ingest: rate() of these gives ticks per second.
        yield _counter("ib_stream_ticks_written", "Ticks made durable by the buffer.", buffer.ticks_written)
        yield _counter("ib_stream_batches_written", "Batches made durable by the buffer.", buffer.batches_written)
        yield _counter(
            "ib_stream_ticks_published",
            "Ticks accepted through the streaming app (sources, ingest).",
            streaming.ticks_published,
        )
        yield _counter("ib_stream_ticks_rejected", "Malformed ticks rejected on append.", buffer.rejected_ticks)
        yield _counter(
            "ib_stream_future_ticks_refused",
            "Ticks refused for an event time too far ahead of the clock (sources, ingest).",
            streaming.future_ticks_refused,
        )
        yield _counter(
            "ib_stream_torn_lines_truncated",
            "Torn last lines truncated on buffer recovery.",
            buffer.torn_lines_truncated,
        )
        yield _counter("ib_stream_source_errors", "Live sources that stopped with an error.", streaming.source_errors)
        yield GaugeMetricFamily(
            "ib_stream_pending_writes", "Appends waiting to become durable.", store.buffer.pending_writes()
        )

        # Storage failures: a full disk or an I/O error refuses appends until a retry succeeds.
        outage = store.buffer.outage
        yield GaugeMetricFamily(
            "ib_stream_storage_writable",
            "1 while the buffer accepts appends, 0 during a storage outage.",
            0 if outage else 1,
        )
        yield GaugeMetricFamily(
            "ib_stream_storage_outage_seconds",
            "Seconds since the current storage outage began (0 when writable).",
            (store.clock.now_ns() - outage.since_ns) / 1e9 if outage else 0.0,
        )
        failures = CounterMetricFamily(
            "ib_stream_storage_write_failures",
            "Buffer write groups that failed and were cut back, by kind (full: ENOSPC/quota, io: any other error).",
            labels=["kind"],
        )
        for kind, count in sorted(buffer.write_failures.items()):
            failures.add_metric([kind], count)
        yield failures
        yield _counter(
            "ib_stream_storage_refused_ticks",
            "Ticks not stored because the disk could not take them (cut back, or refused during an outage).",
            buffer.refused_ticks,
        )
        yield _counter(
            "ib_stream_storage_write_retries", "Probes of the disk during storage outages.", buffer.write_retries
        )
        yield _counter(
            "ib_stream_storage_lost_ticks",
            "Acknowledged ticks found on no disk any more (recorded as storage_lost gaps).",
            buffer.lost_ticks,
        )
        yield _counter(
            "ib_stream_segments_restored",
            "Open buffer segments removed under the writer and copied back from the open file.",
            buffer.segments_restored,
        )

        # Durability: fsync latency as a summary (rate(_sum) / rate(_count) is the mean fsync time).
        yield SummaryMetricFamily(
            "ib_stream_fsync_seconds",
            "Time spent in fsync of buffer segments.",
            count_value=buffer.fsyncs,
            sum_value=buffer.fsync_seconds,
        )

        # Live fan-out.
        yield _counter(
            "ib_stream_ticks_fanned_out", "Ticks delivered to live subscriber queues.", streaming.ticks_fanned_out
        )
        yield GaugeMetricFamily("ib_stream_live_subscribers", "Live SSE/WebSocket subscribers.", app.subscriber_count)
        yield _counter(
            "ib_stream_slow_subscriber_disconnects",
            "Live subscribers disconnected for falling behind.",
            streaming.slow_disconnects,
        )
        yield GaugeMetricFamily(
            "ib_stream_fanout_lag_seconds", "Receive -> fan-out lag of the latest tick.", streaming.last_lag_seconds
        )
        recent = GaugeMetricFamily(
            "ib_stream_fanout_lag_recent_seconds",
            "Receive -> fan-out lag over the recent fan-outs, by quantile.",
            labels=["quantile"],
        )
        samples = np.fromiter(streaming.lag_samples, dtype=np.float64)
        if samples.size:
            for q, value in zip(LAG_QUANTILES, np.quantile(samples, LAG_QUANTILES), strict=True):
                recent.add_metric([str(q)], float(value))
        yield recent

        # Archive jobs.
        durations = GaugeMetricFamily(
            "ib_stream_archive_job_duration_seconds", "Duration of the last run of each archive job.", labels=["job"]
        )
        for job, seconds in sorted(store.archiver.last_durations.items()):
            durations.add_metric([job], seconds)
        yield durations

        # Live sources that report their state (the IB source): connection, reconnects, pacing.
        sources = app.source_status().items()
        for name, documentation, key, family in _SOURCE_METRICS:
            metric = family(name, documentation, labels=["source"])
            for source, status in sources:
                if key in status:
                    metric.add_metric([source], float(len(status[key]) if key == "stale" else status[key]))
            yield metric

        # Query cache.
        yield _counter("ib_stream_query_cache_hits", "Query results served from the cache.", cache.hits)
        yield _counter("ib_stream_query_cache_misses", "Queries computed (cache miss).", cache.misses)
        yield GaugeMetricFamily("ib_stream_query_cache_hit_ratio", "Cache hits / lookups since start.", cache.hit_ratio)


_SOURCE_METRICS: Final = (
    ("ib_stream_source_connected", "1 while the source is connected to its broker.", "connected", GaugeMetricFamily),
    ("ib_stream_source_reconnects", "Reconnects of the source since start.", "reconnects", CounterMetricFamily),
    ("ib_stream_source_stale_contracts", "Contracts the watchdog found silent while open.", "stale", GaugeMetricFamily),
    (
        "ib_stream_source_historical_requests",
        "Historical requests (backfill).",
        "historical_requests",
        CounterMetricFamily,
    ),
    ("ib_stream_source_pacing_violations", "Pacing violations IB reported.", "pacing_violations", CounterMetricFamily),
)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
