"""``event-analytics sql`` and ``funnel|retention|query`` as an operator runs them."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests import analytics_model as model

BASE = datetime(2026, 11, 28, 22, 30, tzinfo=UTC)


def _records() -> list[dict[str, Any]]:
    out = []
    for u in range(6):
        for i, kind in enumerate(["page_view", "signup", "purchase"][: 1 + u % 3]):
            ts = BASE + timedelta(minutes=20 * i + u)  # across the 23:00 hour edge
            out.append({"event_id": str(uuid.uuid4()), "user_id": f"u{u}",
                        "timestamp": ts.isoformat()[:-6] + "Z", "event_type": kind,
                        "payload": {"page_url": "https://s.example/p"} if i == 0 else {},
                        "received_at": ts.isoformat()[:-6] + "Z"})  # fmt: skip
    return out


def _cli(tmp_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env_dirs = ["--data-dir", str(tmp_path / "data"), "--archive-dir", str(tmp_path / "archive")]
    command, rest = args[0], list(args[1:])
    return subprocess.run(
        [sys.executable, "-m", "event_analytics", command, *env_dirs, *rest],
        capture_output=True, text=True, timeout=120, input=stdin,
    )  # fmt: skip


def test_sql_reads_the_archive_read_only(tmp_path: Path) -> None:
    recs = _records()
    model.archive(tmp_path / "archive", recs)
    sql = "SELECT event_type, count(*) AS n FROM events GROUP BY 1 ORDER BY 1"
    out = _cli(tmp_path, "sql", sql, "--format", "csv")
    assert out.returncode == 0, out.stderr
    rows = list(csv.reader(io.StringIO(out.stdout)))
    counts: dict[str, int] = {}
    for r in recs:
        counts[r["event_type"]] = counts.get(r["event_type"], 0) + 1
    assert rows == [["event_type", "n"], *[[k, str(v)] for k, v in sorted(counts.items())]]
    as_json = _cli(tmp_path, "sql", "SELECT count(DISTINCT user_id) AS u FROM events",
                   "--format", "json")  # fmt: skip
    assert json.loads(as_json.stdout) == [{"u": 6}]
    table = _cli(tmp_path, "sql", sql)
    assert "page_view" in table.stdout and table.returncode == 0
    for refused in ("COPY (SELECT 1) TO 'x.csv'", "CREATE TABLE t AS SELECT 1",
                    "SELECT 1; DROP VIEW events"):  # fmt: skip
        out = _cli(tmp_path, "sql", refused)
        assert out.returncode == 2 and "read-only" in out.stderr, refused
        assert not (Path.cwd() / "x.csv").exists()


def test_funnel_json_file_answers_as_the_model(tmp_path: Path) -> None:
    recs = _records()
    model.archive(tmp_path / "archive", recs)
    body = {"from": BASE.isoformat(), "to": (BASE + timedelta(hours=2)).isoformat(),
            "steps": [{"event_type": "page_view"}, {"event_type": "signup"},
                      {"event_type": "purchase"}], "window_s": 3600}  # fmt: skip
    spec = tmp_path / "funnel.json"
    spec.write_text(json.dumps(body))
    out = _cli(tmp_path, "funnel", "--json", str(spec), "--format", "json")
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert [s["users"] for s in answer["steps"]] == [
        s["users"] for s in model.funnel(recs, body)["steps"]
    ]
    table = _cli(tmp_path, "funnel", "--from", body["from"], "--to", body["to"],
                 "--step", "page_view=https://s.example/*", "--step", "signup")  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "Funnel (ordered)" in table.stdout
    bad = _cli(tmp_path, "funnel", "--json", "-", stdin=json.dumps({**body, "order": "x"}))
    assert bad.returncode == 2 and "order" in bad.stderr
    q = _cli(tmp_path, "query", "--range", "30d", "--dimension", "event_type", "--format", "json")
    assert q.returncode == 0, q.stderr
