"""Prometheus metrics: definitions, the recording helpers the service calls, the scrape.

With several worker processes ``serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` before any
worker starts; prometheus-client reads it when it is first imported, so nothing may
import this module (or prometheus_client) earlier in ``serve``. Each worker then writes
its values to files there and a scrape, served by any worker, adds them all up.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import prometheus_client.values
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Decided with prometheus-client's own choice, at import: values live in files or in memory.
MULTIPROCESS = bool(os.environ.get(MULTIPROC_ENV))
# Bytes reserved on disk for each values file when it is created (prometheus-client starts
# at 64 KiB and doubles): ~5,000 label sets, more than the bounded labels here make.
PREALLOCATE_BYTES = 1024 * 1024


def _reserve(fd: int, size: int) -> None:
    """Allocate the file's blocks up to ``size`` now. prometheus-client grows its files with
    truncate (sparse) and writes them through mmap: on a full disk the first write to a
    page without a block is a SIGBUS that kills the process; reserved, a full disk is an
    OSError here instead, and writes into reserved blocks never fail."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        # No fallocate on this filesystem: write the zeros (same effect, slower).
        have = os.fstat(fd).st_size
        if have < size:
            os.pwrite(fd, bytes(size - have), have)


class _ReservedMmapedDict(MmapedDict):
    """prometheus-client's values file, with its blocks reserved before they are mapped."""

    def __init__(self, filename: str, read_mode: bool = False) -> None:
        if not read_mode:
            fd = os.open(filename, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < PREALLOCATE_BYTES:
                    _reserve(fd, PREALLOCATE_BYTES)
            except OSError:
                # No half-made file for a scrape to trip over (it reads every file).
                os.unlink(filename)
                raise
            finally:
                os.close(fd)
        super().__init__(filename, read_mode)  # type: ignore[no-untyped-call]

    def _init_value(self, key: str) -> None:
        # The same size as the parent computes: reserve the doubled file before it grows.
        size = len(key.encode("utf-8")) + 4
        size += 8 - size % 8 + 16
        capacity = self._capacity
        while self._used + size > capacity:
            capacity *= 2
        if capacity != self._capacity:
            _reserve(self._f.fileno(), capacity)
        super()._init_value(key)  # type: ignore[no-untyped-call]


if MULTIPROCESS:
    # values.MultiProcessValue opens its files through this module-level name.
    setattr(prometheus_client.values, "MmapedDict", _ReservedMmapedDict)  # noqa: B010
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Valid event types start with a letter (model.EVENT_TYPE_PATTERN): these never collide.
UNKNOWN_TYPE = "_unknown"
OTHER_TYPE = "_other"
# Event types are client-chosen names: past this many per process, new ones share a label
# so a client cannot grow the number of time series without bound.
MAX_EVENT_TYPE_LABELS = 100

EVENTS = Counter(
    "ea_events",
    "Events by outcome (accepted, duplicate, rejected) and event type",
    ["outcome", "event_type"],
)
REJECTIONS = Counter(
    "ea_event_rejections",
    "Rejected events by the reason code of their first error",
    ["code"],
)
HTTP_DURATION = Histogram(
    "ea_http_request_duration_seconds",
    "HTTP request latency by method, route template and status",
    ["method", "route", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_SIZE = Histogram(
    "ea_batch_size_events",
    "Events per POST /events/batch request",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
PROPERTIES_DROPPED = Counter(
    "ea_properties_dropped",
    "Properties of Segment/Plausible messages not kept, by reason (each is also listed in "
    "its message's result)",
    ["reason"],
)
ENGINE_ERRORS = Counter(
    "ea_engine_errors",
    "Storage engine calls that failed as unavailable (answered 503), by kind",
    ["kind"],
)

# Heavy reads in the query processes (api/heavy.py), by lane: counter reads, archive queries.
QUERY_SLOTS_IN_USE = Gauge(
    "ea_query_slots_in_use",
    "Heavy reads running now, by lane (counter: top pages and series; archive: DuckDB)",
    ["lane"],
    multiprocess_mode="livesum",
)
QUERY_SLOTS = Gauge(
    "ea_query_slots",
    "Heavy reads that may run at once, by lane (summed over the processes serving them)",
    ["lane"],
    multiprocess_mode="livesum",
)
QUERY_WAIT = Histogram(
    "ea_query_queue_wait_seconds",
    "Time an admitted heavy read waited for its slot, by lane",
    ["lane"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUERY_REFUSALS = Counter(
    "ea_query_refusals",
    "Heavy reads refused before any work (503 reads-busy), by lane and reason "
    "(busy: every slot in use; client_share: this client already holds its share; budget: "
    "the reads running and this one cost more than the lane's budget)",
    ["lane", "reason"],
)
QUERY_CPU = Histogram(
    "ea_query_cpu_seconds",
    "CPU seconds of the process serving a heavy read while it ran (reads running at the same "
    "time in the same process each count the whole), by lane",
    ["lane"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
QUERY_BUDGET = Gauge(
    "ea_query_budget",
    "The estimated cost the heavy reads of a lane may add up to at once, by lane (entries "
    "for counter reads, bytes of archive files for archive queries; summed over processes)",
    ["lane"],
    multiprocess_mode="livesum",
)
QUERY_BUDGET_IN_USE = Gauge(
    "ea_query_budget_in_use",
    "The estimated cost of the heavy reads running now, by lane (units as ea_query_budget)",
    ["lane"],
    multiprocess_mode="livesum",
)
LOOP_LAG = Histogram(
    "ea_event_loop_lag_seconds",
    "How late a timer on a process's event loop ran (sampled every 50 ms), by role "
    "(ingest: the workers that acknowledge events; query: the query processes)",
    ["role"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
FORWARDED_IN_FLIGHT = Gauge(
    "ea_forwarded_reads_in_flight",
    "Reads an ingest worker has handed to the query processes and not yet answered",
    multiprocess_mode="livesum",
)
# The cache of sessionized visits in the query processes (analytics/visit_cache.py).
VISIT_CACHE = Counter(
    "ea_visit_cache_requests",
    "Stats API queries' visit reads, by outcome (hit: answered from a cached entry, one "
    "being filled included; update: from a cached entry brought up to its files by the "
    "lines appended since, only the visitors of those lines cut into visits again; miss: "
    "the range was read and cut into visits, and kept; bypass: read without keeping it, "
    "its files having changed other than by appended lines since its last query unread)",
    ["outcome"],
)
VISIT_CACHE_EVICTIONS = Counter(
    "ea_visit_cache_evictions",
    "Entries of the visit cache dropped to keep it within EA_VISIT_CACHE_BYTES",
)
VISIT_CACHE_BYTES = Gauge(
    "ea_visit_cache_bytes",
    "Memory the visit cache's entries hold (DuckDB's measure; summed over processes)",
    multiprocess_mode="livesum",
)
QUERY_LANES = ("cheap", "counter", "archive")

# Series that exist from the start at 0, so that rate() and alerts see the first event.
for _outcome in ("accepted", "duplicate", "rejected"):
    EVENTS.labels(_outcome, "page_view")
for _kind in ("unreachable", "busy", "full", "refused"):
    ENGINE_ERRORS.labels(_kind)

for _outcome in ("hit", "miss", "bypass"):
    VISIT_CACHE.labels(_outcome)
for _lane in QUERY_LANES:
    for _reason in ("busy", "client_share", "budget"):
        QUERY_REFUSALS.labels(_lane, _reason)

_type_labels: set[str] = {"page_view"}


def _type_label(event_type: str) -> str:
    if event_type in _type_labels:
        return event_type
    if len(_type_labels) >= MAX_EVENT_TYPE_LABELS:
        return OTHER_TYPE
    _type_labels.add(event_type)
    return event_type


# Children of the per-request series, by label values: ``labels()`` takes a lock and
# checks the values each call, a cost on every ingest request (see benchmarks/).
_stored_children: dict[tuple[bool, str], Any] = {}
_http_children: dict[tuple[str, str, int], Any] = {}


def event_stored(event_type: str, duplicate: bool, n: int = 1) -> None:
    """Count ``n`` events of one type the engine acknowledged, new or duplicate."""
    child = _stored_children.get((duplicate, event_type))
    if child is None:
        child = EVENTS.labels("duplicate" if duplicate else "accepted", _type_label(event_type))
        if len(_stored_children) < 4 * MAX_EVENT_TYPE_LABELS:
            _stored_children[duplicate, event_type] = child
    child.inc(n)


def event_rejected(code: str, event_type: str | None = None) -> None:
    """Count one refused event; ``event_type`` only when it was read and valid."""
    EVENTS.labels("rejected", _type_label(event_type) if event_type else UNKNOWN_TYPE).inc()
    REJECTIONS.labels(code).inc()


def properties_dropped(reason: str, n: int = 1) -> None:
    PROPERTIES_DROPPED.labels(reason).inc(n)


def batch_received(size: int) -> None:
    """Record the number of events in one batch request."""
    BATCH_SIZE.observe(size)


def engine_error(kind: str) -> None:
    """Count one call that found the engine unreachable or busy."""
    ENGINE_ERRORS.labels(kind).inc()


def http_request(method: str, route: str, status: int, seconds: float) -> None:
    """Record one HTTP request's latency."""
    child = _http_children.get((method, route, status))
    if child is None:
        child = HTTP_DURATION.labels(method, route, str(status))
        _http_children[method, route, status] = child  # routes are templates: bounded
    child.observe(seconds)


@dataclass(frozen=True, slots=True)
class ArchiveGauges:
    """Archive health at scrape time: how far behind the archiver is, and its dead letters."""

    lag_seconds: float
    dead_letters: int


@dataclass(frozen=True, slots=True)
class EngineGauges:
    """The engine's memory at scrape time, per master (``node``: its address): one full
    master among healthy ones refuses its slots' writes, which a sum would hide."""

    nodes: tuple[tuple[str, int, int], ...]  # (node, used bytes, maxmemory; 0 = none)


@dataclass(frozen=True, slots=True)
class DestinationGauges:
    """A destination's delivery (PostgreSQL) at scrape time, from its status file."""

    name: str
    up: bool  # its process runs and reaches the destination
    events_behind: float  # NaN while unknown (never reached it since it started)
    seconds_behind: float


@dataclass(frozen=True, slots=True)
class ExpiryFigures:
    """What the retention job (EA_ARCHIVE_RETENTION_DAYS) deleted so far, from its file."""

    hours: int
    events: int
    postgres_rows: int
    passes: int
    days: int  # EA_ARCHIVE_RETENTION_DAYS
    oldest_hour: float  # Unix time of the oldest hour left after the last pass; NaN: none


class _ArchiveCollector(Collector):
    def __init__(
        self,
        gauges: ArchiveGauges | None,
        engine: EngineGauges | None,
        destinations: tuple[DestinationGauges, ...] = (),
        expiry: ExpiryFigures | None = None,
    ) -> None:
        self.gauges = gauges
        self.engine = engine
        self.destinations = destinations
        self.expiry = expiry

    def collect(self) -> Iterator[Metric]:
        # NaN, not 0, while unknown: a lag of 0 would claim an archiver that is caught up.
        lag = self.gauges.lag_seconds if self.gauges else math.nan
        dead = float(self.gauges.dead_letters) if self.gauges else math.nan
        yield GaugeMetricFamily(
            "ea_archive_lag_seconds",
            "Age of the oldest event not yet archived (NaN while unknown)",
            value=lag,
        )
        yield GaugeMetricFamily(
            "ea_archive_dead_letters",
            "Events in the archiver's dead-letter stream (NaN while unknown)",
            value=dead,
        )
        used = GaugeMetricFamily(
            "ea_engine_memory_used_bytes",
            "Memory each engine node (master) uses (INFO used_memory; absent while unknown)",
            labels=["node"],
        )
        limit = GaugeMetricFamily(
            "ea_engine_memory_limit_bytes",
            "Each master's maxmemory: its writes are refused past it (0 = none)",
            labels=["node"],
        )
        for node, used_bytes, limit_bytes in self.engine.nodes if self.engine else ():
            used.add_metric([node], float(used_bytes))
            limit.add_metric([node], float(limit_bytes))
        yield used
        yield limit
        if self.expiry is not None:
            yield from _expiry(self.expiry)
        if not self.destinations:
            return
        up = GaugeMetricFamily(
            "ea_destination_up",
            "1 while the destination's delivery process runs and reaches it",
            labels=["destination"],
        )
        events = GaugeMetricFamily(
            "ea_destination_lag_events",
            "Archived events not yet delivered to the destination (NaN while unknown)",
            labels=["destination"],
        )
        seconds = GaugeMetricFamily(
            "ea_destination_lag_seconds",
            "Age (since it was received) of the oldest archived event not yet delivered",
            labels=["destination"],
        )
        for d in self.destinations:
            up.add_metric([d.name], 1.0 if d.up else 0.0)
            events.add_metric([d.name], d.events_behind)
            seconds.add_metric([d.name], d.seconds_behind)
        yield up
        yield events
        yield seconds


def _expiry(figures: ExpiryFigures) -> Iterator[Metric]:
    for name, text, value in (
        ("ea_expiry_hours_deleted", "Hour files deleted by retention", figures.hours),
        ("ea_expiry_events_deleted", "Archived events deleted by retention", figures.events),
        ("ea_expiry_postgres_rows_deleted", "PostgreSQL rows deleted by retention",
         figures.postgres_rows),
        ("ea_expiry_passes", "Passes of the retention job", figures.passes),
    ):  # fmt: skip
        yield CounterMetricFamily(name, text, value=float(value))
    yield GaugeMetricFamily(
        "ea_archive_retention_days", "EA_ARCHIVE_RETENTION_DAYS: days of hours kept",
        value=float(figures.days),
    )  # fmt: skip
    yield GaugeMetricFamily(
        "ea_archive_oldest_hour_timestamp_seconds",
        "Start of the oldest hour left in the archive after the retention job's last pass "
        "(NaN: before its first pass, or no hour at all)",
        value=figures.oldest_hour,
    )


def _registries(
    archive: ArchiveGauges | None,
    engine: EngineGauges | None,
    destinations: tuple[DestinationGauges, ...],
    expiry: ExpiryFigures | None = None,
) -> Iterable[CollectorRegistry]:
    if MULTIPROCESS:
        merged = CollectorRegistry()
        MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        yield merged
    else:
        yield REGISTRY
    extra = CollectorRegistry()
    extra.register(_ArchiveCollector(archive, engine, destinations, expiry))
    yield extra


def scrape(
    archive: ArchiveGauges | None,
    engine: EngineGauges | None = None,
    destinations: tuple[DestinationGauges, ...] = (),
    expiry: ExpiryFigures | None = None,
) -> bytes:
    """The Prometheus text exposition of every metric, summed over worker processes."""
    registries = _registries(archive, engine, destinations, expiry)
    return b"".join(generate_latest(r) for r in registries)
