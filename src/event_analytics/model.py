"""Event schema, reason codes and domain errors. No HTTP and no I/O here."""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar
from uuid import UUID

from jiter import LosslessFloat
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    Strict,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from event_analytics import revenue

EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
# Printable text: emails and other trackers' anonymous ids. No control characters (C0,
# DEL, C1): a NUL would blur the "<url> NUL <user>" members of page_users.
USER_ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]{1,255}$"
PROPERTY_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
MAX_URL_LENGTH = 2048
MAX_PROPERTY_STRING = 1024
MAX_PROPERTIES = 32
MIN_INT, MAX_INT = -(2**63), 2**63 - 1
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ISO_START = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]|$)")
_URL_ADAPTER = TypeAdapter(HttpUrl)


def _iso_only(value: Any) -> Any:
    if type(value) is datetime:
        # Only the drop-in mappings (adapters/) hand one over, already parsed from ISO 8601
        # text (JSON holds no datetimes): not written out and parsed again per event.
        return value
    # pydantic also reads digit strings as unix times; the API promises ISO 8601 only.
    if not isinstance(value, str) or not _ISO_START.match(value):
        raise PydanticCustomError(
            "invalid_timestamp", "timestamp must be ISO 8601, e.g. 2024-06-07T12:34:56Z"
        )
    return value


def _check_url(value: str) -> str:
    if len(value) > MAX_URL_LENGTH:
        raise PydanticCustomError(
            "url_too_long", "page_url is longer than {limit} characters", {"limit": MAX_URL_LENGTH}
        )
    if _CONTROL.search(value):
        # Page URLs are members of "<url> NUL <user>" pairs: a NUL in a URL would blur them.
        raise PydanticCustomError("invalid_url", "page_url must not contain control characters")
    if not _is_http_url(value):
        raise PydanticCustomError(
            "invalid_url", "page_url must be an absolute http(s) URL with a host"
        )
    # Kept as sent (HttpUrl would normalise it, splitting one page into two names).
    return value


@functools.lru_cache(maxsize=2048)
def _is_http_url(value: str) -> bool:
    """HttpUrl's verdict, remembered: a site's pages come back again and again, and
    parsing a URL was a fifth of validating an event."""
    try:
        _URL_ADAPTER.validate_python(value)
    except ValidationError:
        return False
    return True


PageUrl = Annotated[str, Strict(), AfterValidator(_check_url)]


def _revenue_amount(value: Any) -> str:
    text = revenue.amount(value)
    if text is None:
        raise PydanticCustomError("invalid_revenue", f"revenue_amount is {revenue.AMOUNT_RULE}")
    return text


def _revenue_currency(value: Any) -> str:
    code = revenue.currency(value)
    if code is None:
        raise PydanticCustomError(
            "invalid_currency", f"revenue_currency is {revenue.CURRENCY_RULE}"
        )
    return code


# Kept as revenue.py's canonical text: an exact decimal string and an upper-case code.
RevenueAmount = Annotated[str, BeforeValidator(_revenue_amount)]
RevenueCurrency = Annotated[str, BeforeValidator(_revenue_currency)]
Timestamp = Annotated[datetime, BeforeValidator(_iso_only)]


