"""Command line: serve | archiver | rebuild | verify | backup | restore | loadtest | status |
goals | links | export | import | forget | deliver | sync | expire (and archive_cli's sql |
compact | funnel | retention | query)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import ValidationError

from event_analytics.config import Settings, load_settings
from event_analytics.errors import StorageUnavailable

if TYPE_CHECKING:
    from event_analytics.supervisor import Supervised

log = logging.getLogger("event_analytics")
DEFAULT_URL = "http://127.0.0.1:8000"


class _Terminated(Exception):
    """SIGTERM/SIGINT arrived after the HTTP server finished shutting down."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated(signum)


_FLAGS = ("host", "port", "data_dir", "archive_dir", "workers", "query_workers")


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment with this command's flags over it."""
    return load_settings({name: getattr(args, name, None) for name in _FLAGS})


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from event_analytics import metrics_dir, supervisor

    supervisor.prepare_titles()  # before the environment changes (metrics_dir's variable)
    if settings.ingest_slice_us:
        # Before any child or thread starts: they inherit it (the query server and the
        # forget worker go back to the default as they lower their priority).
        supervisor.set_slice(settings.ingest_slice_us)

    # First of all: every module that imports prometheus_client must see this variable,
    # the store's included, and the worker processes inherit it.
    run_dir = metrics_dir.prepare(settings.metrics_path)
    try:
        return _run_service(args, settings)
    finally:
        metrics_dir.remove(run_dir)


