"""The two compaction levers left for the 10 M funnel (issue 23), measured before either
is built: each as a different copy of the same hours, A/B in one process against the
copies as compaction writes them now, CPU seconds of this process (DuckDB's threads
included) and wall seconds per run, runs alternating, every answer checked equal.

    python benchmarks/funnel_levers.py [--dir /tmp/ea-scale-10000000] [--runs 3]
        [--scratch /tmp/ea-funnel-levers] [--row-group 8192] [--threads 2]

The levers, as copies written under ``--scratch`` (``--dir`` is only read):

- ``keyed``: each copy with ``user_key``, the user's 64-bit hash stored at compaction,
  so no read hashes the user string. Timed: the whole funnel (``funnel.build``) with
  the stored key for the hash, and with the stored key and the fast plan's
  user-collision check out of the window (no ``user_id`` in the sort), plus the check
  that would then have to run on its own (distinct users against distinct keys).
- ``sorted``: each copy ordered by (event_type, page_url, timestamp) in row groups of
  ``--row-group`` rows, so a read filtered on a step's type or page skips row groups
  by their statistics. Timed: the read with the step flags and their filter (as
  ``funnel_floor.py``) over the copies as they are and over the sorted ones, plain,
  with an ``event_type IN`` prefilter the scan can push down, and as one scan per
  step type with the step's own type and page as the scan's filter; then the whole
  funnel over the sorted copies with the prefilter.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import analytics_bench as ab
import duckdb

from event_analytics.analytics import funnel
from event_analytics.analytics.snapshot import hour_files
from event_analytics.analytics.spec import FunnelSpec

FLAGS = (
    "(CASE WHEN event_type = 'page_view' THEN coalesce(page_url = $page, false) ELSE false END)"
    " AS s1, (event_type = 'signup') AS s2, (CASE WHEN event_type = 'purchase' THEN "
    "coalesce((payload::JSON->>'plan') IN ('pro', 'team'), false) ELSE false END) AS s3"
)
TYPES = "event_type IN ('page_view', 'signup', 'purchase')"
PAGE = "https://shop.example/pricing"


def write_copies(sources: list[str], scratch: Path, row_group: int) -> None:
    """The ``keyed`` and ``sorted`` copy of each source copy, unless already there."""
    con = duckdb.connect(config={"threads": 1})
    con.execute("SET TimeZone = 'UTC'")
    for kind in ("keyed", "sorted"):
        (scratch / kind).mkdir(parents=True, exist_ok=True)
    for source in sources:
        name = Path(source).name
        keyed, ordered = scratch / "keyed" / name, scratch / "sorted" / name
        select = f"SELECT *, hash(user_id) AS user_key FROM read_parquet('{source}')"
        if not keyed.exists():
            con.execute(f"COPY ({select}) TO '{keyed}.tmp' (FORMAT parquet)")
            os.replace(f"{keyed}.tmp", keyed)
        if not ordered.exists():
            con.execute(
                f'COPY ({select} ORDER BY event_type, page_url, "timestamp") TO '
                f"'{ordered}.tmp' (FORMAT parquet, ROW_GROUP_SIZE {row_group})"
            )
            os.replace(f"{ordered}.tmp", ordered)
    con.close()


def _swap(sql: str, old: str, new: str) -> str:
    """``sql`` with its one ``old`` replaced (fails loudly if funnel.build changed)."""
    assert sql.count(old) == 1, f"funnel.build no longer holds {old!r} once"
    return sql.replace(old, new)


def keyed(sql: str) -> str:
    sql = _swap(sql, "SELECT event_id, user_id,", "SELECT event_id, user_id, user_key,")
    sql = _swap(
        sql, "SELECT user_id, epoch_us(ts) AS ts,", "SELECT user_id, user_key, epoch_us(ts) AS ts,"
    )
    return _swap(sql, f"{funnel.FAST_KEY} AS uk", "user_key AS uk")


def no_user_in_window(sql: str) -> str:
    return _swap(sql, "lag(user_id) OVER w <> user_id OR ", "")


def prefiltered(sql: str) -> str:
    return _swap(sql, "FROM read_parquet($p0))", f"FROM read_parquet($p0) WHERE {TYPES})")


def reads() -> dict[str, str]:
    """The read with the step flags and their filter, each way (files in ``$f``)."""

    def read(where: str = "") -> str:
        return f"SELECT user_id, epoch_us(timestamp) AS ts, {FLAGS} FROM read_parquet($f){where}"

    agg = "SELECT count(*), max(hash(user_id)), max(ts), count(*) FILTER (s1) FROM ({}) "
    agg += "WHERE s1 OR s2 OR s3"
    per_type = " UNION ALL ".join(
        [
            read(" WHERE event_type = 'page_view' AND page_url = $page"),
            read(" WHERE event_type = 'signup'"),
            read(" WHERE event_type = 'purchase'"),
        ]
    )
    return {
        "plain": agg.format(read()),
        "type IN": agg.format(read(f" WHERE {TYPES}")),
        "scan per type": agg.format(per_type),
    }


def rounded(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows with floats to 6 places (the answer's rounding: a parallel avg's last bits vary)."""
    return [tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default="/tmp/ea-scale-10000000", help="scale_bench's archive")
    parser.add_argument("--scratch", default="/tmp/ea-funnel-levers")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--row-group", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    spec = FunnelSpec.model_validate(ab.questions(ab.END, 7)["3-step funnel, 7 days"][1])
    con = duckdb.connect(config={"threads": args.threads, "memory_limit": "2GB"})
    con.execute("SET TimeZone = 'UTC'")
    scratch = Path(args.scratch)
    with hour_files(Path(args.dir) / "archive", *funnel.span(spec)) as files:
        assert not files.jsonl and not files.parquet_old, "compact the archive first"
        sql, params = funnel.build(spec, files)
        write_copies(files.parquet, scratch, args.row_group)

        def copies(kind: str) -> list[str]:
            return [str(scratch / kind / Path(p).name) for p in files.parquet]

        check = (
            "SELECT count(DISTINCT user_id) = count(DISTINCT user_key) "
            f"FROM read_parquet($f) WHERE {TYPES}"
        )
        read_sql = reads()
        cases: list[tuple[str, str, str, dict[str, Any]]] = [
            ("funnel", "as now", sql, params),
            ("funnel", "keyed", keyed(sql), {**params, "p0": copies("keyed")}),
            (
                "funnel",
                "keyed, check out of the window",
                no_user_in_window(keyed(sql)),
                {**params, "p0": copies("keyed")},
            ),
            ("check", "keyed: the check alone", check, {"f": copies("keyed")}),
            ("funnel", "sorted + type IN", prefiltered(sql), {**params, "p0": copies("sorted")}),
            ("read", "as now", read_sql["plain"], {"f": files.parquet, "page": PAGE}),
            *(
                ("read", f"sorted: {name}", text, {"f": copies("sorted"), "page": PAGE})
                for name, text in read_sql.items()
            ),
        ]
        print(f"load {os.getloadavg()[0]:.1f}, {len(files.parquet)} copies under {args.dir}")
        answers: dict[str, list[tuple[Any, ...]]] = {}
        cpu: dict[str, list[float]] = {}
        wall: dict[str, list[float]] = {}
        for _ in range(args.runs):
            for group, name, text, values in cases:
                used = {k: v for k, v in values.items() if f"${k}" in text}
                began, times = time.perf_counter(), os.times()
                rows = rounded(con.execute(text, used).fetchall())
                after = os.times()
                key = f"{group}: {name}"
                cpu.setdefault(key, []).append(
                    after.user + after.system - times.user - times.system
                )
                wall.setdefault(key, []).append(time.perf_counter() - began)
                assert answers.setdefault(group, rows) == rows, f"{key} answered {rows}"
                print(
                    f"{key:46s} CPU {cpu[key][-1]:5.2f} s  wall {wall[key][-1]:5.2f} s  "
                    f"load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
        print("medians:")
        for key in cpu:
            print(
                f"{key:46s} CPU {statistics.median(cpu[key]):5.2f} s  "
                f"wall {statistics.median(wall[key]):5.2f} s"
            )
        print(f"answers: {answers}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
