"""``restore SOURCE``: a backup (``backup.py``) into an empty engine and archive directory.

A backup may have been made by someone else, or changed since: every field of its
manifest is untrusted input. The manifest is parsed once into a typed ``Manifest``, and
everything is checked before the first write (an engine key or an archive file):

- its types, its format, its hash format, and that its totals match its entries;
- every path is exactly what ``backup`` writes (``engine/node-<i>.rdb``,
  ``archive/YYYY/MM/DD/events_YYYY-MM-DD-HH.jsonl``): no absolute path, no ``..``, and
  no two entries for one file, so nothing can be written outside the archive directory;
- every file is a regular file inside the backup (not a symlink, nor under one), with
  the size and SHA-256 the manifest says, and each archive file has as many complete
  lines as its entry's ``events``;
- no target file exists and nothing between the archive directory and a target is a
  symlink (a link placed in the empty archive directory would lead the copy elsewhere).

Then each snapshot is loaded into a private engine process (the embedded engine's
binary and readiness wait) from which its keys are copied (DUMP/RESTORE, with their
TTLs) into the target: a single node or a cluster with the same ``EA_KEY_PREFIX`` and
``EA_SHARDS``. Archiver leases and rate-limit windows are not restored (they belong to
processes of the old deployment). Cross-shard events in flight at the backup (see
``backup.py``) are applied before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import redis.asyncio as aioredis

from event_analytics.archive import files
from event_analytics.config import Settings
from event_analytics.store import IngestWriter
from event_analytics.store.embedded import find_server_binary, wait_for_ping

MANIFEST = "manifest.json"
FORMAT = 1
MAX_MANIFEST_BYTES = 64 << 20
LOAD_TIMEOUT_S = 600.0
COPY_BATCH = 200
# Rounds of outbox sweeping on restore (each applies up to 1,000 events per shard).
PARKED_ROUNDS = 1000
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BackupError(Exception):
    """A backup or restore that cannot go on; the message says why and what to do."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_durably(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


@dataclass(frozen=True, slots=True)
class Entry:
    """One file of the backup, as its manifest lists it."""

    path: str  # relative to the backup directory, checked: see ``_check_path``
    bytes: int
    sha256: str
    events: int | None = None  # archive files: complete lines


@dataclass(frozen=True, slots=True)
class Manifest:
    """A backup's manifest.json, parsed and checked (``parse``)."""

    engine: str
    engine_version: str
    key_prefix: str
    shards: int
    snapshots: tuple[Entry, ...]
    archive: tuple[Entry, ...]
    archive_events: int


def _bad(why: str) -> BackupError:
    return BackupError(f"invalid manifest: {why}; nothing was restored")


def _field(raw: dict[str, Any], name: str, kind: type, where: str = "") -> Any:
    value: Any = raw.get(name)
    # bool is an int to Python, never to a manifest.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _bad(f"{where}{name} must be {kind.__name__}, not {type(value).__name__}")
    if isinstance(value, int) and value < 0:
        raise _bad(f"{where}{name} is negative")
    return value


def _entry(raw: Any, where: str, archive: bool) -> Entry:
    if not isinstance(raw, dict):
        raise _bad(f"{where} is not an object")
    path = _field(raw, "path", str, f"{where}.")
    sha = _field(raw, "sha256", str, f"{where}.")
    if not _SHA256.match(sha):
        raise _bad(f"{where}.sha256 is not 64 lower-case hex digits")
    events = _field(raw, "events", int, f"{where}.") if archive else None
    return Entry(path, _field(raw, "bytes", int, f"{where}."), sha, events)


def _archive_path(hour_text: str) -> str:
    hour = files.hour_of(Path(hour_text))
    return "" if hour is None else "archive/" + hour.strftime("%Y/%m/%d/events_%Y-%m-%d-%H.jsonl")


