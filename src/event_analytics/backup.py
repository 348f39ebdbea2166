"""``backup DEST`` and ``restore SOURCE``: a consistent, restorable copy of a running service.

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

``restore`` checks every checksum, refuses an engine or archive that is not empty, copies
the archive files and loads each snapshot into a private engine process from which its
keys are copied (DUMP/RESTORE, with their TTLs) into the target: a single node or a
cluster with the same ``EA_KEY_PREFIX`` and ``EA_SHARDS``. Archiver leases and rate-limit
windows are not restored (they belong to processes of the old deployment).

A cluster's masters are snapshotted one after the other, not at one instant, so a backup
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
import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from event_analytics.archive import files
from event_analytics.config import Settings
from event_analytics.store import IngestWriter
from event_analytics.store.embedded import find_server_binary
from event_analytics.store.streams import StreamStore
from event_analytics.timebucket import iso_z

MANIFEST = "manifest.json"
FORMAT = 1
SNAPSHOT_TIMEOUT_S = 3600.0
PAUSE_WAIT_S = 30.0
COPY_BATCH = 200
# Rounds of outbox sweeping on restore (each applies up to 1,000 events per shard).
PARKED_ROUNDS = 1000


class BackupError(Exception):
    """A backup or restore that cannot go on; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str  # relative to the backup directory
    bytes: int
    sha256: str
    events: int | None = None  # archive files: complete lines


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_durably(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


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
    _write_durably(target, data)
    return data.count(b"\n")


def _require_empty(dest: Path) -> None:
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} is not empty: back up into a new directory")


def _file_entry(dest: Path, path: Path, events: int | None = None) -> dict[str, Any]:
    return asdict(
        FileEntry(str(path.relative_to(dest)), path.stat().st_size, _sha256(path), events)
    )


def _copy_archive(root: Path, dest: Path) -> list[dict[str, Any]]:
    """Every archive file, cut at its last complete line, into ``dest``/archive."""
    entries = []
    for found in files.list_files(root):
        target = dest / "archive" / found.relative
        entries.append(_file_entry(dest, target, _copy_cut(found.path, target)))
    return entries


async def _wait_paused(streams: StreamStore, since: float, fresh_s: float) -> None:
    """Until every live archiver has said "paused" in a heartbeat sent after ``since``."""
    deadline = time.monotonic() + PAUSE_WAIT_S
    while True:
        live = await streams.archivers(fresh_s=fresh_s)
        waiting = [
            name
            for name, status in live.items()
            if status.get("state") != "paused" or float(status.get("heartbeat", 0)) < since
        ]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise BackupError(
                f"archivers {', '.join(sorted(waiting))} did not pause within "
                f"{PAUSE_WAIT_S:.0f} s (an older version?): nothing was backed up"
            )
        await asyncio.sleep(0.1)


async def _keep_paused(streams: StreamStore, owner: str, ttl_ms: int) -> None:
    """Renew the pause every third of its TTL; if it was lost (expired under an engine
    outage longer than the TTL), the backup cannot be consistent: say so."""
    while True:
        await asyncio.sleep(ttl_ms / 3000)
        if not await streams.renew_pause(owner, ttl_ms):
            raise BackupError("the archive pause expired during the backup")


