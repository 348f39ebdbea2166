"""The domain errors: one base class and a small flat set of subclasses, and the reasons
(``FieldError``) an input is refused.

This is where the HTTP facts of every error live: each class carries its own status,
type slug, title and Retry-After as plain class attributes (ints and strings, no HTTP
types), and ``api/problems.py`` maps the base class once, as Starlette looks a handler
up by the exception's MRO. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class FieldError:
    """One reason an event was refused: a stable ``code``, where, and words for people."""

    code: str
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "field": self.field, "message": self.message}


class EventAnalyticsError(Exception):
    """Base of the domain errors. Each carries its own HTTP facts as class attributes,
    so the API maps the base class once (``api/problems.py``) instead of a chain of cases.
    """

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal server error"
    # Seconds a client should wait before retrying (a Retry-After header), when it may.
    retry_after_s: ClassVar[int | None] = None
    errors: list[FieldError] | None = None

    def detail(self) -> str:
        """The problem's ``detail``: what happened and what the client can do about it."""
        return str(self)

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(self.retry_after_s)}


class MalformedJSON(EventAnalyticsError):
    """The body is not JSON at all."""

    status, slug, title = 400, "malformed-json", "Malformed JSON"

    def detail(self) -> str:
        return f"the body is not JSON: {self}"


class DuplicateKey(MalformedJSON):
    """A JSON object of the body has the same key twice (which one counts is undefined)."""

    slug, title = "duplicate-key", "Duplicate key"

    def detail(self) -> str:
        return f"{self}; send each key once per object"


class InvalidInput(EventAnalyticsError):
    """JSON or parameters that break the schema, with one FieldError per reason."""

    status, slug, title = 422, "invalid-input", "Invalid input"
    errors: list[FieldError]

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


class InvalidEvent(InvalidInput):
    """The body is JSON but not a valid event."""


class InvalidQuery(InvalidInput):
    """A query parameter or path is not understood."""


class NotFound(EventAnalyticsError):
    """A thing the request names by id (a goal) does not exist."""

    status, slug, title = 404, "not-found", "Not Found"

    def detail(self) -> str:
        return f"{self}; list them to see which exist"


class SiteForbidden(EventAnalyticsError):
    """A site-limited read key (EA_SITE_KEYS) asked for a site it is not limited to."""

    status, slug, title = 403, "site-forbidden", "Site not allowed"

    def detail(self) -> str:
        return f"{self}; this API key reads only the sites it was given (EA_SITE_KEYS)"


class BodyTooLarge(EventAnalyticsError):
    """The body is over the configured limit (detected while reading)."""

    status, slug, title = 413, "body-too-large", "Body too large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"body is larger than {limit} bytes")
        self.limit = limit

    def detail(self) -> str:
        return f"the body is larger than the limit of {self.limit} bytes"


class BodyTimeout(EventAnalyticsError):
    """The body did not arrive in full within the configured time (a slow client)."""

    status, slug, title = 408, "body-timeout", "Request timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the body did not arrive within {seconds:g} s")
        self.seconds = seconds

    def detail(self) -> str:
        return f"{self}; send the whole body at once"

    def headers(self) -> dict[str, str]:
        # The rest of a slow body may still be on its way: this connection is done.
        return {"Connection": "close"}


class UnsupportedMediaType(EventAnalyticsError):
    """The request's Content-Type is not one this endpoint reads."""

    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"

    def __init__(self, got: str | None, accepted: tuple[str, ...]) -> None:
        super().__init__(got)
        self.got = got
        self.accepted = accepted

    def detail(self) -> str:
        got = self.got or "none"
        return f"Content-Type {got} is not accepted; send {' or '.join(self.accepted)}"


class ImportBusy(EventAnalyticsError):
    """Another import into the same archive is running (one at a time: importing.py)."""

    status, slug, title = 409, "import-running", "An import is running"
    retry_after_s = 10

    def detail(self) -> str:
        return f"{self}; send it again when that one has finished (it is exactly once)"


