"""``event-analytics import FILE…``: history into the archive, each event once by id.

Arguments are checked here, not by argparse, so that a mistake is one line on stderr
and exit status 2. The report (accepted / duplicate / rejected per reason, with the
first rejected lines named) goes to standard output.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from event_analytics.config import Settings

if TYPE_CHECKING:
    from event_analytics.importing import ImportReport


def _formats(args: argparse.Namespace) -> list[tuple[Path, str]] | str:
    # The readers (and the adapters they use) here: every CLI call builds this parser.
    from event_analytics import import_read

    if args.format is not None and args.format not in import_read.FORMATS:
        return f"--format must be one of {', '.join(import_read.FORMATS)}"
    out = []
    for path in args.files:
        fmt = args.format or import_read.detect(path)
        if fmt is None:
            return f"cannot tell the format of {path} from its name: give --format"
        if not path.is_file():
            return f"{path} is not a readable file"
        out.append((path, fmt))
    return out


def _import(args: argparse.Namespace, settings: Settings) -> int:
    planned = _formats(args)
    if args.import_workers is not None and not 0 <= args.import_workers <= 64:
        planned = "--workers must be 0 to 64"
    if isinstance(planned, str):
        print(f"event-analytics import: {planned}", file=sys.stderr)
        return 2

    async def run(settings: Settings) -> int:
        from event_analytics.errors import ImportBusy, ImportWorkerLost
        from event_analytics.importing import run_import

        sources = [(path.name, path, fmt) for path, fmt in planned]
        try:
            report = await run_import(settings, sources, args.import_workers)
        except ImportBusy as exc:
            print(f"event-analytics import: {exc}", file=sys.stderr)
            return 1
        except ImportWorkerLost as exc:
            print(f"event-analytics import: {exc.detail()}", file=sys.stderr)
            return 1
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"event-analytics import: {where}{exc.strerror or exc}", file=sys.stderr)
            return 1
        for line in report_lines(report):
            print(line)
        return 0

    from event_analytics.target import run_with_engine

    return run_with_engine(settings, run)


def report_lines(report: ImportReport) -> list[str]:
    """The report as the command prints it."""
    out = [
        f"accepted {report.accepted}, duplicate {report.duplicate}, "
        f"rejected {sum(report.rejected.values())}"
    ]
    out += [f"  rejected {code}: {n}" for code, n in sorted(report.rejected.items())]
    out += [f"  {example}" for example in report.examples]
    if report.recovered_days:
        out.append(f"counters rebuilt for {report.recovered_days} day(s) a killed import left")
    out.append(f"counted into the counters: {report.counted}")
    if report.live:
        out.append(
            f"through the live path: {report.live} (days the live window or the archiver's "
            "backlog reaches; the archiver writes them)"
        )
    return out


def add_commands(
    sub: argparse._SubParsersAction[Any],
    add_dirs: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = sub.add_parser("import", help="events of any age into the archive, once by event id")
    add_dirs(p)
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument(
        "--format",
        help="ndjson (our records), segment (one message a line) or csv "
        "(default: from the name: .csv, .ndjson/.jsonl/.json)",
    )
    p.add_argument(
        "--workers",
        dest="import_workers",  # not serve's --workers (EA_WORKERS), a setting of its own
        type=int,
        help="worker processes that read and validate NDJSON files (default "
        "EA_IMPORT_WORKERS, 1; 0: all in the import process)",
    )
    p.set_defaults(func=_import)
