"""Headless Chromium for the browser tests: one bounded run, and the DOM it rendered."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--enable-logging=stderr",  # the page's console messages and uncaught errors
    "--v=0",
    "--window-size=1280,900",
    # Virtual time stands still while fetches are pending, so one full refresh renders
    # whatever the machine's speed; under the page's 5 s period, so exactly one.
    "--virtual-time-budget=4000",
]


@dataclass
class Run:
    stdout: bytes
    console: list[str]  # what the page logged, uncaught errors included


def run_chromium(binary: str, profile: Path, action: str, url: str) -> Run:
    """One headless run (--dump-dom or --screenshot=…). Bounded, and reaped."""
    cmd = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", action, url]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=os.environ | {"TZ": "Europe/Berlin"},  # the page must show UTC anyway
    )
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        # Renderer and helper processes share the session: none may outlive the test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log = err.decode(errors="replace")
    assert proc.returncode == 0, log[-2000:]
    return Run(out, [line for line in log.splitlines() if ":CONSOLE" in line])


def render(binary: str, tmp_path: Path, url: str) -> Dom:
    """The DOM after the page's scripts ran (one refresh)."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    run = run_chromium(binary, profile, "--dump-dom", url)
    dom = Dom(run.stdout.decode())
    dom.console = run.console
    return dom


# ---- the rendered DOM -------------------------------------------------------------------


@dataclass
class Node:
    tag: str
    attrs: dict[str, str | None]
    children: list[Node | str] = field(default_factory=list)

    def text(self) -> str:
        return " ".join(
            " ".join((c if isinstance(c, str) else c.text()).split()) for c in self.children
        ).strip()

    def walk(self) -> Iterator[Node]:
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.walk()

    def all(self, tag: str) -> list[Node]:
        return [n for n in self.walk() if n.tag == tag]

    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())


class Dom(HTMLParser):
    VOID = {"meta", "link", "br", "img", "input", "hr", "col", "source", "wbr"}

    def __init__(self, html: str) -> None:
        super().__init__()
        self.root = Node("#root", {})
        self.stack = [self.root]
        self.console: list[str] = []
        self.feed(html)
        self.ids = {n.attrs["id"]: n for n in self.root.walk() if n.attrs.get("id")}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)

    def __getitem__(self, element_id: str) -> Node:
        return self.ids[element_id]

    def value(self, element_id: str) -> float:
        raw = self[element_id].attrs.get("data-value")
        assert raw is not None, f"#{element_id} has no value: {self[element_id].text()!r}"
        return float(raw)