class ImportWorkerLost(EventAnalyticsError):
    """A worker process of an import died (importing.py): the import stopped there."""

    status, slug, title = 503, "import-worker-lost", "An import worker was lost"
    retry_after_s = 10

    def detail(self) -> str:
        # True of every import (importing.py): appends are exactly once and the days the
        # stopped import left uncounted stay marked, so the next import rebuilds them.
        return (
            f"{self}; what it appended is kept exactly once: send it again to finish "
            "(events already imported count as duplicates)"
        )


class ErasureJobNotFound(NotFound):
    """No erasure job with the id asked for (never made, or ended long ago)."""

    def detail(self) -> str:
        return str(self)


class ErasureQueueFull(EventAnalyticsError):
    """Too many erasure jobs wait already (store/forget_jobs.py ``MAX_QUEUED``).

    Raised only after the request's users were put on the suppression list (api/admin.py
    suppresses first, so that a full queue never lets their events in): the detail says
    so, and that nothing stored was erased."""

    status, slug, title = 503, "erasure-queue-full", "Too many erasures waiting"
    retry_after_s = 60

    def detail(self) -> str:
        return (
            f"{self}; these users' later events are refused already, but what is stored "
            "is not erased: send it again later, or run `event-analytics forget` on the host"
        )


class StorageUnavailable(EventAnalyticsError):
    """Redis/Valkey cannot be reached or cannot take writes right now: retry later."""

    status, slug, title = 503, "storage-unavailable", "Storage unavailable"
    retry_after_s = 1
    # Readiness's ``reason`` when this keeps the service from taking events.
    reason: ClassVar[str] = "engine_unreachable"

    def detail(self) -> str:
        return f"{self}; nothing was stored, retry after {self.retry_after_s} s"


class StorageOutcomeUnknown(StorageUnavailable):
    """A write was sent, but its reply never came (a timeout, a connection lost mid-call).

    It may have been applied or not: only a retry tells, and a retry with the same
    event_id is always safe (an id counts once; our own client-side resend of the call is
    recognised by its token, see store/ingest.lua).
    """

    slug, title = "storage-outcome-unknown", "Storage outcome unknown"

    def detail(self) -> str:
        return (
            f"{self}; the events may or may not have been stored: retry after "
            f"{self.retry_after_s} s with the same event_id (safe: an event_id counts once, "
            "a resend of a stored event answers duplicate)"
        )


class EngineRefused(StorageUnavailable):
    """The engine answers but refuses this client: protected mode (DENIED), a wrong or
    missing password (WRONGPASS, NOAUTH), or an ACL user lacking a permission (NOPERM).
    Retrying does not help; the operator's configuration does."""

    slug, title = "storage-refused", "Storage refused the service"
    reason = "engine_refused"
    retry_after_s = 30

    def __init__(self, code: str, fix: str) -> None:
        super().__init__(f"the engine refused the service's connection ({code})")
        self.code, self.fix = code, fix

    def detail(self) -> str:
        # Not "nothing was stored": a NOPERM can come inside the ingest script after its
        # first writes, or on a cluster between an id's claim and its apply.
        return f"{self}: {self.fix}; a retry with the same event_id is safe"


class ClusterForming(StorageUnavailable):
    """The cluster does not serve all 16384 slots: it is still being created (slots not
    assigned yet, nodes still meeting), or a master is down and no replica took over yet.
    Writes to an uncovered slot would fail: not ready."""

    slug, title = "cluster-forming", "Cluster not serving all slots"
    reason = "cluster_forming"
    retry_after_s = 1

    def __init__(self, state: str, slots_ok: int | None) -> None:
        if slots_ok is None:
            super().__init__("the cluster does not serve all 16384 slots")
        else:
            super().__init__(
                f"the cluster serves {slots_ok} of 16384 slots (cluster_state {state})"
            )
        self.state, self.slots_ok = state, slots_ok

    def detail(self) -> str:
        return (
            f"{self}: it is still forming (slots not all assigned: finish `valkey-cli "
            "--cluster create`, or wait for the compose cluster-init), or a master is down "
            f"and no replica took over yet; nothing was stored, retry after {self.retry_after_s} s"
        )


class EngineFull(StorageUnavailable):
    """The engine is at its maxmemory and refuses writes (OOM, with noeviction)."""

    slug, title = "engine-full", "Storage full"
    reason = "engine_full"
    retry_after_s = 5

    def detail(self) -> str:
        return (
            f"the engine is at its memory limit (maxmemory); nothing was stored, retry after "
            f"{self.retry_after_s} s (the operator raises maxmemory or shortens retention)"
        )


