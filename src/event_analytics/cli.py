"""Command line: ``event-analytics serve`` (more commands join as they are built)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from event_analytics.config import Settings

log = logging.getLogger("event_analytics")


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="event-analytics", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service (embedded engine unless REDIS_URL)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--data-dir", help="embedded engine and archive files (default ./data)")
    serve.add_argument("--workers", type=int, help="worker processes (default 1)")
    serve.set_defaults(func=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
