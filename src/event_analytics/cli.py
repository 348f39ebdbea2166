"""Command line: ``event-analytics serve`` (more commands join as they are built)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from event_analytics.config import Settings

log = logging.getLogger("event_analytics")
DEFAULT_URL = "http://127.0.0.1:8000"


class _Terminated(Exception):
    """SIGTERM/SIGINT arrived after the HTTP server finished shutting down."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated(signum)


def _serve(args: argparse.Namespace) -> int:
    # Flags become environment variables so that every uvicorn worker process,
    # which builds its own Settings, sees the same configuration.
    overrides = {
        "EA_HOST": args.host,
        "EA_PORT": args.port,
        "EA_DATA_DIR": args.data_dir,
        "EA_WORKERS": args.workers,
    }
    for name, value in overrides.items():
        if value is not None:
            os.environ[name] = str(value)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"event-analytics: invalid configuration:\n{exc}", file=sys.stderr)
        return 2

    from event_analytics import metrics_dir

    # First of all: every module that imports prometheus_client must see this variable,
    # the store's included, and the worker processes inherit it.
    run_dir = metrics_dir.prepare(settings.data_dir)
    try:
        return _run_service(settings)
    finally:
        metrics_dir.remove(run_dir)


def _run_service(settings: Settings) -> int:
    import uvicorn

    from event_analytics.store.embedded import (
        DataDirInUse,
        DataDirLock,
        EmbeddedServer,
        EngineNotFound,
    )

    engine: EmbeddedServer | None = None
    lock: DataDirLock | None = None
    if settings.redis_url is None:
        lock = DataDirLock(settings.data_dir)
        try:
            lock.acquire()
            engine = EmbeddedServer(settings.data_dir, inherit_fd=lock.fd)
            engine.start()
        except (DataDirInUse, EngineNotFound, RuntimeError) as exc:
            print(f"event-analytics: {exc}", file=sys.stderr)
            lock.release()
            return 1
        os.environ["EA_REDIS_URL"] = engine.url
        os.environ["EA_EMBEDDED_ENGINE"] = "1"
        log.info("storage: embedded engine, data in %s", Path(settings.data_dir).resolve())
    else:
        log.info("storage: REDIS_URL")
    # uvicorn re-raises the signal that stopped it once it has shut down; with these
    # handlers in place that ends here, so the engine is stopped cleanly and we exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _raise_terminated)
    try:
        uvicorn.run(
            "event_analytics.api.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level="info",
            access_log=False,
            timeout_keep_alive=5,
        )
    except _Terminated:
        pass
    finally:
        if engine is not None:
            engine.stop()
        if lock is not None:
            lock.release()
    return 0


def _loadtest(args: argparse.Namespace) -> int:
    from event_analytics.loadtest import Options, main

    options = Options(
        url=args.url,
        events=args.events,
        concurrency=args.concurrency,
        batch=args.batch,
        rate=args.rate,
        duplicates=args.duplicates,
        users=args.users,
        seed=args.seed,
        timeout_s=args.timeout,
    )
    return main(options)


def _status(args: argparse.Namespace) -> int:
    from event_analytics.status import main

    return main(args.url, args.minutes)


def _bounded(kind: type[int] | type[float], low: float, high: float | None = None) -> Any:
    def parse(text: str) -> int | float:
        value = kind(text)
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="event-analytics", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service (embedded engine unless REDIS_URL)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--data-dir", help="embedded engine and archive files (default ./data)")
    serve.add_argument("--workers", type=int, help="worker processes (default 1)")
    serve.set_defaults(func=_serve)

    load = sub.add_parser(
        "loadtest",
        help="send page views, report throughput and latency, check the counts (exit 0 = PASS)",
    )
    load.add_argument("--url", default=DEFAULT_URL, help=f"service URL (default {DEFAULT_URL})")
    load.add_argument("--events", type=_bounded(int, 1), default=1000, help="events to send")
    load.add_argument(
        "--concurrency", type=_bounded(int, 1, 1024), default=32, help="connections (default 32)"
    )
    load.add_argument(
        "--batch", type=_bounded(int, 1, 1000), help="events per POST /events/batch request"
    )
    load.add_argument(
        "--rate", type=_bounded(float, 0), default=0.0, help="events/s over all connections"
    )
    load.add_argument(
        "--duplicates",
        type=_bounded(float, 0, 0.99),
        default=0.0,
        help="share of events that resend an earlier one (must come back as duplicates)",
    )
    load.add_argument("--users", type=_bounded(int, 1), default=100, help="distinct users u0..")
    load.add_argument("--seed", type=int, help="random seed for users, pages and resends")
    load.add_argument(
        "--timeout", type=_bounded(float, 0.1), default=10.0, help="per request, seconds"
    )
    load.set_defaults(func=_loadtest)

    status = sub.add_parser(
        "status", help="health, the last minutes' counts and the archive (exit 1 = not ready)"
    )
    status.add_argument("--url", default=DEFAULT_URL, help=f"service URL (default {DEFAULT_URL})")
    status.add_argument("--minutes", type=_bounded(int, 1, 1440), default=10, help="minutes shown")
    status.set_defaults(func=_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