def too_many_event_types(event_type: str, limit: int) -> FieldError:
    """The reason a new event type was refused: its shard holds EA_MAX_EVENT_TYPES."""
    return FieldError(
        "too_many_event_types",
        "event_type",
        f"event type {event_type!r} would be a new type, and the service is at its cap of "
        f"{limit} event types (EA_MAX_EVENT_TYPES, per shard): nothing of this event was "
        "stored; send one of the types in use, or ask the operator to raise the cap",
    )


def user_erased() -> FieldError:
    """The reason an event was refused: its user was erased (``forget``)."""
    return FieldError(
        "user_erased",
        "user_id",
        "this user's data was erased at their request and the service refuses their "
        "events: nothing of this event was stored; do not send it again",
    )


class QueryTooCostly(InvalidQuery):
    """A read would merge more (bucket, page) or (bucket, user) entries than
    EA_MAX_QUERY_COST, or scan more archive bytes than EA_ANALYTICS_MAX_SCAN_BYTES."""

    def __init__(
        self,
        cost: int,
        bound: int,
        what: str = "(bucket, page) entries",
        field: str = "from",
        advice: str = "ask for a shorter range or a coarser interval",
    ) -> None:
        super().__init__(
            [
                FieldError(
                    "query_too_costly",
                    field,
                    f"this range holds {cost} {what}, more than the bound of {bound}: {advice}",
                )
            ]
        )
        self.cost, self.bound = cost, bound


class ReadsBusy(EventAnalyticsError):
    """EA_MAX_HEAVY_READS heavy reads are in progress and none ended in time."""

    status, slug, title = 503, "reads-busy", "Reads busy"
    retry_after_s = 1

    def detail(self) -> str:
        return f"{self}; retry after {self.retry_after_s} s (events are still taken)"


class EventsRateLimited(EventAnalyticsError):
    """Over an events-per-window limit (EA_EVENT_LIMIT_PER_KEY / _PER_ADDRESS)."""

    status, slug, title = 429, "rate-limited", "Too many requests"

    def __init__(self, limit: int, window_s: int, per: str, retry_after_s: int) -> None:
        super().__init__(f"more than {limit} events in {window_s} s for this {per}")
        self.retry_s = retry_after_s

    def detail(self) -> str:
        return f"{self}; nothing was stored, retry after {self.retry_s} s"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_s)}


class StorageFull(StorageUnavailable):
    """The embedded engine's filesystem has less free space than EA_MIN_FREE_DISK_BYTES."""

    slug, title = "storage-full", "Storage full"
    reason = "storage_full"
    retry_after_s = 5

    def detail(self) -> str:
        return (
            f"{self}; nothing was stored, retry after {self.retry_after_s} s (writes resume "
            "by themselves once space is freed)"
        )


class ArchiveBacklogFull(StorageUnavailable):
    """More events wait for the archiver than EA_MAX_ARCHIVE_BACKLOG: it is blocked or behind."""

    slug, title = "archive-backlog-full", "Archive backlog full"
    reason = "archive_backlog_full"
    retry_after_s = 5

    def __init__(self, backlog: int, bound: int) -> None:
        super().__init__(f"{backlog} events wait for the archiver, the bound is {bound}")

    def detail(self) -> str:
        return (
            f"{self} (the archive is blocked or behind); nothing was stored, retry after "
            f"{self.retry_after_s} s"
        )


class EngineMayEvict(StorageUnavailable):
    """The engine's maxmemory-policy may evict keys: counters and dedup ids could vanish."""

    slug, title = "engine-may-evict", "Storage may evict data"
    reason = "engine_may_evict"
    retry_after_s = 30

    def __init__(self, policy: str) -> None:
        super().__init__(f"the engine's maxmemory-policy is {policy}")
        self.policy = policy

    def detail(self) -> str:
        return (
            f"{self}, so it may silently drop counters and the ids that make a resend a "
            "duplicate; nothing was stored. The operator sets maxmemory-policy noeviction "
            "(or EA_ALLOW_EVICTING_ENGINE=1 to accept that risk)"
        )