def _raise_fd_limit(settings: Settings) -> None:
    """Room for EA_MAX_CONNECTIONS sockets per worker (the soft limit is often 1,024):
    past the fd limit accept() fails and the cap's idle-first eviction never runs."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = settings.max_connections + 256  # engine, metrics and archive files too
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            log.warning("open files limited to %d: fewer than EA_MAX_CONNECTIONS=%d sockets",
                        new, settings.max_connections)  # fmt: skip


def _run_service(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from event_analytics.store.embedded import (
        DataDirInUse,
        DataDirLock,
        EmbeddedServer,
        EngineNotFound,
    )

    _raise_fd_limit(settings)
    engine: EmbeddedServer | None = None
    lock: DataDirLock | None = None
    archiver: Supervised | None = None
    delivery: Supervised | None = None
    expiry: Supervised | None = None
    erasures: Supervised | None = None
    # Children are started before any thread exists here, so that those running our own
    # code may be forked from this process once it has imported the app (supervisor.py);
    # each is watched (a thread) only once all have started.
    started: list[Supervised] = []
    if settings.engine_kind == "embedded":
        lock = DataDirLock(settings.data_dir)
        try:
            lock.acquire()
            engine = EmbeddedServer(
                settings.data_dir,
                inherit_fd=lock.fd,
                maxmemory=settings.engine_maxmemory,
                engine_dir=settings.engine_path,
            )
            engine.start(watch=False)
        except (DataDirInUse, EngineNotFound, RuntimeError) as exc:
            print(f"event-analytics: {exc}", file=sys.stderr)
            lock.release()
            return 1
        started.append(engine.child)
        settings = settings.model_copy(update={"redis_url": engine.url, "embedded_engine": True})
        log.info("storage: embedded engine, data in %s", Path(settings.data_dir).resolve())
    else:
        log.info(
            "storage: %s", "REDIS_CLUSTER_URL" if settings.engine_kind == "cluster" else "REDIS_URL"
        )
    # Only serve decides these (an EA_QUERY_ROLE in the environment would make the
    # public workers trust a client's X-EA-Peer).
    settings = settings.model_copy(update={"query_socket": None, "query_role": False})
    # What this process serves, and what the children forked from it run on: imported
    # once here, not again in each child.
    import event_analytics.api.app  # noqa: F401

    queries: Supervised | None = None
    if settings.query_workers:
        from event_analytics import query_server

        socket = query_server.socket_path(settings)
        settings = settings.model_copy(update={"query_socket": socket})
        queries = query_server.supervised(settings, entry=_command("query-server"))
        try:
            queries.start(watch=False)
        except RuntimeError as exc:
            print(f"event-analytics: {exc}", file=sys.stderr)
            queries.stop()
            if engine is not None:
                engine.stop()
            if lock is not None:
                lock.release()
            return 1
        started.append(queries)
    # The uvicorn workers (spawned, they inherit this environment) and the archiver run
    # with exactly these settings: the embedded engine's URL and the flags included.
    os.environ.update(settings.handoff())
    if not args.no_archiver:
        archiver = _child("archiver", "archiver")
        started.append(archiver)
    if settings.postgres_url:
        # Its own process: it reads the hour files only, so PostgreSQL never slows ingest.
        delivery = _child("postgres-delivery", "deliver")
        started.append(delivery)
    if settings.archive_retention_days:
        # Its own process, on its own clock: deleting old days never holds up the archiver.
        expiry = _child("expiry", "expire")
        started.append(expiry)
    if settings.admin_keys:
        # The erasure jobs of POST /api/v1/admin/forget: its own process (forget_worker.py),
        # so an erasure never runs on the event loop that acknowledges events.
        erasures = _child("forget-worker", "forget-worker")
        started.append(erasures)
    for child in started:
        child.watch()
    # uvicorn re-raises the signal that stopped it once it has shut down; with these
    # handlers in place that ends here, so children are stopped cleanly and we exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _raise_terminated)
    from event_analytics import logs

    try:
        uvicorn.run(
            "event_analytics.api.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            # httptools with a deadline and a size limit for request heads (api/protocol.py).
            http="event_analytics.api.protocol:GuardedHttpToolsProtocol",
            h11_max_incomplete_event_size=settings.max_header_bytes,
            log_config=logs.config(),
            log_level="info",
            # Our access log (EA_ACCESS_LOG) has the request id and no raw path.
            access_log=False,
            timeout_keep_alive=5,
            # No limit_concurrency: it counts idle sockets; ours count requests (protocol.py).
            forwarded_allow_ips=settings.forwarded_allow_ips,
        )
    except _Terminated:
        pass
    finally:
        if erasures is not None:
            erasures.stop()
        if expiry is not None:
            expiry.stop()
        if delivery is not None:
            delivery.stop()
        if archiver is not None:
            archiver.stop()
        if queries is not None:
            queries.stop()
        if engine is not None:
            engine.stop()
        if lock is not None:
            lock.release()
    return 0


def _command(name: str) -> Callable[[], int]:
    """``event-analytics NAME`` as a function: what a child forked from serve runs."""
    return lambda: main([name])


def _child(name: str, command: str) -> Supervised:
    """``event-analytics COMMAND`` as a child of serve, started (forked if it can be)."""
    from event_analytics.supervisor import Supervised

    argv = [sys.executable, "-m", "event_analytics", command]
    child = Supervised(name, argv, env=dict(os.environ), entry=_command(command))
    child.start(watch=False)
    return child


def _query_server(args: argparse.Namespace, settings: Settings) -> int:
    from event_analytics import query_server

    return query_server.run(settings)


def _archiver(args: argparse.Namespace, settings: Settings) -> int:
    from event_analytics.archive.worker import Archiver
    from event_analytics.store import IngestWriter
    from event_analytics.store.streams import StreamStore

    async def run(settings: Settings) -> int:
        import asyncio

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        store = IngestWriter.from_settings(settings)
        streams = StreamStore(store.client, store.keys)
        archiver = Archiver(settings, streams, settings.archive_path, name=args.name)
        log.info("archiver %s writing to %s", archiver.name, settings.archive_path)
        try:
            await archiver.run(stop)
        finally:
            await store.close()
        return 0

    return _with_engine(settings, run)


def _loadtest(args: argparse.Namespace, settings: Settings) -> int:
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


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from event_analytics.status import main

    return main(args.url, args.minutes)


def _bounded(kind: type[int] | type[float], low: float, high: float | None = None) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}")
        return value

    return parse


def _when(text: str) -> datetime:
    """An ISO 8601 date or date-time from the command line (naive = UTC)."""
    from event_analytics.timebucket import to_utc

    try:
        return to_utc(datetime.fromisoformat(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date or time, e.g. 2026-11-28 or 2026-11-28T13:00"
        ) from None


def _rebuild(args: argparse.Namespace, settings: Settings) -> int:
    from event_analytics.archive import files, rebuild
    from event_analytics.console import progress_bar
    from event_analytics.session import open_session

    start, end = rebuild.day_range(args.start, args.end)
    found = files.list_files(settings.archive_path, start, end)

    async def run(settings: Settings) -> int:
        async with open_session(settings) as (ingestor, streams):
            backlog = await streams.backlog()
            if backlog["stream_length"] and not args.force:
                print(
                    f"event-analytics: {backlog['stream_length']} events are not archived yet; "
                    "rebuilding now would drop them from the counters. Wait for the archiver "
                    "(GET /persistent/status) or pass --force.",
                    file=sys.stderr,
                )
                return 1
            with progress_bar("rebuild", sum(f.size_bytes for f in found)) as advance:
                report = await rebuild.rebuild(settings, ingestor.store, found, advance)
        print(
            f"rebuilt {report.days} days from {report.files} files: {report.events} events "
            f"in {report.seconds:.2f} s ({report.events_per_s:,.0f} events/s)"
            + (f", {report.unreadable} unreadable lines skipped" if report.unreadable else "")
            + (f", {report.duplicates} duplicate lines ignored" if report.duplicates else "")
        )
        return 0

    return _with_engine(settings, run)


def _verify(args: argparse.Namespace, settings: Settings) -> int:
    if args.postgres:
        from event_analytics import postgres_cli

        return postgres_cli.verify(args, settings)
    from event_analytics.archive import files
    from event_analytics.archive.verify import Difference, verify
    from event_analytics.console import print_differences
    from event_analytics.expiry_totals import set_aside
    from event_analytics.session import open_session

    start = args.start.replace(minute=0, second=0, microsecond=0) if args.start else None
    found = files.list_files(settings.archive_path, start, args.end)

    async def run(settings: Settings) -> int:
        differences: list[Difference] = []
        async with open_session(settings) as (ingestor, streams):
            backlog = await streams.backlog()
            report = await verify(ingestor.store, found, settings.minute_retention_s, differences)
        differences, note = set_aside(settings, differences, lambda d: d.minute)
        print_differences(differences)
        print(
            f"compared {report.minutes_compared} minutes ({report.events_in_archive} archived "
            f"events); {len(differences)} differ"
            + (f"; {report.unreadable} unreadable lines skipped" if report.unreadable else "")
        )
        if note:
            print(note)
        if backlog["stream_length"]:
            print(f"note: {backlog['stream_length']} events are not archived yet")
        return 1 if differences else 0

    return _with_engine(settings, run)


def _backup(args: argparse.Namespace, settings: Settings) -> int:
    from event_analytics.backup import backup, check_dest
    from event_analytics.restore import BackupError

    try:  # before an engine is started or anything paused: a bad destination costs nothing
        check_dest(args.dir)
    except BackupError as exc:
        print(f"event-analytics backup: {exc}", file=sys.stderr)
        return 1

    async def run(settings: Settings) -> int:
        try:
            m = await backup(settings, args.dir)
        except BackupError as exc:
            print(f"event-analytics backup: {exc}", file=sys.stderr)
            return 1
        print(
            f"backup in {args.dir}: {len(m['snapshots'])} engine snapshot(s), "
            f"{len(m['archive'])} archive files ({m['archive_events']} events) up to "
            f"{m['archive_watermark']}; {m['unarchived_events']} events were not archived "
            "yet (they are in the snapshot's streams)"
        )
        return 0

    return _with_engine(settings, run)


def _restore(args: argparse.Namespace, settings: Settings) -> int:
    from event_analytics.restore import BackupError, read_manifest, restore

    try:  # before an engine is started for it: a bad backup costs nothing
        manifest = read_manifest(args.dir)
    except BackupError as exc:
        print(f"event-analytics restore: {exc}", file=sys.stderr)
        return 1

    async def run(settings: Settings) -> int:
        try:
            r = await restore(settings, args.dir, manifest)
        except BackupError as exc:
            print(f"event-analytics restore: {exc}", file=sys.stderr)
            return 1
        print(
            f"restored {r.keys} keys and {r.files} archive files ({r.events} events) "
            f"from {args.dir}, applied {r.parked} cross-shard events in flight at the "
            "backup; start the service, let its archiver catch up, then verify"
        )
        return 0

    return _with_engine(settings, run)


def _with_engine(settings: Settings, run: Callable[[Settings], Coroutine[Any, Any, int]]) -> int:
    # Imported here: serve must not load the store before it sets up the metrics dir.
    from event_analytics.target import run_with_engine

    return run_with_engine(settings, run)


class _Parser(argparse.ArgumentParser):
    """argparse with its refusals on one line (not the usage first): ``--help`` has it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="event-analytics", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)  # subparsers: _Parser too

    def add_dirs(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", help="embedded engine and archive (default ./data)")
        p.add_argument("--archive-dir", help="archive root (default DATA_DIR/persistent_events)")

    serve = sub.add_parser("serve", help="run the HTTP service (embedded engine unless REDIS_URL)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=_bounded(int, 0, 65535), help="port (default 8000)")
    add_dirs(serve)
    serve.add_argument("--workers", type=_bounded(int, 1, 256), help="worker processes (default 1)")
    serve.add_argument(
        "--query-workers",
        type=_bounded(int, 0, 16),
        help="query processes for heavy reads, at a lower CPU priority (default 1; "
        "0 = heavy reads in the workers themselves)",
    )
    serve.add_argument("--no-archiver", action="store_true", help="do not run the archiver")
    serve.set_defaults(func=_serve)

    # Started by serve (--query-workers), not by hand: it answers what the workers forward.
    queries = sub.add_parser("query-server")
    queries.set_defaults(func=_query_server)

    archiver = sub.add_parser("archiver", help="archive the event streams to hourly JSONL files")
    add_dirs(archiver)
    archiver.add_argument("--name", help="consumer name (default host-pid-random)")
    archiver.set_defaults(func=_archiver)

    for name, func, text in (
        ("rebuild", _rebuild, "recompute all counters of the covered days from the archive"),
        ("verify", _verify, "compare live minute counters with the archive (exit 1 if any differ)"),
    ):
        p = sub.add_parser(name, help=text)
        add_dirs(p)
        p.add_argument("--from", dest="start", type=_when, help="ISO date/time (UTC if naive)")
        p.add_argument("--to", dest="end", type=_when, help="ISO date/time, exclusive")
        if name == "rebuild":
            p.add_argument("--force", action="store_true", help="even with unarchived events")
        else:
            p.add_argument(
                "--postgres",
                action="store_true",
                help="compare PostgreSQL (EA_POSTGRES_URL) instead",
            )
        p.set_defaults(func=func)

    for name, func, text in (
        ("backup", _backup, "write an engine snapshot and the archive, with a manifest, into DIR"),
        ("restore", _restore, "restore a backup DIR into an empty engine and archive"),
    ):
        p = sub.add_parser(name, help=text)
        add_dirs(p)
        p.add_argument("dir", type=Path, metavar="DIR")
        p.set_defaults(func=func)

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

    from event_analytics import (
        archive_cli,
        expire_cli,
        export_cli,
        forget_cli,
        goals_cli,
        import_cli,
        links_cli,
        postgres_cli,
        stats_export_cli,
    )

    archive_cli.add_commands(sub, add_dirs)
    expire_cli.add_commands(sub, add_dirs)
    goals_cli.add_commands(sub, add_dirs)
    links_cli.add_commands(sub, add_dirs)
    export_cli.add_commands(sub, add_dirs)
    forget_cli.add_commands(sub, add_dirs)
    import_cli.add_commands(sub, add_dirs)
    postgres_cli.add_commands(sub, add_dirs)
    stats_export_cli.add_commands(sub, add_dirs)
    return parser


def _variable(loc: tuple[int | str, ...]) -> str:
    """The environment variable (or flag) a settings error is about."""
    name = str(loc[0]) if loc else ""
    if not name:
        return "settings"
    return name.upper() if name.startswith("redis_") else f"EA_{name.upper()}"


def _engine_unreachable(exc: Exception) -> bool:
    """The engine did not answer. Told without importing redis: a command that never
    loaded it (status, export, sql, the bad-argument exits) cannot have raised its errors,
    and importing it (with asyncio) cost each such call ~0.35 s of CPU."""
    errors = sys.modules.get("redis.exceptions")
    if errors is not None and isinstance(exc, errors.ConnectionError | errors.TimeoutError):
        return True
    return isinstance(exc, StorageUnavailable)


def main(argv: Sequence[str] | None = None) -> int:
    from event_analytics import logs

    logs.configure()
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ValidationError as exc:
        reasons = "; ".join(f"{_variable(e['loc'])}: {e['msg']}" for e in exc.errors())
        print(f"event-analytics: invalid configuration: {reasons}", file=sys.stderr)
        return 2
    try:
        code: int = args.func(args, settings)
    except Exception as exc:
        if not _engine_unreachable(exc):
            raise
        # The engine named by REDIS_URL / REDIS_CLUSTER_URL does not answer: a runtime
        # failure with one line, not a traceback.
        why = " ".join(str(exc.__cause__ or exc).split())
        print(
            f"event-analytics {args.command}: the engine is unreachable ({why}): check "
            "REDIS_URL / REDIS_CLUSTER_URL",
            file=sys.stderr,
        )
        return 1
    return code
