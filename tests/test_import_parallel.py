"""``event-analytics import --workers N``: worker processes read and check the file's
blocks, the import process decides what is written; nothing depends on N.

The same file (valid and refused lines, duplicates within the file and of the archive,
an erased user, events of the live window, blocks of a few KiB so that there are many)
is imported with 0 workers (all in the import process) and with 2, each on a key prefix
and into an archive of its own: the reports, the archives and the counters must be the
same, and the model's. A kill -9 of the import process must take its workers with it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from event_analytics.archive import files
from event_analytics.keys import Keys
from tests.backends import Backend
from tests.helpers import cli
from tests.readback import archive_ids
from tests.test_import import env_for, history, run_import, settled_end, write_ndjson

BLOCK = "4096"  # EA_IMPORT_BLOCK_BYTES: ~15 lines a block


def model_file(n: int) -> tuple[list[bytes], Counter[str], set[str], list[dict[str, Any]]]:
    """Lines of a file, the refusals expected by reason, the ids expected in the archive
    (settled days, not erased), and the events already archived before the import."""
    first = settled_end() - timedelta(hours=6)
    received = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).isoformat()
    lines: list[bytes] = []
    refused: Counter[str] = Counter()
    archived: set[str] = set()
    earlier: list[dict[str, Any]] = []
    for i in range(n):
        ts = first + timedelta(seconds=i * 6 * 3600 // n)
        event = {
            "event_id": str(uuid.uuid4()), "user_id": f"u{i % 17}",
            "timestamp": ts.isoformat(), "event_type": "page_view" if i % 3 else "click",
            "payload": {"page_url": f"https://a.example/p{i % 7}", "country": "DE"},
            "received_at": received,
        }  # fmt: skip
        kind = i % 40
        if kind == 3:
            lines.append(b'{"event_id": ')
            refused["malformed_json"] += 1
            continue
        if kind == 5:
            lines.append(b"[1, 2]")
            refused["invalid_line"] += 1
            continue
        if kind == 7:
            event["event_id"] = "not-a-uuid"
            refused["uuid_parsing"] += 1
        elif kind == 9:
            event["timestamp"] = "1999-12-31T23:00:00Z"
            refused["timestamp_too_old"] += 1
        elif kind == 11:
            event["timestamp"] = (datetime.now(UTC) + timedelta(days=2)).isoformat()
            refused["timestamp_in_future"] += 1
        elif kind == 13:
            lines.append(b"   ")  # blank: skipped, still a line
            continue
        elif kind == 15:
            event["event_id"] = event["event_id"].upper()  # valid, through the model
            archived.add(event["event_id"].lower())
        elif kind == 17:
            event["timestamp"] = ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")
            event["user_id"] = "gone"  # erased before the import
            refused["user_erased"] += 1
        elif kind == 19 and i > 200:
            lines.append(lines[i - 197])  # a duplicate within the file, blocks apart
            continue
        elif kind == 21:
            # The live window (EA_MAX_AGE_S is an hour): the live path, not archived here.
            event["timestamp"] = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
        elif kind == 23:
            earlier.append(event)  # archived before the import: a duplicate
        else:
            archived.add(event["event_id"])
        lines.append(orjson.dumps(event))
    return lines, refused, archived, earlier


def counters(db: Backend, prefix: str) -> dict[bytes, Any]:
    """Every counter, set and top-pages key of ``prefix``, by name without the prefix
    (not the stream, the dedup memory or the replay markers: ids and times)."""
    client = db.client()
    out: dict[bytes, Any] = {}
    skip = (b":stream", b":seen:", b":replayed:", b":erased")
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        if any(part in key for part in skip):
            continue
        name, kind = key[len(prefix) :], client.type(key).decode()
        if kind == "string":
            value = client.get(key)
            out[name] = client.pfcount(key) if value.startswith(b"HYLL") else value
        elif kind == "set":
            out[name] = sorted(client.smembers(key))
        elif kind == "zset":
            out[name] = sorted(client.zrange(key, 0, -1, withscores=True))
        elif kind == "hash":
            out[name] = sorted(client.hgetall(key).items())
    return out


def archive_bytes(root: Path) -> dict[str, bytes]:
    return {f.relative: f.path.read_bytes() for f in files.list_files(root)}


def test_one_or_two_workers_give_the_same_report_archive_and_counters(
    db: Backend, tmp_path: Path
) -> None:
    lines, refused, archived, earlier = model_file(1500)
    src = tmp_path / "history.ndjson"
    src.write_bytes(b"\n".join(lines) + b"\n")
    got = {}
    for workers in ("0", "2"):
        prefix = f"par{workers}-{uuid.uuid4().hex[:6]}:"
        root = tmp_path / f"archive-{workers}"
        env = {**env_for(db, root, prefix), "EA_IMPORT_BLOCK_BYTES": BLOCK}
        write_ndjson(tmp_path / f"earlier-{workers}.ndjson", earlier)
        first = run_import(env, str(tmp_path / f"earlier-{workers}.ndjson"))
        assert f"accepted {len(earlier)}, duplicate 0, rejected 0" in first.stdout
        keys = Keys(prefix, db.shards)
        db.client().sadd(keys.erased(keys.shard_of("gone")), "gone")
        done = run_import(env, "--workers", workers, str(src))
        assert done.returncode == 0, done.stderr
        again = run_import(env, "--workers", workers, str(src))
        # A future timestamp's refusal names the time of the check: the one difference.
        reports = [re.sub(r"ahead of [0-9TZ:.-]+", "ahead of NOW", d.stdout) for d in (done, again)]
        got[workers] = (*reports, archive_bytes(root), counters(db, prefix))
        ids = archive_ids(root)
        assert set(ids.values()) == {1}
        assert set(ids) == archived | {e["event_id"] for e in earlier}
    (report, again, archive, counts), two = got["0"], got["2"]
    assert two[0] == report
    assert two[1] == again
    assert two[2] == archive
    assert two[3] == counts
    assert counts, "nothing was counted"
    total = sum(refused.values())
    assert f"rejected {total}\n" in report, report
    for code, n in refused.items():
        assert f"  rejected {code}: {n}\n" in report, report
    assert report.count("history.ndjson:") == 20  # the first 20 refused lines, named
    assert "accepted 0, " in again


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _under_way(
    db: Backend, tmp_path: Path, workers: int
) -> tuple[Path, dict[str, str], list[dict[str, Any]], Path, subprocess.Popen[bytes], set[int]]:
    """An import of 60,000 events with ``workers`` worker processes, once they all run
    and its first hour file is written: (archive, env, events, file, process, workers)."""
    root = tmp_path / "archive"
    env = {**env_for(db, root), "EA_IMPORT_BLOCK_BYTES": "65536", **STOPPABLE}
    events = history(60_000, hours=24)
    src = write_ndjson(tmp_path / "big.ndjson", events)
    proc = subprocess.Popen(
        [sys.executable, "-m", "event_analytics", "import", "--workers", str(workers), str(src)],
        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    found: set[int] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        found = spawned_under(proc.pid)
        if len(found) >= workers and files.list_files(root):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the import ended before it could be killed"
    assert len(found) >= workers, found
    return root, env, events, src, proc, found


def test_a_killed_import_takes_its_workers_and_the_next_run_finishes(
    db: Backend, tmp_path: Path
) -> None:
    root, env, events, src, proc, workers = _under_way(db, tmp_path, 2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers), "worker processes outlived the import"
    partial = archive_ids(root)
    assert set(partial.values()) <= {1}
    done = run_import(env, "--workers", "2", str(src))
    assert done.returncode == 0, done.stderr
    assert archive_ids(root) == Counter({e["event_id"]: 1 for e in events})
    assert f"accepted {len(events) - len(partial)}, duplicate {len(partial)}" in done.stdout
    checked = cli(["verify"], env)
    assert checked.returncode == 0 and "0 differ" in checked.stdout, checked.stdout


def test_workers_leave_no_metrics_files_in_the_services_directory(
    db: Backend, tmp_path: Path
) -> None:
    """``serve`` sets PROMETHEUS_MULTIPROC_DIR (``POST /api/import`` runs in its process):
    the workers record nothing, so they must leave no values files there (1 MiB each)."""
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    env = {**env_for(db, tmp_path / "archive"), "EA_IMPORT_BLOCK_BYTES": BLOCK,
           "PROMETHEUS_MULTIPROC_DIR": str(metrics)}  # fmt: skip
    src = write_ndjson(tmp_path / "h.ndjson", history(3000))
    proc = subprocess.Popen(
        [sys.executable, "-m", "event_analytics", "import", "--workers", "2", str(src)],
        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "accepted 3000, duplicate 0, rejected 0" in out
    pids = {f.stem.rpartition("_")[2] for f in metrics.glob("*.db")}
    assert pids <= {str(proc.pid)}, sorted(f.name for f in metrics.glob("*.db"))


def spawned_under(pid: int) -> set[int]:
    """Every process under ``pid`` (at any depth) that ``multiprocessing.spawn`` started."""
    found, stack = set(), [pid]
    while stack:
        for child in _children(stack.pop()):
            stack.append(child)
            with contextlib.suppress(OSError):
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.add(child)
    return found


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def _state(pid: int) -> tuple[str, str]:
    """A process's state letter and where in the kernel it sleeps (``wchan``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0], Path(f"/proc/{pid}/wchan").read_text()


