"""``event-analytics goals add|list|delete``: a site's goals from a shell.

The same store as ``PUT/GET/DELETE /api/v1/sites/goals`` (store/goals.py), on the engine
the command's settings choose (engine.py): REDIS_URL or REDIS_CLUSTER_URL, else the
embedded engine of the data dir (a running ``serve``'s, or started for the command).
Bad arguments are one line on stderr and exit 2; an unknown goal or an engine away,
one line and exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from event_analytics.config import Settings
from event_analytics.errors import InvalidInput
from event_analytics.goals import Goal, check_site, new_goal


def _line(goal: Goal) -> str:
    target = goal.event_name if goal.event_name is not None else goal.page_path
    money = f"\t{goal.currency}" if goal.currency else "\t-"
    return f"{goal.id}\t{goal.kind}\t{target}{money}\t{goal.display_name}"


def _as_api(goal: Goal) -> dict[str, Any]:
    return {"id": goal.id, "display_name": goal.display_name, "goal_type": str(goal.kind),
            "event_name": goal.event_name, "page_path": goal.page_path,
            "currency": goal.currency}  # fmt: skip


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from event_analytics.store import IngestWriter
    from event_analytics.store.goals import GoalStore
    from event_analytics.target import run_on_writer

    # Checked before any engine is reached: a typo costs no engine start.
    try:
        site = check_site(args.site)
        goal = None
        if args.action == "add":
            kind = "event" if args.event is not None else "page"
            goal = new_goal(site, kind, event_name=args.event, page_path=args.page,
                            currency_code=args.currency, display_name=args.name)  # fmt: skip
    except InvalidInput as exc:
        flags = {"site_id": "--site", "event_name": "--event", "page_path": "--page",
                 "currency": "--currency", "display_name": "--name"}  # fmt: skip
        why = "; ".join(f"{flags.get(e.field, e.field)}: {e.message}" for e in exc.errors)
        print(f"event-analytics goals {args.action}: {why}", file=sys.stderr)
        return 2

    async def act(store: IngestWriter) -> None:
        goals = GoalStore(store.client, store.keys)
        if goal is not None:
            stored, created = await goals.put(goal)
            verb = "created" if created else "exists:"
            print(f"{verb} goal {_line(stored)}" if not args.json else
                  json.dumps(_as_api(stored) | {"created": created}))  # fmt: skip
        elif args.action == "list":
            found = await goals.list(site)
            if args.json:
                print(json.dumps({"goals": [_as_api(g) for g in found]}))
            else:
                print("id\ttype\tevent or page\tcurrency\tdisplay name")
                for each in found:
                    print(_line(each))
        else:
            gone = await goals.delete(site, args.id)
            print(json.dumps({"deleted": True}) if args.json else f"deleted goal {_line(gone)}")

    return run_on_writer(settings, f"goals {args.action}", act)


def add_commands(sub: Any, add_dirs: Any) -> None:
    """Register ``goals`` and its actions on ``cli.py``'s subparsers."""
    goals = sub.add_parser(
        "goals", help="a site's goals: add, list, delete (query-time definitions)"
    )
    actions = goals.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="find or create a goal (PUT /api/v1/sites/goals)")
    which = add.add_mutually_exclusive_group(required=True)
    which.add_argument("--event", help="an event goal: the custom event's name")
    which.add_argument("--page", help="a page goal: a path pattern (* and ** as Plausible's)")
    add.add_argument("--currency", help="revenue goal: ISO 4217 code (event goals only)")
    add.add_argument("--name", help="display name (default: the event, or 'Visit <page>')")
    listing = actions.add_parser("list", help="a site's goals, oldest first")
    delete = actions.add_parser("delete", help="delete a goal by its id")
    delete.add_argument("id", type=int, help="the goal's id (goals list)")
    for p in (add, listing, delete):
        add_dirs(p)
        p.add_argument("--site", required=True, help="the site's domain, e.g. example.com")
        p.add_argument("--json", action="store_true", help="JSON output (the API's shape)")
        p.set_defaults(func=_run)
