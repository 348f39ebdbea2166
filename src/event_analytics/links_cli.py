"""``event-analytics links add|list|revoke``: a site's shared links from a shell.

The same store as ``/api/v1/sites/shared-links`` (store/shared_links.py), on the engine
the command's settings choose: REDIS_URL or REDIS_CLUSTER_URL, else the embedded engine
of the data dir (a running ``serve``'s, or started for the command). ``add`` prints the
link's path with its token (shown this once); ``add --password-stdin`` reads the link's
password from the first line of stdin (never an argument: those show in ``ps`` and shell
history). Bad arguments are one line on stderr and
exit 2; an unknown link or an engine away, one line and exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import quote

from event_analytics.config import Settings
from event_analytics.errors import InvalidInput
from event_analytics.goals import check_site


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from event_analytics.passwords import MAX_LEN, MIN_LEN
    from event_analytics.store import IngestWriter
    from event_analytics.store.shared_links import MAX_NAME, SharedLinkStore, check_password
    from event_analytics.target import run_on_writer

    # Checked before any engine is reached: a typo costs no engine start.
    try:
        site = check_site(args.site)
    except InvalidInput:
        print(f"event-analytics links {args.action}: --site: a domain, e.g. example.com",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.action == "add" and not 0 < len(args.name.strip()) <= MAX_NAME:
        print(f"event-analytics links add: --name: 1 to {MAX_NAME} characters", file=sys.stderr)
        return 2
    password = None
    if args.action == "add" and args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        try:
            check_password(password)
        except InvalidInput:
            print(f"event-analytics links add: --password-stdin: {MIN_LEN} to {MAX_LEN} "
                  "characters on stdin's first line", file=sys.stderr)  # fmt: skip
            return 2

    async def act(store: IngestWriter) -> None:
        links = SharedLinkStore(store.client, store.keys)
        if args.action == "add":
            link, token = await links.create(site, args.name, password)
            url = f"/share/{quote(site, safe='')}?auth={token}"
            shown = link.as_dict() | {"url": url, "token": token}
            print(json.dumps(shown) if args.json else f"created link {link.id}: {url}")
        elif args.action == "list":
            found = await links.list(site)
            if args.json:
                print(json.dumps({"shared_links": [x.as_dict() for x in found]}))
            else:
                print("id\tcreated\tpassword\tname")
                for x in found:
                    locked = "yes" if x.password_hash is not None else "no"
                    print(f"{x.id}\t{x.created_at}\t{locked}\t{x.name}")
        else:
            gone = await links.revoke(site, args.id)
            print(json.dumps({"deleted": True}) if args.json else f"revoked link {gone.id}")

    return run_on_writer(settings, f"links {args.action}", act)


def add_commands(sub: Any, add_dirs: Any) -> None:
    """Register ``links`` and its actions on ``cli.py``'s subparsers."""
    links = sub.add_parser("links", help="a site's shared read-only links: add, list, revoke")
    actions = links.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="make a link (its token is printed this once)")
    add.add_argument("--name", required=True, help="what the link is for, e.g. 'Client'")
    add.add_argument("--password-stdin", action="store_true",
                     help="the page asks for a password: read from stdin's first line")  # fmt: skip
    listing = actions.add_parser("list", help="a site's links (without tokens)")
    revoke = actions.add_parser("revoke", help="revoke a link by its id: refused at once")
    revoke.add_argument("id", help="the link's id (links list)")
    for p in (add, listing, revoke):
        add_dirs(p)
        p.add_argument("--site", required=True, help="the site's domain, e.g. example.com")
        p.add_argument("--json", action="store_true", help="JSON output (the API's shape)")
        p.set_defaults(func=_run)
