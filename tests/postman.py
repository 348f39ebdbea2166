"""Reading docs/event-analytics.postman_collection.json, and sending its requests as Postman would.

Postman runs the collection's pre-request scripts (JavaScript) to set the variables the
requests use; ``Runner`` sets the same variables in Python. ``SCRIPTED`` lists them, and
a test checks that the scripts set exactly these, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

COLLECTION = Path(__file__).resolve().parent.parent / "docs/event-analytics.postman_collection.json"
VARIABLE = re.compile(r"\{\{([^{}]+)\}\}")
SCRIPT_SETS = re.compile(r"pm\.collectionVariables\.set\(\s*\"([A-Za-z_]+)\"")
SCRIPTED = {"now", "fiveMinutesAgo", "minuteKey", "eventId", "eventTimestamp"}


@dataclass(frozen=True)
class Item:
    folder: str
    name: str
    request: dict[str, Any]
    prerequest: str
    tests: str
    examples: list[dict[str, Any]]

    @property
    def method(self) -> str:
        return str(self.request["method"])

    @property
    def raw_url(self) -> str:
        return str(self.request["url"]["raw"])

    @property
    def path(self) -> str:
        """The URL's path with {{baseUrl}} taken off (variables in it left as they are)."""
        return urlsplit("http://host" + self.raw_url.removeprefix("{{baseUrl}}")).path


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(COLLECTION.read_text())
    return data


def script(entry: dict[str, Any], listen: str) -> str:
    return "\n".join(
        "\n".join(e["script"]["exec"]) for e in entry.get("event", []) if e["listen"] == listen
    )


def items(collection: dict[str, Any], folder: str = "") -> list[Item]:
    """Every request, in the collection's order, with the folder it is in."""
    found = []
    for entry in collection["item"]:
        if "item" in entry:
            found += items(entry, entry["name"])
        else:
            found.append(
                Item(
                    folder=folder,
                    name=entry["name"],
                    request=entry["request"],
                    prerequest=script(entry, "prerequest"),
                    tests=script(entry, "test"),
                    examples=entry.get("response", []),
                )
            )
    return found


def js_iso(moment: datetime) -> str:
    """JavaScript's Date.toISOString(): milliseconds and a Z."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Runner:
    """Sends items with their variables resolved as the collection's scripts set them."""

    def __init__(self, base_url: str) -> None:
        self.vars: dict[str, str] = {"baseUrl": base_url}

    def before(self, item: Item) -> None:
        # The collection's pre-request script, run before every request.
        now = datetime.now(UTC)
        self.vars["now"] = js_iso(now)
        self.vars["fiveMinutesAgo"] = js_iso(now - timedelta(minutes=5))
        self.vars["minuteKey"] = "page_view_" + now.strftime("%Y-%m-%d_%H:%M")
        # "Ingest a page view" remembers its event for "Send the same event again".
        if '"eventId"' in item.prerequest:
            self.vars["eventId"] = str(uuid.uuid4())
            self.vars["eventTimestamp"] = self.vars["now"]

    def resolve(self, text: str) -> str:
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name == "$guid":  # a new one at every occurrence, as in Postman
                return str(uuid.uuid4())
            return self.vars[name]

        return VARIABLE.sub(one, text)

    def send(self, client: httpx.Client, item: Item) -> httpx.Response:
        self.before(item)
        headers = {h["key"]: self.resolve(h["value"]) for h in item.request.get("header", [])}
        body = item.request.get("body", {}).get("raw")
        content = self.resolve(body).encode() if body is not None else None
        return client.request(
            item.method, self.resolve(item.raw_url), headers=headers, content=content
        )