def parse(text: bytes) -> Manifest:
    """The manifest, typed; BackupError on anything ``backup`` would not have written."""
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        raise _bad("not valid JSON") from None
    if not isinstance(raw, dict):
        raise _bad("not a JSON object")
    if raw.get("format") != FORMAT or isinstance(raw.get("format"), bool):
        raise BackupError(f"backup format {raw.get('format')!r} unknown (want {FORMAT})")
    engine = raw.get("engine")
    if not isinstance(engine, dict) or not isinstance(engine.get("engine"), str):
        raise _bad("engine must be an object naming the engine")
    snapshots, archive = raw.get("snapshots"), raw.get("archive")
    if not isinstance(snapshots, list) or not snapshots or not isinstance(archive, list):
        raise _bad("snapshots (at least one) and archive must be lists")
    manifest = Manifest(
        engine=engine["engine"],
        engine_version=str(engine.get("version", "")),
        key_prefix=_field(raw, "key_prefix", str),
        shards=_field(raw, "shards", int),
        snapshots=tuple(_entry(e, f"snapshots[{i}]", False) for i, e in enumerate(snapshots)),
        archive=tuple(_entry(e, f"archive[{i}]", True) for i, e in enumerate(archive)),
        archive_events=_field(raw, "archive_events", int),
    )
    # Paths: exactly the ones backup writes, so none is absolute, holds '..' or repeats.
    for i, entry in enumerate(manifest.snapshots):
        if entry.path != f"engine/node-{i}.rdb":
            raise _bad(f"snapshots[{i}].path {entry.path!r} is not engine/node-{i}.rdb")
    for i, entry in enumerate(manifest.archive):
        if entry.path != _archive_path(PurePosixPath(entry.path).name) or ".." in entry.path:
            raise _bad(
                f"archive[{i}].path {entry.path!r} is not an archive file "
                "(archive/YYYY/MM/DD/events_YYYY-MM-DD-HH.jsonl)"
            )
    if len({e.path for e in manifest.archive}) != len(manifest.archive):
        raise _bad("an archive file is listed twice")
    counted = sum(e.events or 0 for e in manifest.archive)
    if counted != manifest.archive_events:
        raise _bad(
            f"archive_events is {manifest.archive_events}, its files' events add up to {counted}"
        )
    return manifest


def _regular_inside(root: Path, relative: str) -> Path:
    """``root/relative``, refusing a symlink anywhere below ``root`` or a non-file."""
    path = root
    for part in PurePosixPath(relative).parts:
        path = path / part
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            raise BackupError(f"damaged backup: {relative}: missing") from None
        if stat.S_ISLNK(mode):
            raise BackupError(
                f"unsafe backup: {relative}: {path.relative_to(root)} is a symbolic link; "
                "nothing was restored"
            )
    if not stat.S_ISREG(mode):
        raise BackupError(f"damaged backup: {relative}: not a regular file")
    return path