async def backup(settings: Settings, dest: Path) -> dict[str, Any]:
    """Write a backup of the engine the settings name, and of its archive, into ``dest``."""
    _require_empty(dest)
    url = settings.redis_cluster_url or settings.redis_url or ""
    if url.startswith("rediss://"):
        # valkey-cli --rdb would need --tls and the client's certificates: not wired yet.
        raise BackupError(
            "backup over TLS (rediss://) is not supported: the snapshot is pulled with "
            "valkey-cli --rdb without TLS. Run it against a plain-TCP port of the engine "
            "(or of each master) reachable from a trusted host; nothing was backed up"
        )
    started = datetime.now(UTC)
    store = IngestWriter.from_settings(settings)
    streams = StreamStore(store.client, store.keys)
    owner = f"backup-{os.getpid()}-{time.time_ns()}"
    try:
        engine = await store.engine_info()
        masters = await _masters(store)
        cli = _cli()
        ttl_ms = int(settings.backup_pause_ttl_s * 1000)
        if not await streams.pause(owner, ttl_ms):
            raise BackupError("another backup is running (the archive is paused for it)")
        # The pause follows the backup's duration: renewed while it runs, it expires by
        # itself EA_BACKUP_PAUSE_TTL_S after a backup that died (archivers write nothing
        # while it lasts: the archive lag grows by the backup's time).
        renewing = asyncio.create_task(_keep_paused(streams, owner, ttl_ms))
        try:
            await _wait_paused(streams, time.time(), 3 + settings.archiver_lease_s)
            # Nothing is archived from here until resume: the archive copy and the
            # snapshots' streams hold every event exactly once between them.
            watermark = datetime.now(UTC)
            archive = await asyncio.to_thread(_copy_archive, settings.archive_path, dest)
            backlog = await streams.backlog()
            snapshots = []
            for i, (node, args) in enumerate(masters):
                path = dest / "engine" / f"node-{i}.rdb"
                await asyncio.to_thread(_snapshot, cli, args, path)
                snapshots.append(_file_entry(dest, path) | {"node": node})
            if renewing.done():
                renewing.result()  # the pause was lost: raises why
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            await streams.resume(owner)
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
    _write_durably(dest / MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n")
    return manifest


def read_manifest(source: Path) -> dict[str, Any]:
    """The manifest, after checking the size and checksum of every file it lists."""
    path = source / MANIFEST
    if not path.exists():
        raise BackupError(f"{path} missing: not a backup, or an incomplete one")
    manifest: dict[str, Any] = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise BackupError(f"backup format {manifest.get('format')} unknown (want {FORMAT})")
    bad = []
    for entry in [*manifest["snapshots"], *manifest["archive"]]:
        file = source / entry["path"]
        if not file.exists():
            bad.append(f"{entry['path']}: missing")
        elif file.stat().st_size != entry["bytes"] or _sha256(file) != entry["sha256"]:
            bad.append(f"{entry['path']}: size or checksum differs from the manifest")
    if bad:
        raise BackupError("damaged backup: " + "; ".join(bad))
    return manifest


@contextlib.contextmanager
def _snapshot_server(rdb: Path, engine: str) -> Iterator[str]:
    """A private engine process that loaded ``rdb``: the path of its socket."""
    redis_server = shutil.which("redis-server") if engine == "redis" else None
    binary = redis_server or find_server_binary()  # an RDB loads in its own family
    with tempfile.TemporaryDirectory(prefix="ea-restore-") as tmp:
        shutil.copyfile(rdb, Path(tmp) / "dump.rdb")
        sock = str(Path(tmp) / "engine.sock")
        args = [
            binary, "--port", "0", "--unixsocket", sock, "--dir", tmp,
            "--dbfilename", "dump.rdb", "--appendonly", "no", "--save", "",
            "--logfile", "engine.log",
        ]  # fmt: skip
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield sock
        finally:
            proc.terminate()
            proc.wait(timeout=30)


async def _loaded(sock: str, timeout_s: float = 600.0) -> aioredis.Redis:
    client = aioredis.Redis(unix_socket_path=sock)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await client.ping()  # refused until the socket exists, LOADING until loaded
            return client
        except (aioredis.ConnectionError, aioredis.BusyLoadingError, FileNotFoundError):
            if time.monotonic() > deadline:
                raise BackupError(f"the snapshot did not load within {timeout_s:.0f} s") from None
            await asyncio.sleep(0.05)


async def _copy_keys(source: aioredis.Redis, target: Any, prefix: str, skip: list[str]) -> int:
    copied = 0
    keys: list[bytes] = []

    async def flush() -> None:
        nonlocal copied
        async with source.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.dump(key)
                pipe.pttl(key)
            replies = await pipe.execute()
        restores = []
        for key, payload, ttl in zip(keys, replies[::2], replies[1::2], strict=True):
            if payload is not None and ttl != -2:  # gone (expired) since the scan
                restores.append(target.restore(key, max(ttl, 0), payload))
        await asyncio.gather(*restores)
        copied += len(restores)
        keys.clear()

    async for key in source.scan_iter(match=f"{prefix}*", count=1000):
        if not any(fnmatch.fnmatchcase(key.decode(), pattern) for pattern in skip):
            keys.append(key)
            if len(keys) >= COPY_BATCH:
                await flush()
    await flush()
    return copied


async def _check_payloads(
    loaded: aioredis.Redis, target: Any, prefix: str, manifest: dict[str, Any]
) -> None:
    """Refuse up front a target engine that cannot load the backup's key payloads: DUMP
    payloads carry the RDB version of the engine that wrote them, and an older engine
    (a Redis 7.0 target of a Valkey 8 backup) refuses every RESTORE. One probe key, with
    a 1 s TTL, deleted at once: nothing else is written before the answer."""
    probe = f"{prefix}restore-probe"
    await loaded.set(probe, b"1")
    payload = await loaded.dump(probe)
    await loaded.delete(probe)
    assert payload is not None
    version = int.from_bytes(payload[-10:-8], "little")  # then an 8-byte CRC64
    try:
        await target.restore(probe, 1000, payload, replace=True)
    except aioredis.ResponseError as exc:
        if "payload version" not in str(exc):
            raise
        made = manifest["engine"]
        raise BackupError(
            f"this engine cannot load the backup's data: the backup was written by "
            f"{made.get('engine')} {made.get('version')} (RDB format {version}), which this "
            f"engine is older than ({exc}). Restore into {made.get('engine')} "
            f"{made.get('version')} or newer; or restore into such an engine, then move to "
            "this one by rebuilding from the archive (docs/deploy.md, Backup and restore). "
            "Nothing was restored"
        ) from None
    await target.delete(probe)


def _restore_archive(manifest: dict[str, Any], source: Path, root: Path) -> None:
    for entry in manifest["archive"]:
        relative = Path(entry["path"]).relative_to("archive")
        _write_durably(root / relative, (source / entry["path"]).read_bytes())


async def _apply_parked(store: IngestWriter) -> int:
    """Apply every cross-shard event parked in an outbox of the restored engine."""
    applied = 0
    for _ in range(PARKED_ROUNDS):
        done = await store.sweep_outbox(older_than_s=-1.0)  # every entry, however young
        if not done:
            break
        applied += done
    async with store.client.pipeline(transaction=False) as pipe:
        for shard in range(store.keys.shards):
            pipe.hlen(store.keys.outbox(shard))
        left = sum(await pipe.execute())
    if left:
        raise BackupError(
            f"{left} parked cross-shard events could not be applied: the engine's shards are "
            "not all reachable; start the service, its outbox sweeper applies them"
        )
    return applied


@dataclass(frozen=True, slots=True)
class RestoreReport:
    keys: int
    files: int
    events: int
    parked: int  # cross-shard events in flight at the backup, applied by the restore


async def restore(settings: Settings, source: Path) -> RestoreReport:
    """Restore ``source`` into the (empty) engine and archive directory the settings name."""
    manifest = await asyncio.to_thread(read_manifest, source)
    for name in ("key_prefix", "shards"):
        if manifest[name] != getattr(settings, name):
            raise BackupError(
                f"the backup has {name}={manifest[name]!r}, these settings "
                f"{getattr(settings, name)!r}: set EA_{name.upper()} to the backup's value "
                "(to change shards, restore first, then follow the rebuild procedure)"
            )
    if files.list_files(settings.archive_path):
        raise BackupError(f"{settings.archive_path} has archive files: restore into an empty one")
    store = IngestWriter.from_settings(settings)
    try:
        # Empty of this service's keys (its prefix): another tenant's keys may share it.
        async for _ in store.client.scan_iter(match=f"{settings.key_prefix}*", count=1000):
            raise BackupError(
                f"the engine is not empty (keys under {settings.key_prefix}): restore into "
                "an empty engine"
            )
        keys = 0
        for i, snapshot in enumerate(manifest["snapshots"]):
            rdb = source / snapshot["path"]
            with _snapshot_server(rdb, manifest["engine"]["engine"]) as sock:
                loaded = await _loaded(sock)
                try:
                    if i == 0:
                        await _check_payloads(loaded, store.client, settings.key_prefix, manifest)
                    skip = store.keys.ephemeral_patterns()
                    keys += await _copy_keys(loaded, store.client, settings.key_prefix, skip)
                finally:
                    await loaded.aclose()
        parked = await _apply_parked(store)
        await asyncio.to_thread(_restore_archive, manifest, source, settings.archive_path)
    finally:
        await store.close()
    return RestoreReport(keys, len(manifest["archive"]), manifest["archive_events"], parked)


async def main(settings: Settings, command: str, directory: Path) -> int:
    """The ``backup`` / ``restore`` commands: a one-line summary, or why it failed."""
    try:
        if command == "backup":
            m = await backup(settings, directory)
            print(
                f"backup in {directory}: {len(m['snapshots'])} engine snapshot(s), "
                f"{len(m['archive'])} archive files ({m['archive_events']} events) up to "
                f"{m['archive_watermark']}; {m['unarchived_events']} events were not archived "
                "yet (they are in the snapshot's streams)"
            )
        else:
            r = await restore(settings, directory)
            print(
                f"restored {r.keys} keys and {r.files} archive files ({r.events} events) "
                f"from {directory}, applied {r.parked} cross-shard events in flight at the "
                "backup; start the service, let its archiver catch up, then verify"
            )
    except BackupError as exc:
        print(f"event-analytics {command}: {exc}", file=sys.stderr)
        return 1
    return 0
