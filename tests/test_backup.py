"""``event-analytics backup DIR`` under load, ``restore DIR`` into a fresh engine and an
empty archive: the restored service answers exactly as the original did for every minute
the backup covers, ``verify`` finds no difference, the archive holds each event once."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from benchmarks.procs import EngineProcess
from event_analytics.ingest import Ingestor
from event_analytics.model import EVENT_ADAPTER
from event_analytics.store import IngestWriter
from tests.backends import Backend
from tests.cluster import ClusterProcess, start_cluster
from tests.helpers import cli, event
from tests.readback import answers, archive_ids, wait_archived
from tests.servers import ServiceProcess, engine_binary, stopped_after
from tests.traffic import send_all

pytestmark = pytest.mark.slow
PREFIX = "bk:"  # the session's services share the session cluster with prefix ea:
BEFORE = 300  # events whose minutes the backup covers (all sent before it starts)
UNDER_LOAD_ACKS = 200  # the backup starts once this many events of the load were acked


def _fresh(kind: str, where: Path, cluster: ClusterProcess | None = None) -> Backend:
    if kind == "cluster":
        assert cluster is not None
        return Backend(kind, cluster, prefix=PREFIX)
    binary = engine_binary(kind)
    if binary is None:
        pytest.skip(f"{kind} server not installed")
    proc = EngineProcess(binary, where)
    proc.start()
    return Backend(kind, proc, prefix=PREFIX)


@contextlib.contextmanager
def _engines(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Backend, Backend]]:
    """(source, target): for the cluster, the session's (emptied) and a new 3+3 one (not
    the session's emptied again: services of other tests in this process run on it and
    recreate their streams, which the restore's "empty engine" check then finds)."""
    if kind == "cluster":
        source = _fresh(kind, tmp_path, request.getfixturevalue("cluster"))
        source.flush()
        target_cluster = start_cluster(tmp_path / "target-cluster")
        try:
            yield source, Backend(kind, target_cluster, prefix=PREFIX)
        finally:
            target_cluster.stop()
        return
    source, target = _fresh(kind, tmp_path / "source"), _fresh(kind, tmp_path / "target")
    try:
        yield source, target
    finally:
        for b in (source, target):
            assert isinstance(b.engine, EngineProcess)
            b.engine.stop()


def _events(minutes: list[datetime], n: int, rng: random.Random) -> list[dict[str, Any]]:
    pages = [f"https://example.com/p{i}" for i in range(5)]

    def one() -> dict[str, Any]:
        ts = rng.choice(minutes) + timedelta(seconds=rng.randrange(60))
        return event(user=f"u{rng.randrange(40)}", url=rng.choice(pages), ts=ts)

    return [one() for _ in range(n)]


