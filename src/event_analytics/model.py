"""The event schema and its validation: what an event is, and why one is refused
(``errors.FieldError`` reasons). No HTTP and no I/O here; the domain errors are in
``errors.py``."""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
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
from event_analytics.errors import FieldError, InvalidEvent

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
    problem = _url_problem(value)
    if problem is not None:
        raise PydanticCustomError("invalid_url", problem)
    # Kept as sent (HttpUrl would normalise it, splitting one page into two names).
    return value


@functools.lru_cache(maxsize=2048)
def _url_problem(value: str) -> str | None:
    """What is wrong with a page URL (None: nothing), remembered: a site's pages come
    back again and again; parsing a URL was a fifth of validating an event, and the
    control-character search a tenth of what was left (an import's profile)."""
    if _CONTROL.search(value):
        # Page URLs are members of "<url> NUL <user>" pairs: a NUL in a URL would blur them.
        return "page_url must not contain control characters"
    try:
        _URL_ADAPTER.validate_python(value)
    except ValidationError:
        return "page_url must be an absolute http(s) URL with a host"
    return None


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


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def errors_from_validation(exc: ValidationError) -> list[FieldError]:
    """Flatten pydantic's errors into our reason codes (its ``type`` names the reason)."""
    return [
        FieldError(code=err["type"], field=_field_path(err["loc"]), message=err["msg"])
        for err in exc.errors(include_url=False, include_input=False)
    ]


def validate_events(values: list[Any]) -> list[Event | FieldError]:
    """Each value's Event, or its first error (as ``validate_event`` would name it).

    One pydantic call for the lot, and one more for the valid ones when some are not:
    a call per event cost half again as much as the validation itself (an import's).
    """
    try:
        return list(EVENTS_ADAPTER.validate_python(values))
    except ValidationError as exc:
        first: dict[int, FieldError] = {}
        for err in exc.errors(include_url=False, include_input=False):
            index = err["loc"][0]
            assert isinstance(index, int)  # a list's errors start with the item's index
            if index not in first:
                first[index] = FieldError(err["type"], _field_path(err["loc"][1:]), err["msg"])
    valid = EVENTS_ADAPTER.validate_python([v for i, v in enumerate(values) if i not in first])
    events = iter(valid)
    return [first[i] if i in first else next(events) for i in range(len(values))]


def validate_event(value: Any) -> Event:
    """Validate one decoded event (see ``decode.decode_json``). Raises InvalidEvent."""
    try:
        return EVENT_ADAPTER.validate_python(value)
    except ValidationError as exc:
        raise InvalidEvent(errors_from_validation(exc)) from None


# -- the plain case without pydantic --------------------------------------------------
#
# An import validates millions of events, nearly all of one plain shape (our own records:
# a lower-case UUID, a "Z" or "+00:00" timestamp, a page URL, a few string properties).
# ``plain_event`` reads exactly those, and only those, with the same rules; anything else
# (every error, and every value the model would coerce or that needs a closer look) is
# None: ask ``validate_events``. So an event it accepts is one the model accepts with the
# same values (tests/test_model_plain.py compares the two on generated events), and
# every refusal's reason is the model's own.

_UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# fullmatch, not USER_ID_PATTERN/EVENT_TYPE_PATTERN: Python's "$" also matches before a
# final newline, the model's (pydantic's regex) does not.
_USER_ID = re.compile(r"[^\x00-\x1f\x7f-\x9f]{1,255}")
_EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_PLAIN_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,6})?"
    r"(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)"
)
_NOT_EXTRA = frozenset(("page_url", "revenue_amount", "revenue_currency"))


@dataclass(slots=True)
class PlainEvent:
    """A valid event's values as the archive record holds them (``timestamp`` in UTC,
    ``payload`` as ``Payload.as_record`` gives it)."""

    event_id: UUID
    user_id: str
    timestamp: datetime
    event_type: str
    payload: dict[str, Any]
    page_url: str | None

    @classmethod
    def of(cls, event: Event) -> PlainEvent:
        """The model's event, the same way. Raises OverflowError (a timestamp whose UTC
        instant is beyond year 1..9999)."""
        ts = event.timestamp
        utc = ts.replace(tzinfo=UTC) if ts.utcoffset() is None else ts.astimezone(UTC)
        payload = event.payload
        return cls(
            event.event_id, event.user_id, utc, event.event_type, payload.as_record(),
            payload.page_url,
        )  # fmt: skip


def plain_event(value: Any) -> PlainEvent | None:
    """``value`` read without pydantic when it is plainly valid (see above); None: it is
    not that plain, ``validate_events`` decides."""
    if type(value) is not dict:  # other keys are no matter: the model ignores them too
        return None
    event_id, user_id, ts = value.get("event_id"), value.get("user_id"), value.get("timestamp")
    event_type = value.get("event_type", "page_view")
    payload = value.get("payload", {})
    if not (
        type(event_id) is str and _UUID_TEXT.fullmatch(event_id)
        and type(user_id) is str and _USER_ID.fullmatch(user_id)
        and type(ts) is str and _PLAIN_TIMESTAMP.fullmatch(ts)
        and type(event_type) is str and _EVENT_TYPE.fullmatch(event_type)
        and type(payload) is dict and len(payload) <= MAX_PROPERTIES
    ):  # fmt: skip
        return None
    page_url = payload.get("page_url")
    record: dict[str, Any] = {}
    if page_url is not None:
        if type(page_url) is not str or len(page_url) > MAX_URL_LENGTH or _url_problem(page_url):
            return None
        record["page_url"] = page_url
    elif event_type == "page_view" or "page_url" in payload:
        return None
    for name, item in payload.items():
        if name in _NOT_EXTRA:
            if name == "page_url":
                continue
            return None  # revenue: the model's own rules
        kind = type(item)
        if not PROPERTY_NAME_PATTERN.match(name) or not (
            (kind is str and len(item) <= MAX_PROPERTY_STRING)
            or kind is bool
            or (kind is int and MIN_INT <= item <= MAX_INT)
            or (kind is float and math.isfinite(item))
        ):
            return None
        record[name] = item
    try:
        utc = datetime.fromisoformat(ts).astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return PlainEvent(UUID(event_id), user_id, utc, event_type, record, page_url)