def read_manifest(source: Path) -> Manifest:
    """The checked manifest of the backup in ``source``, after checking the size, SHA-256
    and (archive) line count of every file it lists."""
    if not source.is_dir():
        raise BackupError(f"{source} is not a directory: name a backup directory")
    path = source / MANIFEST
    if not path.is_file() or path.is_symlink():
        raise BackupError(f"{path} missing: not a backup, or an incomplete one")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise _bad(f"larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    manifest = parse(path.read_bytes())
    bad = []
    for entry in (*manifest.snapshots, *manifest.archive):
        file = _regular_inside(source, entry.path)
        if file.stat().st_size != entry.bytes or sha256_of(file) != entry.sha256:
            bad.append(f"{entry.path}: size or checksum differs from the manifest")
        elif entry.events is not None:
            data = file.read_bytes()
            if data.count(b"\n") != entry.events or (not data.endswith(b"\n") and data):
                bad.append(f"{entry.path}: {entry.events} events in the manifest, not in it")
    if bad:
        raise BackupError("damaged backup: " + "; ".join(bad))
    return manifest


def _targets(manifest: Manifest, root: Path) -> list[tuple[str, Path]]:
    """(backup path, target file) of each archive file; refuses a target that exists or
    lies under a symbolic link below the archive directory (checked before any write)."""
    out = []
    for entry in manifest.archive:
        relative = PurePosixPath(entry.path).relative_to("archive")
        target = root
        for part in relative.parts:
            target = target / part
            if target.is_symlink():
                raise BackupError(
                    f"{target} is a symbolic link inside the archive directory: restore "
                    "into an empty directory; nothing was restored"
                )
        if target.exists():
            raise BackupError(f"{target} exists: restore into an empty archive directory")
        out.append((entry.path, target))
    return out


@contextlib.contextmanager
def _snapshot_server(rdb: Path, engine: str) -> Iterator[str]:
    """A private engine process that loaded ``rdb``: the URL of its socket."""
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
            url = f"unix://{sock}"
            try:
                # The embedded engine's wait: PING answers once the RDB is loaded.
                wait_for_ping(url, proc, "snapshot engine", Path(tmp) / "engine.log",
                              LOAD_TIMEOUT_S)  # fmt: skip
            except RuntimeError as exc:
                raise BackupError(f"the snapshot {rdb.name} did not load: {exc}") from None
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


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
    loaded: aioredis.Redis, target: Any, prefix: str, manifest: Manifest
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
        made = f"{manifest.engine} {manifest.engine_version}"
        raise BackupError(
            f"this engine cannot load the backup's data: the backup was written by "
            f"{made} (RDB format {version}), which this engine is older than ({exc}). "
            f"Restore into {made} or newer; or restore into such an engine, then move to "
            "this one by rebuilding from the archive (docs/deploy.md, Backup and restore). "
            "Nothing was restored"
        ) from None
    await target.delete(probe)


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


def _write_archive(source: Path, targets: list[tuple[str, Path]], root: Path) -> None:
    real_root = root.resolve()
    for relative, target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Checked before; again here, as the directories now exist (a race with another
        # process making a link is the only way to fail this).
        if not target.parent.resolve().is_relative_to(real_root) or target.is_symlink():
            raise BackupError(f"{target} would leave {root}: restore stopped")
        write_durably(target, (source / relative).read_bytes())


@dataclass(frozen=True, slots=True)
class RestoreReport:
    keys: int
    files: int
    events: int
    parked: int  # cross-shard events in flight at the backup, applied by the restore


async def restore(
    settings: Settings, source: Path, manifest: Manifest | None = None
) -> RestoreReport:
    """Restore ``source`` into the (empty) engine and archive directory the settings name;
    ``manifest``: its ``read_manifest`` when the caller checked it already."""
    if manifest is None:
        manifest = await asyncio.to_thread(read_manifest, source)
    for name in ("key_prefix", "shards"):
        if getattr(manifest, name) != getattr(settings, name):
            raise BackupError(
                f"the backup has {name}={getattr(manifest, name)!r}, these settings "
                f"{getattr(settings, name)!r}: set EA_{name.upper()} to the backup's value "
                "(to change shards, restore first, then follow the rebuild procedure)"
            )
    root = settings.archive_path
    if root.exists() and not root.is_dir():
        raise BackupError(f"{root} is not a directory: set EA_ARCHIVE_DIR to a directory")
    if files.list_files(root):
        raise BackupError(f"{root} has archive files: restore into an empty one")
    targets = _targets(manifest, root)
    store = IngestWriter.from_settings(settings)
    try:
        # Empty of this service's keys (its prefix): another tenant's keys may share it.
        async for _ in store.client.scan_iter(match=f"{settings.key_prefix}*", count=1000):
            raise BackupError(
                f"the engine is not empty (keys under {settings.key_prefix}): restore into "
                "an empty engine"
            )
        keys = 0
        for i, snapshot in enumerate(manifest.snapshots):
            with _snapshot_server(source / snapshot.path, manifest.engine) as url:
                loaded = aioredis.Redis.from_url(url)
                try:
                    if i == 0:
                        await _check_payloads(loaded, store.client, settings.key_prefix, manifest)
                    skip = store.keys.ephemeral_patterns()
                    keys += await _copy_keys(loaded, store.client, settings.key_prefix, skip)
                finally:
                    await loaded.aclose()
        parked = await _apply_parked(store)
        await asyncio.to_thread(_write_archive, source, targets, root)
    finally:
        await store.close()
    return RestoreReport(keys, len(manifest.archive), manifest.archive_events, parked)