class Payload(BaseModel):
    """Event properties. ``page_url`` plus a bounded set of flat extra properties."""

    model_config = ConfigDict(extra="allow")

    page_url: PageUrl | None = None
    # Revenue (revenue.py): both or neither; absent from most events, so free for them.
    revenue_amount: RevenueAmount | None = None
    revenue_currency: RevenueCurrency | None = None

    def as_record(self) -> dict[str, Any]:
        """``model_dump(exclude_none=True)``, at a fraction of its cost (the values are
        flat and plain, nothing to serialise): the archive record's payload, per event."""
        out: dict[str, Any] = {} if self.page_url is None else {"page_url": self.page_url}
        if self.revenue_amount is not None:
            out["revenue_amount"] = self.revenue_amount
            out["revenue_currency"] = self.revenue_currency
        if self.__pydantic_extra__:
            out.update((k, v) for k, v in self.__pydantic_extra__.items() if v is not None)
        return out

    @model_validator(mode="after")
    def _bounded_extras(self) -> Payload:
        if (self.revenue_amount is None) is not (self.revenue_currency is None):
            raise PydanticCustomError(
                "incomplete_revenue",
                "revenue_amount and revenue_currency go together: send both or neither",
            )
        extras = self.__pydantic_extra__ or {}
        if len(extras) > MAX_PROPERTIES:
            raise PydanticCustomError(
                "too_many_properties",
                "payload has more than {limit} extra properties",
                {"limit": MAX_PROPERTIES},
            )
        for name, value in extras.items():
            if not PROPERTY_NAME_PATTERN.match(name):
                raise PydanticCustomError(
                    "invalid_property_name",
                    "payload property names are 1-64 of [A-Za-z0-9_.-], starting with a letter",
                )
            kind = type(value)
            if (kind is str and len(value) <= MAX_PROPERTY_STRING) or kind is bool:
                continue  # most values: one test instead of the chain below
            if isinstance(value, str) and len(value) > MAX_PROPERTY_STRING:
                raise PydanticCustomError(
                    "property_too_long",
                    "payload string values are at most {limit} characters",
                    {"limit": MAX_PROPERTY_STRING},
                )
            if (
                not isinstance(value, str | int | float | bool | LosslessFloat)
                and value is not None
            ):
                # Flat on purpose: no nesting means no depth to bound and no deep recursion.
                raise PydanticCustomError(
                    "invalid_property_value",
                    "payload values must be strings, numbers, booleans or null (no objects "
                    "or arrays)",
                )
            if isinstance(value, int) and not MIN_INT <= value <= MAX_INT:
                # The archive is JSON written with orjson: 64-bit integers at most.
                raise PydanticCustomError(
                    "property_out_of_range", "payload integers must fit in 64 bits (signed)"
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise PydanticCustomError("property_out_of_range", "payload numbers must be finite")
            if isinstance(value, LosslessFloat):
                # decode.py left it as text: no 64-bit float is that number (too many
                # digits, or beyond the float range); storing it would change it.
                raise PydanticCustomError(
                    "property_not_exact",
                    "payload numbers must be exact as 64-bit floats (at most 17 significant "
                    "digits, no underflow to 0)",
                )
        return self


class Event(BaseModel):
    """One analytics event as a client sends it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "event_id": "123e4567-e89b-12d3-a456-426614174000",
                    "user_id": "user_1",
                    "timestamp": "2024-06-07T12:34:56Z",
                    "event_type": "page_view",
                    "payload": {"page_url": "https://example.com/page-1"},
                }
            ]
        }
    )

    event_id: UUID = Field(
        description="Client-chosen id; a resend with the same id is a duplicate."
    )
    user_id: str = Field(
        pattern=USER_ID_PATTERN, description="1-255 printable characters (no control characters)"
    )
    timestamp: Timestamp = Field(
        description="ISO 8601; an offset is converted to UTC, no offset means UTC."
    )
    event_type: str = Field(default="page_view", pattern=EVENT_TYPE_PATTERN)
    payload: Payload = Field(default_factory=Payload)

    @model_validator(mode="after")
    def _page_view_has_url(self) -> Event:
        if self.event_type == "page_view" and self.payload.page_url is None:
            raise PydanticCustomError("missing_page_url", "page_view events need payload.page_url")
        return self


EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
# A batch's events in one call, when all are valid (ingest.py); same rules, same Event.
EVENTS_ADAPTER: TypeAdapter[list[Event]] = TypeAdapter(list[Event])


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
    title: ClassVar[str] = "Internal error"
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

    status, slug, title = 404, "not-found", "Not found"

    def detail(self) -> str:
        return f"{self}; list them to see which exist"


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


class QueryTooCostly(InvalidQuery):
    """A read would merge more (bucket, page) or (bucket, user) entries than
    EA_MAX_QUERY_COST."""

    def __init__(self, cost: int, bound: int, what: str = "(bucket, page)") -> None:
        super().__init__(
            [
                FieldError(
                    "query_too_costly",
                    "from",
                    f"this range holds {cost} {what} entries, more than the bound of "
                    f"{bound}: ask for a shorter range or a coarser interval",
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


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def errors_from_validation(exc: ValidationError) -> list[FieldError]:
    """Flatten pydantic's errors into our reason codes (its ``type`` names the reason)."""
    return [
        FieldError(code=err["type"], field=_field_path(err["loc"]), message=err["msg"])
        for err in exc.errors(include_url=False, include_input=False)
    ]


def validate_event(value: Any) -> Event:
    """Validate one decoded event (see ``decode.decode_json``). Raises InvalidEvent."""
    try:
        return EVENT_ADAPTER.validate_python(value)
    except ValidationError as exc:
        raise InvalidEvent(errors_from_validation(exc)) from None
