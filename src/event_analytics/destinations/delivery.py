"""The delivery loop: the archive's hour files -> PostgreSQL, exactly once, forever.

It runs as its own process (``event-analytics deliver``, started and restarted by
``serve`` when EA_POSTGRES_URL is set) and only reads the hour files, so ingest and
the archiver never wait for PostgreSQL. Each pass lists the files and sends, per file,
the complete lines past the recorded offset, one transaction per batch (postgres.py).
While PostgreSQL is unreachable it retries with backoff; the lag grows and is written
to a small status file that /persistent/status and /metrics read.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg

from event_analytics.archive import files, record
from event_analytics.config import Settings
from event_analytics.destinations import postgres
from event_analytics.destinations.postgres import Progress
from event_analytics.destinations.status import status_path
from event_analytics.timebucket import iso_z

log = logging.getLogger(__name__)
IDLE_S = 0.5
STATUS_EVERY_S = 1.0
MAX_BACKOFF_S = 10.0


class Delivery:
    """Delivers every hour file under the archive root until ``stop`` is set."""

    def __init__(self, settings: Settings) -> None:
        assert settings.postgres_url, "EA_POSTGRES_URL is not set"
        self.settings = settings
        self.url = settings.postgres_url
        self.root = settings.archive_path
        self.conn: psycopg.Connection[Any] | None = None
        self.done: dict[str, Progress] | None = None  # None until read from PostgreSQL
        # Per file: (bytes counted from the start, lines in them), seeded with what was
        # delivered, so that only undelivered bytes are ever read to count the lag.
        self._counted: dict[Path, tuple[int, int]] = {}
        self.state = "starting"
        self.last_error: str | None = None
        self.events_delivered = 0
        self.events_skipped = 0  # already in the table (ON CONFLICT) or unreadable
        self.last_delivery: float | None = None
        self.lag: tuple[int, float] | None = None
        self._status_at = 0.0
        self._shrunk: set[str] = set()

    def run(self, stop: threading.Event) -> None:
        backoff = 0.2
        while not stop.is_set():
            try:
                if self.conn is None:
                    self._connect()
                busy = self._pass(stop)
                backoff = 0.2
                self._set("running")
            except (psycopg.Error, OSError) as exc:
                self._fail(exc)
                busy = False
                stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            self._write_status()
            if not busy:
                stop.wait(IDLE_S)
        self._close()
        self._set("stopped")
        self._write_status(force=True)

    def _connect(self) -> None:
        self.conn = postgres.connect(self.url)
        postgres.ensure_schema(self.conn)
        self.done = postgres.progress(self.conn)
        log.info("delivering the archive to PostgreSQL (%d hour files on record)", len(self.done))

    def _close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
        self.conn = None

    def _fail(self, exc: Exception) -> None:
        self._close()
        reachable = not isinstance(exc, psycopg.OperationalError)
        self._set("blocked" if reachable else "unreachable")
        self.last_error = postgres.describe(exc, self.url)
        log.warning("PostgreSQL delivery %s: %s", self.state, self.last_error)
        with contextlib.suppress(OSError):
            self._measure_lag()

    def _set(self, state: str) -> None:
        if state == "running" and self.state != "running":
            self.last_error = None
        self.state = state

    def _pass(self, stop: threading.Event) -> bool:
        """One batch from each file with lines not yet delivered; whether any was sent."""
        assert self.conn is not None and self.done is not None
        busy = False
        listed = files.list_files(self.root)
        for found in listed:
            if stop.is_set():
                break
            at = self.done.get(found.relative, Progress(0, 0))
            inode = _inode(found.path)
            if at.inode is not None and inode is not None and inode != at.inode:
                # Rewritten by an erasure (a new file under the name): the hour again,
                # whole, from the new file, in one transaction with its record.
                self._resync(found)
                busy = True
                continue
            if found.size_bytes < at.offset:
                if found.relative not in self._shrunk:
                    self._shrunk.add(found.relative)
                    log.error("%s is shorter than what was delivered from it: skipped "
                              "(re-deliver it with `sync --postgres`)", found.relative)  # fmt: skip
                continue
            data, read_from = _whole_lines(
                found.path, at.offset, self.settings.postgres_batch_bytes
            )
            if not data:
                continue
            done = postgres.deliver(
                self.conn, found.relative, found.hour, data, at, self._crash_point, read_from
            )
            if done is None:  # recorded elsewhere meanwhile (a sync): start from the record
                self.done = postgres.progress(self.conn)
            else:
                progress, inserted = done
                self.events_delivered += inserted
                self.events_skipped += progress.lines - at.lines - inserted
                self.done[found.relative] = progress
                self.last_delivery = time.time()
            busy = True
            self._write_status()
        self._measure_lag(listed)
        return busy

    def _resync(self, found: files.ArchiveFile) -> None:
        assert self.conn is not None and self.done is not None
        size = settled_size(found.path)
        if size is None:
            return  # an archiver is writing it: next pass
        removed, inserted = postgres.resync(self.conn, found, size)
        log.info("%s was rewritten: its hour delivered again (%d rows before, %d now)",
                 found.relative, removed, inserted)  # fmt: skip
        self.done = postgres.progress(self.conn)
        self._counted.pop(found.path, None)

    def _measure_lag(self, listed: list[files.ArchiveFile] | None = None) -> None:
        """Events not delivered yet, and the age (since it was received) of the oldest."""
        if self.done is None:
            self.lag = None
            return
        behind = 0
        oldest: float | None = None
        for found in files.list_files(self.root) if listed is None else listed:
            at = self.done.get(found.relative, Progress(0, 0))
            try:
                waiting = self._lines(found, at) - at.lines
                if waiting <= 0:
                    continue
                if oldest is None:
                    oldest = _received_at(found.path, at.offset) or found.modified
            except FileNotFoundError:
                continue  # deleted since it was listed (retention, expiry.py)
            behind += waiting
        self.lag = (behind, max(0.0, time.time() - oldest) if oldest is not None else 0.0)

    def _lines(self, found: files.ArchiveFile, at: Progress) -> int:
        """Complete lines in the file: the delivered ones (known) plus those counted in
        the bytes after them, read once each (a file that was cut back is recounted)."""
        upto, lines = self._counted.get(found.path, (at.offset, at.lines))
        if upto < at.offset or found.size_bytes < upto:
            upto, lines = at.offset, at.lines
        if found.size_bytes > upto:
            with found.path.open("rb") as handle:
                handle.seek(upto)
                pos = upto
                while pos < found.size_bytes:  # in blocks: a backlog is never read whole
                    chunk = handle.read(min(found.size_bytes - pos, 1 << 20))
                    if not chunk:
                        break
                    if (n := chunk.count(b"\n")) > 0:
                        lines += n
                        upto = pos + chunk.rfind(b"\n") + 1  # a partial tail: next time
                    pos += len(chunk)
        self._counted[found.path] = (upto, lines)
        return lines

    def _crash_point(self, point: str) -> None:
        """Fault injection for the crash tests: die by SIGKILL at ``point``."""
        if self.settings.postgres_crash_at == point:
            os.kill(os.getpid(), signal.SIGKILL)

    def status(self) -> dict[str, Any]:
        return {
            "destination": "postgres",
            "state": self.state,
            "events_behind": self.lag[0] if self.lag else None,
            "seconds_behind": round(self.lag[1], 3) if self.lag else None,
            "events_delivered": self.events_delivered,
            "events_already_there": self.events_skipped,
            "last_delivery": iso_z(datetime.fromtimestamp(self.last_delivery, UTC))
            if self.last_delivery
            else None,
            "last_error": self.last_error,
            "heartbeat": time.time(),
            "pid": os.getpid(),
        }

    def _write_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._status_at < STATUS_EVERY_S:
            return
        self._status_at = now
        path = status_path(self.settings)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            scratch = path.with_name(f".{path.name}.{os.getpid()}")
            scratch.write_bytes(orjson.dumps(self.status()))
            os.replace(scratch, path)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)


def settled_size(path: Path) -> int | None:
    """The file's size at an instant no archiver is writing it, or None if one is now.

    The archiver appends and fsyncs under an exclusive flock, and a failed append is cut
    back to its old size before the lock is released (archive/files.py): bytes below a
    size seen under a shared lock never change, while bytes past it may still vanish.
    Non-blocking, so the delivery never holds up the archiver, nor waits for it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        return os.fstat(fd).st_size
    finally:
        os.close(fd)  # releases the lock


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _whole_lines(path: Path, offset: int, limit: int) -> tuple[bytes, int | None]:
    """Complete, settled lines from ``offset``: about ``limit`` bytes, at least one line;
    and the inode of the file they were read from."""
    size = settled_size(path)
    if size is None or size <= offset:
        return b"", None
    with path.open("rb") as handle:
        inode = os.fstat(handle.fileno()).st_ino
        handle.seek(offset)
        data = handle.read(min(limit, size - offset))
        while data and b"\n" not in data and offset + len(data) < size:  # a very long line
            data += handle.read(min(limit, size - offset - len(data)))
    return data[: data.rfind(b"\n") + 1], inode


def _received_at(path: Path, offset: int) -> float | None:
    with path.open("rb") as handle:
        handle.seek(offset)
        line = handle.readline()
    try:
        rec = record.decode(line)
    except record.InvalidRecord:
        return None
    stamp = rec.received_at or rec.timestamp
    return stamp.timestamp()
