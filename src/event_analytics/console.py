"""Terminal output for the command-line tools (rich)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from event_analytics.archive.verify import Difference
from event_analytics.timebucket import iso_z

console = Console(stderr=True)


@contextlib.contextmanager
def progress_bar(label: str, total_bytes: int) -> Iterator[Callable[[int], None]]:
    """A byte-based progress bar on stderr; yields ``advance(bytes)``."""
    with Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(label, total=total_bytes or 1)
        yield lambda done: progress.advance(task, done)


def print_differences(differences: Sequence[Difference], limit: int = 200) -> None:
    """The minutes where live and archive disagree, as a table on stdout."""
    if not differences:
        return
    table = Table(title=f"{len(differences)} minutes differ (archive vs live)")
    for column in (
        "event_type",
        "minute",
        "archive count",
        "live count",
        "archive users",
        "live users",
    ):
        table.add_column(column)
    for d in differences[:limit]:
        table.add_row(
            d.event_type, iso_z(d.minute), str(d.archive_count), str(d.live_count),
            str(d.archive_users), str(d.live_users),
        )  # fmt: skip
    Console().print(table)