class Load(threading.Thread):
    """New events into ``minutes`` until stopped; the acked ones."""

    def __init__(self, url: str, minutes: list[datetime], rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.url, self.minutes, self.rng = url, minutes, rng
        self.stop = threading.Event()
        self.acked: list[dict[str, Any]] = []

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            bodies = _events(self.minutes, 40, self.rng)
            statuses = asyncio.run(send_all(self.url, bodies))
            self.acked += [b for b, s in zip(bodies, statuses, strict=True) if s == 201]


@pytest.mark.parametrize("kind", ["valkey", "redis", "cluster"])
def test_backup_under_load_restores_into_a_fresh_engine_with_identical_answers(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(20261201)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    covered = [now - timedelta(minutes=m) for m in (5, 4, 3)]
    loaded = [now - timedelta(minutes=m) for m in (2, 1)]
    dest = tmp_path / "backup"
    with _engines(kind, tmp_path, request) as (source, target):
        env = source.env | {"EA_ARCHIVE_DIR": str(tmp_path / "archive")}
        with stopped_after(ServiceProcess(tmp_path / "data", env=env)) as svc:
            before = _events(covered, BEFORE, rng)
            assert asyncio.run(send_all(svc.url, before)) == [201] * BEFORE
            load = Load(svc.url, loaded, rng)
            load.start()
            deadline = time.monotonic() + 60
            while len(load.acked) < UNDER_LOAD_ACKS:
                assert time.monotonic() < deadline and load.is_alive(), len(load.acked)
                time.sleep(0.05)
            done = cli(["backup", str(dest)], env, timeout=300)
            acked_during_backup = len(load.acked)
            load.stop.set()
            load.join(timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr
            expected = answers(svc, covered)
            source_loaded = answers(svc, loaded)[0]

        manifest = json.loads((dest / "manifest.json").read_text())
        assert len(manifest["snapshots"]) == (3 if kind == "cluster" else 1)
        assert manifest["archive_events"] == sum(f["events"] for f in manifest["archive"])

        restored_env = target.env | {"EA_ARCHIVE_DIR": str(tmp_path / "restored-archive")}
        done = cli(["restore", str(dest)], restored_env, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        with stopped_after(ServiceProcess(tmp_path / "restored", env=restored_env)) as restored:
            wait_archived(restored.url)
            assert answers(restored, covered) == expected
            # The load's minutes: what was stored by the snapshot, never more than the
            # original had, and at least what was acked before the backup started.
            got = {r["minute_timestamp"]: r["count"] for r in answers(restored, loaded)[0]}
            had = {r["minute_timestamp"]: r["count"] for r in source_loaded}
            assert all(got[m] <= had[m] for m in had), (got, had)
            assert UNDER_LOAD_ACKS <= sum(got.values()) <= acked_during_backup + 64
            checked = cli(["verify"], restored_env)
            assert checked.returncode == 0 and " 0 differ" in checked.stdout, checked.stdout
            # On a cluster the masters' snapshots are not simultaneous: events claimed on
            # their id's shard but not yet applied on their user's shard were applied by
            # the restore, so nothing moves the counters under these reads (the service's
            # sweeper used to, 5 s after its start, between the totals and the files).
            wait_archived(restored.url)
            final = sum(r["count"] for r in answers(restored, covered + loaded)[0])
            ids = archive_ids(tmp_path / "restored-archive")
        assert set(ids.values()) == {1}  # nothing archived twice
        assert {b["event_id"] for b in before} <= set(ids)
        assert len(ids) == final, (len(ids), final, sum(got.values()))


@pytest.fixture(scope="module")
def a_backup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valkey engine with a few events, backed up once for the module (the service, the
    events and the backup cost seconds); each test gets a copy of its own (backed_up)."""
    where = tmp_path_factory.mktemp("a-backup")
    source = _fresh("valkey", where / "source")
    try:
        env = source.env | {"EA_ARCHIVE_DIR": str(where / "archive")}
        with stopped_after(ServiceProcess(where / "data", env=env)) as svc:
            assert asyncio.run(send_all(svc.url, [event() for _ in range(20)])) == [201] * 20
            wait_archived(svc.url)
            done = cli(["backup", str(where / "backup")], env)
            assert done.returncode == 0, done.stderr
    finally:
        assert isinstance(source.engine, EngineProcess)
        source.engine.stop()
    return where / "backup"


@pytest.fixture
def backed_up(a_backup: Path, tmp_path: Path) -> Iterator[tuple[Backend, Path, dict[str, str]]]:
    """A copy of the module's backup, and an empty valkey target with its env."""
    backup = tmp_path / "backup"
    shutil.copytree(a_backup, backup)
    target = _fresh("valkey", tmp_path / "target")
    try:
        target_env = target.env | {"EA_ARCHIVE_DIR": str(tmp_path / "restored")}
        yield target, backup, target_env
    finally:
        assert isinstance(target.engine, EngineProcess)
        target.engine.stop()


def test_restore_refuses_a_damaged_backup_and_touches_nothing(
    backed_up: tuple[Backend, Path, dict[str, str]],
) -> None:
    target, backup, env = backed_up
    archived = next((backup / "archive").rglob("*.jsonl"))
    data = bytearray(archived.read_bytes())
    data[5] ^= 1
    archived.write_bytes(bytes(data))
    done = cli(["restore", str(backup)], env)
    assert done.returncode == 1
    assert "damaged backup" in done.stderr and archived.name in done.stderr, done.stderr
    assert target.scan("*") == [] and not Path(env["EA_ARCHIVE_DIR"]).exists()


def test_restore_refuses_a_non_empty_engine_or_other_shards(
    backed_up: tuple[Backend, Path, dict[str, str]],
) -> None:
    target, backup, env = backed_up
    done = cli(["restore", str(backup)], env | {"EA_SHARDS": "4"})
    assert done.returncode == 1 and "EA_SHARDS" in done.stderr, done.stderr
    with contextlib.closing(target.client()) as c:
        c.set("other-tenant", "1")  # not ours: the engine is still empty of our keys
        c.set(f"{PREFIX}something", "1")
    done = cli(["restore", str(backup)], env)
    assert done.returncode == 1 and "not empty" in done.stderr, done.stderr
    assert target.scan(f"{PREFIX}*") == [f"{PREFIX}something"]  # nothing restored
    assert not Path(env["EA_ARCHIVE_DIR"]).exists()


def test_backup_refuses_a_non_empty_directory(
    backed_up: tuple[Backend, Path, dict[str, str]],
) -> None:
    _, backup, env = backed_up
    done = cli(["backup", str(backup)], env)
    assert done.returncode == 1 and "not empty" in done.stderr, done.stderr
    # The backup itself is unchanged: it still restores.
    assert cli(["restore", str(backup)], env).returncode == 0
    ids = collections.Counter(archive_ids(Path(env["EA_ARCHIVE_DIR"])))
    assert len(ids) == 20 and set(ids.values()) == {1}


def test_a_single_node_backup_restores_into_a_cluster_with_its_shard_count(
    cluster: ClusterProcess, tmp_path: Path
) -> None:
    """A cluster runs one shard too (all on one master): the backup's EA_SHARDS=1."""
    source = _fresh("valkey", tmp_path / "source")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    minutes = [now - timedelta(minutes=m) for m in (3, 2)]
    try:
        env = source.env | {"EA_ARCHIVE_DIR": str(tmp_path / "archive")}
        with stopped_after(ServiceProcess(tmp_path / "data", env=env)) as svc:
            bodies = _events(minutes, 100, random.Random(7))
            assert asyncio.run(send_all(svc.url, bodies)) == [201] * len(bodies)
            expected = answers(svc, minutes)
            # A goal is engine data like the counters: in the backup, and restored.
            goal = ["--site", "shop.example", "--json"]
            added = cli(["goals", "add", "--event", "Buy", "--currency", "EUR", *goal], env)
            assert added.returncode == 0, added.stderr
            done = cli(["backup", str(tmp_path / "backup")], env)
            assert done.returncode == 0, done.stderr
    finally:
        assert isinstance(source.engine, EngineProcess)
        source.engine.stop()
    target = Backend("cluster", cluster, prefix=PREFIX)
    target.flush()
    cluster_env = target.env | {"EA_ARCHIVE_DIR": str(tmp_path / "restored")}
    done = cli(["restore", str(tmp_path / "backup")], cluster_env)
    assert done.returncode == 1 and "EA_SHARDS" in done.stderr  # the cluster default: 16
    cluster_env["EA_SHARDS"] = "1"
    done = cli(["restore", str(tmp_path / "backup")], cluster_env)
    assert done.returncode == 0, done.stdout + done.stderr
    with stopped_after(ServiceProcess(tmp_path / "restored-data", env=cluster_env)) as svc:
        wait_archived(svc.url)
        assert answers(svc, minutes) == expected
        checked = cli(["verify"], cluster_env)
        assert checked.returncode == 0 and " 0 differ" in checked.stdout, checked.stdout
        listed = cli(["goals", "list", *goal], cluster_env)
        made = json.loads(added.stdout)
        del made["created"]
        assert json.loads(listed.stdout) == {"goals": [made]}, listed.stderr
    assert set(archive_ids(tmp_path / "restored")) == {b["event_id"] for b in bodies}


def _park(backend: Backend, bodies: list[dict[str, Any]], shards: int) -> list[dict[str, Any]]:
    """Step 1 only of the cross-shard protocol for the ``bodies`` whose id lives on another
    shard than their user: claimed and parked in the id shard's outbox, not applied. This
    is what a cluster's snapshot of the id shard's master holds when it was taken after the
    claim and the user shard's master before the apply. The bodies parked."""
    settings = backend.settings(shards=shards, key_prefix=PREFIX)
    keys = backend.keys(shards)
    now = datetime.now(UTC)
    crossing = [
        b for b in bodies
        if keys.id_shard(uuid.UUID(b["event_id"]).bytes) != keys.shard_of(b["user_id"])
    ]  # fmt: skip

    async def main() -> None:
        store = IngestWriter.from_settings(settings)
        try:
            ingestor = Ingestor(settings, store)
            prepared = [ingestor.prepare(EVENT_ADAPTER.validate_python(b), now) for b in crossing]
            assert await store._cross._claim(prepared) == [1] * len(prepared)
        finally:
            await store.close()

    asyncio.run(main())
    return crossing


def test_restore_applies_the_events_parked_between_shards(tmp_path: Path) -> None:
    """Events claimed on their id's shard but not applied on their user's (in flight between
    two masters' snapshots) are applied by the restore itself: the restored engine answers
    its final counts at once, and its archive ends with every event once."""
    source = _fresh("valkey", tmp_path / "source")
    target = _fresh("valkey", tmp_path / "target")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    minutes = [now - timedelta(minutes=m) for m in (3, 2)]
    rng = random.Random(11)
    try:
        env = source.env | {"EA_ARCHIVE_DIR": str(tmp_path / "archive"), "EA_SHARDS": "4"}
        with stopped_after(ServiceProcess(tmp_path / "data", env=env)) as svc:
            sent = _events(minutes, 60, rng)
            assert asyncio.run(send_all(svc.url, sent)) == [201] * len(sent)
            wait_archived(svc.url)
        # The service is stopped (its sweeper would apply them): park, then back up.
        parked = _park(source, _events(minutes, 40, rng), shards=4)
        assert parked
        done = cli(["backup", str(tmp_path / "backup")], env)
        assert done.returncode == 0, done.stdout + done.stderr
        restored_env = target.env | {
            "EA_ARCHIVE_DIR": str(tmp_path / "restored"), "EA_SHARDS": "4"
        }  # fmt: skip
        done = cli(["restore", str(tmp_path / "backup")], restored_env)
        assert done.returncode == 0, done.stdout + done.stderr
        # Settled before any service ran: nothing parked, every event counted.
        assert target.scan(f"{PREFIX}*:outbox") == []
        assert f"applied {len(parked)} cross-shard events" in done.stdout, done.stdout
        model = collections.Counter(b["timestamp"][:16] for b in sent + parked)
        with stopped_after(ServiceProcess(tmp_path / "restored-data", env=restored_env)) as svc:
            rows = answers(svc, minutes)[0]  # first read, before any sweep could run
            assert {r["minute_timestamp"][:16]: r["count"] for r in rows} == dict(model)
            wait_archived(svc.url)
        ids = archive_ids(tmp_path / "restored")
        assert set(ids.values()) == {1}
        assert set(ids) == {b["event_id"] for b in sent + parked}
    finally:
        for b in (source, target):
            assert isinstance(b.engine, EngineProcess)
            b.engine.stop()


def test_restore_refuses_an_older_engine_family_up_front(
    backed_up: tuple[Backend, Path, dict[str, str]], tmp_path: Path
) -> None:
    """A Valkey 8 backup into Debian's Redis 7.0: its RDB format is newer than Redis 7.0
    loads. Before: every RESTORE failed, with a traceback, after the checks had passed."""
    _, backup, _ = backed_up
    redis_target = _fresh("redis", tmp_path / "redis-target")
    try:
        env = redis_target.env | {"EA_ARCHIVE_DIR": str(tmp_path / "redis-restored")}
        done = cli(["restore", str(backup)], env)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "cannot load the backup's data" in done.stderr, done.stderr
        assert "valkey" in done.stderr and "Nothing was restored" in done.stderr, done.stderr
        assert redis_target.scan("*") == [] and not Path(env["EA_ARCHIVE_DIR"]).exists()
    finally:
        assert isinstance(redis_target.engine, EngineProcess)
        redis_target.engine.stop()


def test_backup_refuses_tls_up_front(tmp_path: Path) -> None:
    """TLS for the snapshot is not wired (valkey-cli --rdb --tls): a clear refusal, not a
    failed snapshot after the archive was paused."""
    env = {"REDIS_URL": "rediss://127.0.0.1:1/0", "EA_ARCHIVE_DIR": str(tmp_path / "archive")}
    done = cli(["backup", str(tmp_path / "backup")], env)
    assert done.returncode == 1 and "TLS (rediss://) is not supported" in done.stderr, done.stderr
    assert not (tmp_path / "backup").exists()


def test_the_archive_pause_lasts_as_long_as_the_backup(tmp_path: Path) -> None:
    """The pause's TTL (EA_BACKUP_PAUSE_TTL_S=5) is renewed while the backup runs: its
    snapshot takes longer (the engine waits repl-diskless-sync-delay=8 s before it
    streams), and the pause is there all along, then lifted."""
    source = _fresh("valkey", tmp_path / "source")
    try:
        with contextlib.closing(source.client()) as c:
            c.config_set("repl-diskless-sync-delay", "8")
            env = source.env | {
                "EA_ARCHIVE_DIR": str(tmp_path / "archive"), "EA_BACKUP_PAUSE_TTL_S": "5"
            }  # fmt: skip
            pause = source.keys().archive_pause()
            backup = subprocess.Popen(
                [sys.executable, "-m", "event_analytics", "backup", str(tmp_path / "backup")],
                env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            seen: list[float] = []
            deadline = time.monotonic() + 120
            while backup.poll() is None:
                assert time.monotonic() < deadline, "backup did not end"
                ttl = c.pttl(pause)
                if ttl > 0:
                    seen.append(time.monotonic())
                    assert ttl <= 5000, ttl
                time.sleep(0.1)
            out, err = backup.communicate()
            assert backup.returncode == 0, out + err
            assert seen and seen[-1] - seen[0] > 5, "the pause did not outlive its TTL"
            assert c.exists(pause) == 0  # lifted at the end
    finally:
        assert isinstance(source.engine, EngineProcess)
        source.engine.stop()


def _evil_cases(backup: Path, outside: Path) -> dict[str, Any]:
    """name -> a change to a copy of ``backup`` (called with the copy's path) that must make
    restore refuse, before writing anything anywhere (issue 21, item 1)."""

    def manifest_of(copy: Path) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((copy / "manifest.json").read_text())
        return loaded

    def save(copy: Path, manifest: Any) -> None:
        (copy / "manifest.json").write_text(json.dumps(manifest))

    def add_entry(copy: Path, path: str, data: bytes = b'{"x":1}\n') -> None:
        # A file the entry's checksum matches, wherever the path leads inside the copy.
        m = manifest_of(copy)
        m["archive"].append({"path": path, "bytes": len(data), "events": 1,
                             "sha256": hashlib.sha256(data).hexdigest()})  # fmt: skip
        m["archive_events"] += 1
        save(copy, m)

    def dotdot(copy: Path) -> None:
        # The attack run's entry: archive/x/../../P/x.txt, its file in the backup, and the
        # target two levels up from the archive directory.
        (copy / "archive" / "x").mkdir()
        (copy / "P").mkdir()
        (copy / "P" / "x.txt").write_bytes(b'{"x":1}\n')
        add_entry(copy, "archive/x/../../P/x.txt")

    def absolute(copy: Path) -> None:
        # An absolute path: the file exists there (a manifest can name any file).
        there = outside / "2026/01/01/events_2026-01-01-00.jsonl"
        there.parent.mkdir(parents=True, exist_ok=True)
        there.write_bytes(b'{"x":1}\n')
        add_entry(copy, str(there))

    def symlink_in_backup(copy: Path) -> None:
        # An archive file of the backup replaced by a link to a file outside it (same
        # bytes, so size and checksum match): restore must not read through it.
        first = copy / manifest_of(copy)["archive"][0]["path"]
        secret = outside / "secret.jsonl"
        secret.write_bytes(first.read_bytes())
        first.unlink()
        first.symlink_to(secret)

    def symlinked_directory_in_backup(copy: Path) -> None:
        first = copy / manifest_of(copy)["archive"][0]["path"]
        real = outside / "day"
        shutil.copytree(first.parent, real)
        shutil.rmtree(first.parent)
        first.parent.symlink_to(real, target_is_directory=True)

    def totals(copy: Path) -> None:
        m = manifest_of(copy)
        m["archive_events"] += 1
        save(copy, m)

    def entry_events(copy: Path) -> None:
        m = manifest_of(copy)
        m["archive"][0]["events"] += 1
        m["archive_events"] += 1
        save(copy, m)

    def not_json(copy: Path) -> None:
        (copy / "manifest.json").write_text('{"format": 1, "snapshots": [')

    def typed(change: Any) -> Any:
        def apply(copy: Path) -> None:
            m = manifest_of(copy)
            change(m)
            save(copy, m)

        return apply

    return {
        "dotdot": dotdot,
        "absolute": absolute,
        "symlink in the backup": symlink_in_backup,
        "symlinked directory in the backup": symlinked_directory_in_backup,
        "totals": totals,
        "events of a file": entry_events,
        "not JSON": not_json,
        "a list": lambda c: save(c, [1]),
        "format true": typed(lambda m: m.update(format=True)),
        "bytes as text": typed(
            lambda m: m["archive"][0].update(bytes=str(m["archive"][0]["bytes"]))
        ),
        "negative bytes": typed(lambda m: m["snapshots"][0].update(bytes=-1)),
        "sha256 not hex": typed(lambda m: m["archive"][0].update(sha256="../" * 20)),
        "path not a string": typed(lambda m: m["archive"][0].update(path=["archive"])),
        "snapshot path": typed(lambda m: m["snapshots"][0].update(path="../engine/node-0.rdb")),
        "no snapshots": typed(lambda m: m.update(snapshots=[])),
        "shards as text": typed(lambda m: m.update(shards="1")),
        "engine not an object": typed(lambda m: m.update(engine="valkey")),
        "an entry twice": typed(
            lambda m: (
                m["archive"].append(m["archive"][0]),
                m.update(archive_events=m["archive_events"] * 2),
            )
        ),
    }


def test_restore_refuses_an_unsafe_or_malformed_manifest_and_writes_nothing(
    backed_up: tuple[Backend, Path, dict[str, str]], tmp_path: Path
) -> None:
    """Issue 21, item 1: every manifest field is untrusted. Each case is refused with one
    line, exit 1, no traceback, nothing written outside the target directory nor inside
    it, nothing in the engine. Before: the '..' entry was written outside the archive
    directory and restore exited 0; the others were restored, or a traceback."""
    target, backup, env = backed_up
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = Path(env["EA_ARCHIVE_DIR"])
    copies = {}
    for name, change in _evil_cases(backup, outside).items():
        copies[name] = copy = tmp_path / "copies" / name.replace(" ", "-")
        shutil.copytree(backup, copy, symlinks=True)
        change(copy)
    # The restores at once (each a process: one after the other, their start-up was most
    # of this test's time); every one is refused, so none may write anything anywhere.
    before = sorted(p.relative_to(outside) for p in outside.rglob("*"))
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = dict(zip(copies, pool.map(lambda c: cli(["restore", str(c)], env),
                                         copies.values()), strict=True))  # fmt: skip
    for name, done in runs.items():
        assert done.returncode == 1, (name, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, (
            name, done.stderr)  # fmt: skip
    assert sorted(p.relative_to(outside) for p in outside.rglob("*")) == before
    assert not (tmp_path / "P").exists()  # where the '..' entry led
    assert target.scan("*") == [] and not archive.exists(), runs
    # A link inside the (empty) target archive directory, where a file would go.
    first = json.loads((backup / "manifest.json").read_text())["archive"][0]["path"]
    year = Path(first).relative_to("archive").parts[0]
    archive.mkdir()
    (archive / year).symlink_to(outside, target_is_directory=True)
    before = sorted(outside.rglob("*"))
    done = cli(["restore", str(backup)], env)
    assert done.returncode == 1 and "symbolic link" in done.stderr, done.stderr
    assert sorted(outside.rglob("*")) == before and target.scan("*") == []
    # The backup itself was sound all along: into a plain directory, it restores.
    (archive / year).unlink()
    done = cli(["restore", str(backup)], env)
    assert done.returncode == 0, done.stdout + done.stderr
