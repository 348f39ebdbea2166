"""Every command of the CLI fails on bad arguments with one clear line on stderr and exit
code 2, and on a runtime failure (an unreachable engine or service, a bad destination)
with one line and exit code 1: never a Python traceback, never after half its work
(issue 21, item 4: ``backup`` into an existing file or a dangling symbolic link printed a
traceback, the second after the engine's snapshot was taken).

Each case is a real run of ``python -m event_analytics``; none needs an engine to start
(the destination is checked first), so they are quick.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from event_analytics.cli import build_parser

pytestmark = pytest.mark.slow  # forty runs of the real CLI

CLOSED = "127.0.0.1:9"  # the discard port: nothing listens on loopback


def _commands() -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return set(sub.choices)  # type: ignore[arg-type]


# (args, extra environment, exit code, a phrase of the one line); {tmp} is a fresh dir.
CASES: list[tuple[list[str], dict[str, str], int, str]] = [
    ([], {}, 2, "required: command"),
    (["nope"], {}, 2, "invalid choice: 'nope'"),
    (["serve", "--port", "http"], {}, 2, "--port"),
    (["serve", "--port", "70000"], {}, 2, "--port"),
    (["serve", "--workers", "0"], {}, 2, "--workers"),
    (["serve", "--bogus"], {}, 2, "unrecognized arguments: --bogus"),
    (["serve"], {"EA_SHARDS": "many"}, 2, "EA_SHARDS"),
    (["archiver", "extra"], {}, 2, "unrecognized arguments: extra"),
    (["rebuild", "--from", "yesterday"], {}, 2, "--from"),
    (["verify", "--to", "2026-13-01"], {}, 2, "--to"),
    (["backup"], {}, 2, "required: DIR"),
    (["backup", "{tmp}/file"], {}, 1, "not a directory"),
    (["backup", "{tmp}/dangling"], {}, 1, "symbolic link to nothing"),
    (["restore"], {}, 2, "required: DIR"),
    (["restore", "{tmp}/missing"], {}, 1, "not a directory"),
    (["restore", "{tmp}/file"], {}, 1, "not a directory"),
    (["restore", "{tmp}/empty"], {}, 1, "manifest.json missing"),
    (["loadtest", "--events", "0"], {}, 2, "--events"),
    (["loadtest", "--concurrency", "many"], {}, 2, "--concurrency"),
    # loadtest's own contract: 0 PASS, 1 FAIL, 2 could not run (docs/loadtest).
    (["loadtest", "--url", f"http://{CLOSED}", "--events", "1"], {}, 2, "cannot reach"),
    (["status", "--minutes", "0"], {}, 2, "--minutes"),
    (["status", "--url", f"http://{CLOSED}"], {}, 1, "Cannot connect"),
    (["sql"], {}, 2, "required: statement"),
    (["sql", "SELECT 1", "--format", "xml"], {}, 2, "invalid choice: 'xml'"),
    (["compact", "--bogus"], {}, 2, "unrecognized arguments: --bogus"),
    (["funnel", "--window", "a day"], {}, 2, "--window"),
    (["retention", "--period", "year"], {}, 2, "invalid choice: 'year'"),
    (["query", "--limit", "ten"], {}, 2, "--limit"),
    (["goals"], {}, 2, "required: action"),
    (
        ["stats-export", "--site", "example.com", "--output", "x.zip", "--filter", "nope"],
        {},
        2,
        "--filter 'nope' is not JSON",
    ),
    (
        ["stats-export", "--site", "example.com", "--output", "x.zip", "--range", "soon"],
        {},
        2,
        "Invalid date_range 'soon'",
    ),
    (["goals", "add", "--site", "example.com"], {}, 2, "one of the arguments --event --page"),
    (["goals", "delete", "--site", "example.com", "one"], {}, 2, "invalid int value: 'one'"),
    (["links"], {}, 2, "required: action"),
    (["links", "add", "--site", "example.com"], {}, 2, "required: --name"),
    (["links", "add", "--site", "not a site", "--name", "x"], {}, 2, "--site: a domain"),
    (["links", "add", "--site", "example.com", "--name", " "], {}, 2, "--name: 1 to 200"),
    (
        ["links", "add", "--site", "example.com", "--name", "x", "--password-stdin"],
        {},
        2,
        "--password-stdin: 8 to 200 characters",
    ),
    (["links", "list"], {}, 2, "required: --site"),
    (["links", "revoke", "--site", "example.com"], {}, 2, "required: id"),
    (["export", "--from", "yesterday", "--to", "2026-12-01"], {}, 2, "--from 'yesterday'"),
    (
        ["export", "--from", "2026-12-01", "--to", "2026-12-02", "--format", "xml"],
        {},
        2,
        "--format must be one of",
    ),
    (["import", "x.ndjson", "--format", "xml"], {}, 2, "--format must be one of"),
    (["import", "history.txt"], {}, 2, "cannot tell the format"),
    (["import", "x.ndjson", "--workers", "-1"], {}, 2, "--workers must be 0 to 64"),
    (["forget", "bad\x01id"], {}, 2, "user id number 1 is not a user id"),
    (["forget", "alice", "--wait", "0"], {}, 2, "--wait"),
    (["deliver"], {}, 2, "set EA_POSTGRES_URL"),
    (["expire", "--once"], {}, 2, "set EA_ARCHIVE_RETENTION_DAYS"),
    (["expire", "--once"], {"EA_ARCHIVE_RETENTION_DAYS": "3"}, 2, "must be longer than"),
    (["expire", "--twice"], {}, 2, "unrecognized arguments: --twice"),
    (["expire", "--dry-run"], {}, 2, "set EA_ARCHIVE_RETENTION_DAYS"),
    (["deliver", "extra"], {}, 2, "unrecognized arguments: extra"),
    (["query-server", "extra"], {}, 2, "unrecognized arguments: extra"),
    (["forget-worker", "extra"], {}, 2, "unrecognized arguments: extra"),
    (["sync", "--from", "x", "--to", "y"], {}, 2, "set EA_POSTGRES_URL"),
    (["verify", "--postgres"], {}, 2, "set EA_POSTGRES_URL"),
    (["rebuild"], {"REDIS_URL": f"redis://{CLOSED}/0"}, 1, CLOSED.split(":")[0]),
    (["verify"], {"REDIS_URL": f"redis://{CLOSED}/0"}, 1, CLOSED.split(":")[0]),
]


def test_every_command_has_a_bad_argument_case() -> None:
    covered = {args[0] for args, _, code, _ in CASES if args and code == 2}
    assert _commands() <= covered, _commands() - covered


@pytest.mark.parametrize(("args", "env", "code", "phrase"), CASES, ids=lambda v: str(v)[:40])
def test_bad_arguments_give_one_line_and_the_exit_code(
    args: list[str], env: dict[str, str], code: int, phrase: str, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("not a directory\n")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("EA_", "REDIS_"))}
    done = subprocess.run(
        [sys.executable, "-m", "event_analytics", *argv],
        env=base | {"EA_DATA_DIR": str(tmp_path / "data")} | env,
        capture_output=True, text=True, timeout=120, cwd=tmp_path, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    # status is a report: what it found, the failure included, goes to stdout.
    said = done.stdout if args[:1] == ["status"] and code == 1 else done.stderr
    lines = [
        line
        for line in said.strip().splitlines()
        if "Cannot connect" in line or said is done.stderr
    ]
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    assert done.returncode == code, (done.returncode, done.stderr)
    assert len(lines) == 1, done.stderr
    assert phrase in lines[0], lines[0]
    # Nothing was started nor made for a refused command.
    assert not (tmp_path / "data").exists() or (code == 1 and args[0] in ("rebuild", "verify"))
    if args[:1] == ["backup"]:
        assert not (tmp_path / "nowhere").exists()
