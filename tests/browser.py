"""Headless Chromium for the browser tests: one bounded run, and the DOM it rendered."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

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


@contextlib.contextmanager
def live_page(binary: str, profile: Path) -> Iterator[LivePage]:
    """Chromium in real time, driven over the DevTools protocol on a pipe (no dependency).

    For a test that acts while the page runs (a query slot let go after the page met the
    503, say): virtual time (``render``) fast-forwards the page's timers, so its waits
    would pass in no time at all, before anything outside could change.
    """
    flags = [f for f in CHROMIUM_FLAGS if not f.startswith("--virtual-time-budget")]
    to_browser, commands = os.pipe()
    answers, from_browser = os.pipe()
    log = open(profile.parent / f"{profile.name}.log", "w+b")  # noqa: SIM115
    # --remote-debugging-pipe reads commands on fd 3 and writes on fd 4: the shell puts
    # the pipes there (given as its stdin and stdout).
    proc = subprocess.Popen(
        ["sh", "-c", 'exec "$@" 3<&0 4>&1 0</dev/null 1>&2', "sh", binary, *flags,
         "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
        stdin=to_browser, stdout=from_browser, stderr=log, start_new_session=True,
        env=os.environ | {"TZ": "Europe/Berlin"},
    )  # fmt: skip
    os.close(to_browser)
    os.close(from_browser)
    try:
        yield LivePage(proc, commands, answers, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: every browser process
        proc.wait(timeout=10)
        os.close(commands)
        os.close(answers)
        log.close()


class LivePage:
    """One tab of ``live_page``'s browser; every call is bounded by ``timeout_s``."""

    def __init__(self, proc: subprocess.Popen[bytes], commands: int, answers: int, log: Any):
        self.proc, self.commands, self.answers, self.log = proc, commands, answers, log
        self.buffer = b""
        self.last_id = 0
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]

    def send(self, method: str, params: dict[str, Any], session: str | None = None,
             timeout_s: float = 10.0) -> dict[str, Any]:  # fmt: skip
        """One command's result (the events in between are passed over)."""
        self.last_id += 1
        message: dict[str, Any] = {"id": self.last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.last_id:
                    assert "error" not in reply, (method, reply["error"])
                    result: dict[str, Any] = reply["result"]
                    return result
            left = deadline - time.monotonic()
            assert left > 0, f"no answer to {method} within {timeout_s} s"
            ready, _, _ = select.select([self.answers], [], [], left)
            if ready:
                chunk = os.read(self.answers, 1 << 16)
                assert chunk, f"the browser closed the pipe: {self.console()}"
                self.buffer += chunk

    def open(self, url: str) -> None:
        self.send("Page.navigate", {"url": url}, self.session)

    def evaluate(self, expression: str) -> Any:
        answer = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, self.session
        )
        assert "exceptionDetails" not in answer, answer
        return answer["result"].get("value")

    def wait_until(self, expression: str, timeout_s: float) -> None:
        """Until ``expression`` is true in the page, polled every 0.1 s, at most timeout_s."""
        deadline = time.monotonic() + timeout_s
        while not self.evaluate(expression):
            assert time.monotonic() < deadline, f"not within {timeout_s} s: {expression}"
            time.sleep(0.1)

    def console(self) -> list[str]:
        """What the page logged so far, as ``render``'s ``Dom.console``."""
        self.log.seek(0)
        text = self.log.read().decode(errors="replace")
        return [line for line in text.splitlines() if ":CONSOLE" in line]

    def dom(self) -> Dom:
        """The DOM as it is now, as ``render`` reads it."""
        dom = Dom(self.evaluate("document.documentElement.outerHTML"))
        dom.console = self.console()
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