def _stopped(pid: int) -> None:
    """Wait until every thread of ``pid`` has stopped (SIGSTOP is not at once: a thread
    still reading the result pipe would let the worker finish its result)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = {_thread_state(t) for t in Path(f"/proc/{pid}/task").glob("*")}
        if states <= {"T", "t", ""}:
            return
        time.sleep(0.001)
    raise AssertionError(f"the import process did not stop: {states}")


def _thread_state(task: Path) -> str:
    try:
        return (task / "stat").read_text().rpartition(")")[2].split()[0]
    except OSError:  # the thread ended
        return ""


# The tests below stop the import process (SIGSTOP) a moment at a time on purpose: an
# engine reply it was waiting for must not time out meanwhile.
STOPPABLE = {"EA_REDIS_TIMEOUT_S": "60"}


def _sending(pid: int) -> bool:
    """Blocked writing a result's body to its pipe: the message has begun there (its
    4-byte length header is a write of its own, done before: multiprocessing's
    ``Connection.send`` of more than 16 KiB; a result is ~150 KB, more than a pipe holds).
    Blocked writing the header instead, the pipe holds whole messages only."""
    if _state(pid)[1] not in ("pipe_write", "anon_pipe_write"):  # before and after Linux 6.x
        return False
    with contextlib.suppress(OSError, ValueError, IndexError):
        call = Path(f"/proc/{pid}/syscall").read_text().split()
        return call[0] == WRITE and int(call[3], 16) > 4  # write(fd, buf, count)
    return False


WRITE = {"x86_64": "1", "aarch64": "64"}.get(os.uname().machine, "?")  # the syscall number

# Where a worker may be when it dies.
DOING = {
    "checking": lambda pid: _state(pid)[0] == "R",  # a block
    "sending": _sending,  # a block's result, part of it in the pipe
}


def _stuck(pid: int) -> bool:
    """Asleep on one of its pipes: the pipe it reads is empty or the one it writes full,
    and only the import process (stopped) could change that, so it stays there."""
    state, wchan = _state(pid)
    return state == "S" and wchan.removeprefix("anon_") in ("pipe_read", "pipe_write")


def _seen(at: Callable[[int], bool], worker: int, until: Callable[[int], bool]) -> bool:
    """Whether ``at(worker)`` holds within a second, looking until ``until(worker)``."""
    settle = time.monotonic() + 1  # a block is checked in well under that
    while time.monotonic() < settle:
        if at(worker):
            return True
        if until(worker):
            return at(worker)
        time.sleep(0.001)
    return False


def kill_worker_while(doing: str, pid: int, worker: int) -> None:
    """Kill the worker -9 while it is ``doing`` (DOING), with the import process (``pid``)
    stopped (SIGSTOP) meanwhile, so that it reads no result: the worker is seen at that
    point, killed there, and the import process continued. The import process is stopped
    once the worker is seen there (or after a moment); when the worker is no longer there
    then, nor gets there before it sleeps on a pipe only the stopped process could serve,
    the import process goes on a little and is stopped again."""
    at = DOING[doing]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        _seen(at, worker, until=lambda _pid: False)  # while the import process runs
        os.kill(pid, signal.SIGSTOP)
        try:
            _stopped(pid)
            if _seen(at, worker, until=_stuck):
                os.kill(worker, signal.SIGKILL)
                return
        finally:
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError(f"the worker was never seen {doing}: {_state(worker)}")


@pytest.mark.parametrize("doing", ["anything", *DOING])
def test_a_killed_worker_stops_the_import_with_a_line_and_the_next_run_finishes(
    db: Backend, tmp_path: Path, doing: str
) -> None:
    """Wherever the worker is when it dies (``anything``: at the first hour file's write,
    when it is mostly waiting for the import process to ask for more), with blocks still
    to check, the import ends with one line (it once hung when the worker died sending a
    result: import_pool.py), and the next run finishes."""
    root, env, events, src, proc, workers = _under_way(db, tmp_path, 1)
    assert len(workers) == 1, workers
    if doing == "anything":
        os.kill(workers.pop(), signal.SIGKILL)
    else:
        kill_worker_while(doing, proc.pid, workers.pop())
    try:
        out, err = proc.communicate(timeout=120)  # a hang fails here
    except subprocess.TimeoutExpired:
        proc.kill()  # and leaves no import behind
        proc.communicate()
        raise
    assert proc.returncode == 1, (out, err)
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err.decode(), err.decode()
    assert lines[0].startswith("event-analytics import: an import worker process ended"), err
    assert "send it again to finish" in lines[0]
    partial = archive_ids(root)
    assert set(partial.values()) <= {1}
    done = run_import(env, "--workers", "1", str(src))
    assert done.returncode == 0, done.stderr
    assert archive_ids(root) == Counter({e["event_id"]: 1 for e in events})
    checked = cli(["verify"], env)
    assert checked.returncode == 0 and "0 differ" in checked.stdout, checked.stdout
