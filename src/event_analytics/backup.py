"""``backup DEST``: a consistent, restorable copy of a running service.

What a backup holds, taken while every archiver is paused (a key with a TTL, see
``StreamStore.pause``; they confirm in their heartbeats, between batches), so that
nothing moves from the streams to the archive between the two copies:

1. The archive's hourly files, each cut at its last complete line (the watermark).
2. The engine's data: one RDB snapshot per master, pulled with ``valkey-cli --rdb``
   (the replication protocol: the engine forks and streams a point-in-time RDB). RDB,
   not AOF files: one self-contained file per master, taken from a remote engine or a
   container as easily as from the embedded one, never half-rewritten (multi-part AOF
   files change under a copy while the engine rewrites them), and smaller. Events
   ingested meanwhile are in the snapshot's counters and streams, not in the archive
   copy: after a restore the archiver archives them, as it would have.
3. ``manifest.json`` last, with the size, SHA-256 and (archive) event count of every
   file: a backup without a manifest is incomplete.

``restore`` (``restore.py``) checks the manifest and every file, then loads them into an
empty engine and archive directory.

A cluster's masters are snapshotted at once, yet not at one instant, so a backup
taken under load holds events in flight between shards (docs/dedup.md): claimed in their
id shard's outbox, and applied on their user's shard or not, depending on which master's
snapshot came first. ``restore`` applies every such parked event before it returns (the
sweeper's idempotent step 2 and 3): the restored engine starts settled, its counters and
streams final, instead of changing under the first readers when the new service's sweeper
runs 5 s after its start (that race made the backup test fail now and then: counters read
before the sweep, archive files after it).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis.asyncio.cluster import RedisCluster

from event_analytics.archive import files
from event_analytics.config import Settings
from event_analytics.restore import FORMAT, MANIFEST, BackupError, sha256_of, write_durably
from event_analytics.store import IngestWriter
from event_analytics.store.embedded import find_server_binary
from event_analytics.store.errors import engine_errors
from event_analytics.store.pause import PauseFailed, archivers_paused
from event_analytics.store.streams import StreamStore
from event_analytics.timebucket import iso_z

SNAPSHOT_TIMEOUT_S = 3600.0
PAUSE_WAIT_S = 30.0


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str  # relative to the backup directory
    bytes: int
    sha256: str
    events: int | None = None  # archive files: complete lines


def _cli() -> str:
    """valkey-cli beside the bundled server, else one on PATH (redis-cli works too)."""
    beside = Path(find_server_binary()).with_name("valkey-cli")
    for candidate in (str(beside), shutil.which("valkey-cli"), shutil.which("redis-cli")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BackupError("no valkey-cli or redis-cli found (it pulls the engine's snapshot)")


def _cli_args(
    kwargs: dict[str, Any], host: str | None = None, port: int | str | None = None
) -> list[str]:
    """valkey-cli options reaching one node with the client's credentials."""
    if kwargs.get("path"):
        where = ["-s", str(kwargs["path"])]
    else:
        where = ["-h", str(host or kwargs.get("host", "localhost")),
                 "-p", str(port or kwargs.get("port", 6379))]  # fmt: skip
    if kwargs.get("username"):
        where += ["--user", str(kwargs["username"])]
    if kwargs.get("password"):
        where += ["--pass", str(kwargs["password"]), "--no-auth-warning"]
    return where


async def _masters(store: IngestWriter) -> list[tuple[str, list[str]]]:
    """(node, valkey-cli options) of the node, or of each master of a cluster."""
    client = store.client
    if isinstance(client, RedisCluster):
        await client.initialize()
        kwargs = client.get_connection_kwargs()
        return [(n.name, _cli_args(kwargs, n.host, n.port)) for n in client.get_primaries()]
    kwargs = client.connection_pool.connection_kwargs
    node = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
    return [(str(node), _cli_args(kwargs))]


