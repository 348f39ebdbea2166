"""Structured logs: one JSON object per line, with the request id of the request being served.

Log lines never carry a user id, a page URL or an API key. Our own messages name none;
an exception's message may quote input (pydantic's does), so only the messages of
exceptions known to quote none (I/O and engine errors) are written, and for any other
only its type and the frames of its traceback.
"""

from __future__ import annotations

import contextvars
import logging
import traceback
from datetime import UTC, datetime
from typing import Any

import orjson

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else came in through ``extra=`` and is written.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
# uvicorn passes these to its own formatters; they repeat the message.
_SKIPPED = frozenset({"color_message"})


def _safe_message(exc: BaseException) -> bool:
    from redis.exceptions import RedisError

    from event_analytics.errors import StorageUnavailable

    return isinstance(exc, OSError | TimeoutError | RedisError | StorageUnavailable)


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "request_id"?, extras..., "exc"?}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[
                :-6
            ]
            + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            line["request_id"] = rid
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name not in _SKIPPED and not name.startswith("_"):
                line[name] = value
        if record.exc_info and record.exc_info[1] is not None:
            line["exc"] = describe(record.exc_info[1])
        return orjson.dumps(line, default=str).decode()


def describe(exc: BaseException) -> dict[str, Any]:
    """An exception for the log: type, frames, and the message only when it is safe."""
    frames = traceback.extract_tb(exc.__traceback__)[-12:]
    out: dict[str, Any] = {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "frames": [f"{f.filename}:{f.lineno} {f.name}" for f in frames],
    }
    if _safe_message(exc):
        out["message"] = str(exc)[:500]
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc:
        out["cause"] = f"{type(cause).__module__}.{type(cause).__qualname__}"
    return out


def config(level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the service, uvicorn's loggers included.

    Given to uvicorn as ``log_config``: each worker process applies it when it starts.
    """
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            # Their own handlers would print a second, plain line.
            name: {"handlers": [], "propagate": True, "level": level}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def configure(level: str = "INFO") -> None:
    """JSON logs on stderr for this process."""
    import logging.config

    logging.config.dictConfig(config(level))
