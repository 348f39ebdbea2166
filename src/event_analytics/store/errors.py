"""Redis/Valkey errors translated into the domain's: an outage, a refusal, a full engine,
a cluster still forming (``errors.py``), each counted in the engine error metric.

redis-py already maps most reply codes to exception classes: they are used as they are,
and only the codes it has no class for are read from the reply's first word.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator

from redis import exceptions as rx

from event_analytics import telemetry
from event_analytics.errors import (
    ClusterForming,
    EngineFull,
    EngineRefused,
    StorageOutcomeUnknown,
    StorageUnavailable,
)

# Replies meaning "the engine cannot serve this now; the same request may succeed later".
# redis-py maps each reply code to its own class (LOADING, a ConnectionError subclass, is
# caught as unreachable before these).
_BUSY = (
    rx.ReadOnlyError,  # READONLY: a replica, or a master demoted by a failover
    rx.ClusterError,  # CLUSTERDOWN, MASTERDOWN, and the cluster client's own give-ups
    rx.TryAgainError,  # TRYAGAIN: a slot migrating
    rx.AskError,
    rx.SlotNotCoveredError,  # no master serves the slot (a failover in progress)
    # The script did not run (flushed, or an engine restart lost it, between the load and
    # the call): nothing was written, and the next call loads it again.
    rx.NoScriptError,
)
# The two transient replies redis-py has no class for: they arrive as ResponseError with
# the code as the first word.
_BUSY_UNMAPPED = ("MISCONF", "NOREPLICAS")
# Replies refusing this client whatever it retries (the engine runs, its configuration
# keeps the service out), with what the operator does about each. DENIED arrives as a
# plain ResponseError to the first command of a connection; NOAUTH and WRONGPASS as
# AuthenticationError (a ConnectionError), NOPERM as NoPermissionError.
_REFUSED = {
    "DENIED": (
        "it runs in protected mode (no password for its default user, and the service "
        "connects from another address than loopback): give the engine a password "
        "(requirepass, or an ACL user) and put it in REDIS_URL (redis://:PASSWORD@host:port), "
        "or bind it to a trusted network with protected-mode no"
    ),
    "NOAUTH": "it requires a password: put it in REDIS_URL (redis://:PASSWORD@host:port)",
    "WRONGPASS": "the user or password in REDIS_URL is not the engine's: correct them",
    "NOPERM": (
        "the ACL user in REDIS_URL lacks a command or key permission: grant it the "
        "service's keys (~PREFIX*) and commands (docs/deploy.md)"
    ),
}


# redis-py raises a bare RedisClusterException when no seed node answers at all.
_CLUSTER_UNREACHABLE = "Redis Cluster cannot be connected"
_CLUSTER_UNCOVERED = "All slots are not covered"  # ... 8001 of 16384 covered...
_CONNECTION_CODE = ("redis/asyncio/connection.py", "uvloop/", "asyncio/streams.py")


def _raised_in_connection(exc: BaseException) -> bool:
    """Whether ``exc`` came from the socket layer of the client (not from our code)."""
    return any(part in _raised_in(exc) for part in _CONNECTION_CODE)


def _raised_in(exc: BaseException) -> str:
    """The file of the innermost frame ``exc`` was raised in."""
    tb, where = exc.__traceback__, ""
    while tb is not None:
        where, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    return where


def _sent(exc: BaseException) -> bool:
    """Whether a connection error may have come after the command was sent.

    redis-py says "... connecting to ..." when it never got a connection, so nothing
    was sent; any other connection error or timeout may follow a command the engine ran.
    """
    return "connecting to" not in str(exc)


@contextlib.asynccontextmanager
async def engine_errors(*, write: bool = False) -> AsyncIterator[None]:
    """Turn an outage of the engine into StorageUnavailable (HTTP 503 in the API).

    ``write``: a lost reply of a write is StorageOutcomeUnknown, never "nothing stored".
    """
    try:
        yield
    except (rx.AuthenticationError, rx.NoPermissionError) as exc:
        # Before ConnectionError, AuthenticationError's base: not an outage, a refusal.
        raise _refused(exc) from exc
    except (rx.ConnectionError, rx.TimeoutError, OSError) as exc:
        telemetry.engine_error("unreachable")
        if write and _sent(exc):
            raise StorageOutcomeUnknown(f"storage did not answer: {type(exc).__name__}") from exc
        raise StorageUnavailable(f"storage unreachable: {type(exc).__name__}") from exc
    except rx.OutOfMemoryError as exc:
        # OOM: at maxmemory with noeviction. A script is refused at its first write, so
        # nothing of it was written.
        telemetry.engine_error("full")
        raise EngineFull("storage full: OOM") from exc
    except _BUSY as exc:
        telemetry.engine_error("busy")
        code = getattr(exc, "status_code", None) or type(exc).__name__
        raise StorageUnavailable(f"storage busy: {code}") from exc
    except rx.ResponseError as exc:
        code = str(exc).split(" ", 1)[0]
        if code in _BUSY_UNMAPPED:
            telemetry.engine_error("busy")
            raise StorageUnavailable(f"storage busy: {code}") from exc
        if code in _REFUSED:
            raise _refused(exc) from exc
        raise
    except KeyError as exc:
        # redis-py's cluster pipeline looks a key's slot up in its slot map unchecked: a
        # slot no master serves (a cluster still forming) raises KeyError, where a single
        # command raises SlotNotCoveredError. Nothing was sent for it.
        if not _raised_in(exc).endswith("redis/asyncio/cluster.py"):
            raise
        telemetry.engine_error("busy")
        raise ClusterForming("unknown", None) from exc
    except (RuntimeError, AttributeError) as exc:
        # When a node dies, redis-py's cluster client may close a pooled connection while
        # another request is writing to it: uvloop then raises RuntimeError ("handler is
        # closed"), or the connection's writer is already None (AttributeError). redis-py
        # has no class for these, so where they were raised tells them from a bug of ours.
        # The request was not answered by the engine: a 503 (retry) is the truthful reply.
        if not _raised_in_connection(exc):
            raise
        telemetry.engine_error("unreachable")
        if write:
            raise StorageOutcomeUnknown("storage did not answer: connection closed") from exc
        raise StorageUnavailable("storage unreachable: connection closed") from exc
    except rx.RedisClusterException as exc:
        if str(exc).startswith(_CLUSTER_UNCOVERED):
            telemetry.engine_error("busy")
            covered = re.search(r"(\d+) of 16384", str(exc))
            raise ClusterForming("fail", int(covered[1]) if covered else None) from exc
        if str(exc).startswith(_CLUSTER_UNREACHABLE):
            telemetry.engine_error("unreachable")
            raise StorageUnavailable("storage unreachable: no cluster node answers") from exc
        raise


def _refused(exc: rx.RedisError) -> EngineRefused:
    telemetry.engine_error("refused")
    code = str(exc).split(" ", 1)[0]
    if code not in _REFUSED:  # redis-py replaced the code by its own words
        if isinstance(exc, rx.NoPermissionError):
            code = "NOPERM"
        elif "authenticated" in str(exc) or "required" in str(exc):
            # NOAUTH: "HELLO must be called with the client already authenticated ...",
            # or "Authentication required." to a first command
            code = "NOAUTH"
        else:  # "invalid username-password pair ..." (WRONGPASS)
            code = "WRONGPASS"
    return EngineRefused(code, _REFUSED[code])