def _snapshot(cli: str, args: list[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([cli, *args, "--rdb", str(target)], capture_output=True,
                          text=True, timeout=SNAPSHOT_TIMEOUT_S)  # fmt: skip
    if done.returncode != 0 or not target.exists():
        raise BackupError(f"snapshot failed: {(done.stderr or done.stdout).strip()[-500:]}")


def _copy_cut(source: Path, target: Path) -> int:
    """Copy ``source`` up to its last complete line; the number of lines."""
    data = source.read_bytes()
    data = data[: data.rfind(b"\n") + 1]
    write_durably(target, data)
    return data.count(b"\n")


async def _on_record(
    store: IngestWriter, dest: str, started: datetime, watermark: datetime
) -> None:
    entry = {"dir": dest, "started_at": iso_z(started),
             "archive_watermark": iso_z(watermark)}  # fmt: skip
    async with engine_errors():
        await store.client.rpush(store.keys.backups(), json.dumps(entry))


_PAUSE_FAILED = {
    "busy": "another backup is running (the archive is paused for it)",
    "not_paused": "archivers {} did not pause within "
    f"{PAUSE_WAIT_S:.0f} s (an older version?): nothing was backed up",
    "expired": "the archive pause expired during the backup",
}


def check_dest(dest: Path) -> None:
    """BackupError unless ``dest`` is missing or an empty directory (checked before
    anything is paused or snapshotted: a bad destination fails first, nothing done)."""
    if dest.is_symlink() and not dest.exists():
        raise BackupError(f"{dest} is a symbolic link to nothing: name a new directory")
    if dest.exists() and not dest.is_dir():
        raise BackupError(f"{dest} exists and is not a directory: name a new directory")
    if dest.is_dir() and any(dest.iterdir()):
        raise BackupError(f"{dest} is not empty: back up into a new directory")


def _prepare_dest(dest: Path) -> str:
    """``dest`` as an empty directory, made if missing; its absolute path."""
    check_dest(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot make {dest}: {exc.strerror}") from None
    return str(dest.resolve())


def _file_entry(dest: Path, path: Path, events: int | None = None) -> dict[str, Any]:
    return asdict(
        FileEntry(str(path.relative_to(dest)), path.stat().st_size, sha256_of(path), events)
    )


def _copy_archive(root: Path, dest: Path) -> list[dict[str, Any]]:
    """Every archive file, cut at its last complete line, into ``dest``/archive."""
    entries = []
    for found in files.list_files(root):
        target = dest / "archive" / found.relative
        entries.append(_file_entry(dest, target, _copy_cut(found.path, target)))
    return entries


async def backup(settings: Settings, dest: Path) -> dict[str, Any]:
    """Write a backup of the engine the settings name, and of its archive, into ``dest``."""
    url = settings.redis_cluster_url or settings.redis_url or ""
    if url.startswith("rediss://"):
        # valkey-cli --rdb would need --tls and the client's certificates: not wired yet.
        raise BackupError(
            "backup over TLS (rediss://) is not supported: the snapshot is pulled with "
            "valkey-cli --rdb without TLS. Run it against a plain-TCP port of the engine "
            "(or of each master) reachable from a trusted host; nothing was backed up"
        )
    where = _prepare_dest(dest)
    started = datetime.now(UTC)
    store = IngestWriter.from_settings(settings)
    streams = StreamStore(store.client, store.keys)
    owner = f"backup-{os.getpid()}-{time.time_ns()}"
    try:
        engine = await store.engine_info()
        masters = await _masters(store)
        cli = _cli()
        ttl_ms = int(settings.backup_pause_ttl_s * 1000)
        # The pause follows the backup's duration: renewed while it runs, it expires by
        # itself EA_BACKUP_PAUSE_TTL_S after a backup that died (archivers write nothing
        # while it lasts: the archive lag grows by the backup's time).
        fresh_s = 3 + settings.archiver_lease_s
        try:
            async with archivers_paused(streams, owner, ttl_ms, fresh_s, PAUSE_WAIT_S):
                # Nothing is archived from here until resume: the archive copy and the
                # snapshots' streams hold every event exactly once between them.
                watermark = datetime.now(UTC)
                archive = await asyncio.to_thread(_copy_archive, settings.archive_path, dest)
                # On record as soon as it holds events: an erasure names it as holding them.
                await _on_record(store, where, started, watermark)
                backlog = await streams.backlog()
                # All masters at once: each waits repl-diskless-sync-delay (5 s by
                # default) before it streams, so one after the other held the pause
                # for that wait times the masters.
                paths = [dest / "engine" / f"node-{i}.rdb" for i in range(len(masters))]
                await asyncio.gather(*(
                    asyncio.to_thread(_snapshot, cli, args, path)
                    for (_, args), path in zip(masters, paths, strict=True)
                ))  # fmt: skip
                snapshots = [
                    _file_entry(dest, path) | {"node": node}
                    for (node, _), path in zip(masters, paths, strict=True)
                ]
        except PauseFailed as exc:
            raise BackupError(_PAUSE_FAILED[exc.kind].format(", ".join(exc.waiting))) from None
    finally:
        await store.close()
    manifest = {
        "format": FORMAT,
        "started_at": iso_z(started),
        "archive_watermark": iso_z(watermark),
        "engine": {k: engine[k] for k in ("engine", "version") if k in engine},
        "cluster": settings.engine_kind == "cluster",
        "key_prefix": settings.key_prefix,
        "shards": settings.shards,
        "unarchived_events": backlog["stream_length"],
        "snapshots": snapshots,
        "archive": archive,
        "archive_events": sum(f["events"] for f in archive),
    }
    write_durably(dest / MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n")
    return manifest
