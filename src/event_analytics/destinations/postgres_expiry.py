"""Retention in PostgreSQL (expiry.py): a day's rows, and the delivery records of old hours.

Each step is one transaction under the writers' advisory lock, so a delivery or a sync
never commits between a count and a delete.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from event_analytics.destinations.postgres import LOCK_KEY, PROGRESS, TABLE


def delete_day(conn: psycopg.Connection[Any], day: datetime) -> int:
    """Drop the day's partition (and delete any row of the day another partition holds);
    its delivery records stay, so delivery does not send the day's files again. Returns
    the rows deleted."""
    name = f"{TABLE}_{day:%Y%m%d}"
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        ours = conn.execute(
            "SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass(%s) "
            "AND inhparent = to_regclass(%s)",
            (name, TABLE),
        ).fetchone()
        rows = 0
        if ours:
            partition = sql.Identifier(name)
            counted = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(partition)).fetchone()
            rows = int(counted[0]) if counted else 0
            conn.execute(sql.SQL("DROP TABLE {}").format(partition))
        cur = conn.execute(
            f"DELETE FROM {TABLE} WHERE ts >= %s AND ts < %s", (day, day + timedelta(days=1))
        )
        return rows + max(0, cur.rowcount)


def forget_before(conn: psycopg.Connection[Any], upto: datetime) -> int:
    """Delete every row and delivery record of hours before ``upto`` (no file of them is
    left); returns the rows deleted (none, unless a pass died between its steps)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        cur = conn.execute(f"DELETE FROM {TABLE} WHERE ts < %s", (upto,))
        conn.execute(f"DELETE FROM {PROGRESS} WHERE hour < %s", (upto,))
        return max(0, cur.rowcount)
