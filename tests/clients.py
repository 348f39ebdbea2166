"""Real clients for the drop-in ingest and dashboard tests: headless Chromium browsing
a static site of another origin, and the node SDKs as package-lock.json pins them."""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
NODE_DIR = REPO / "tests" / "node"
# A desktop Chrome: HeadlessChrome's own User-Agent is (rightly) counted as a bot.
DESKTOP_CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)


def chromium_binary() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        # .ci/run installs Debian's chromium: in CI a missing browser is a failure.
        if os.environ.get("CI"):
            pytest.fail("chromium missing in CI (.ci/run installs it)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return binary


def node_clients() -> Path:
    """tests/node/node_modules as tests/node/package-lock.json pins it (npm ci, once)."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        if os.environ.get("CI"):
            pytest.fail("node/npm missing in CI (.ci/run installs them)")
        pytest.skip("node and npm not installed (apt-get install nodejs npm)")
    stamp = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR,
                       check=True, timeout=300)  # fmt: skip
    return NODE_DIR / "node_modules"


class Site:
    """A static web site on its own port (another origin than the service) that records
    the query of every ``/done`` request its pages make when they are finished."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.done: list[dict[str, list[str]]] = []
        site = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kw: Any) -> None:
                super().__init__(*args, directory=str(site.root), **kw)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/done":
                    site.done.append(urllib.parse.parse_qs(url.query))
                    self.send_response(204)
                    self.end_headers()
                    return
                super().do_GET()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Site:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_done(self, n: int = 1, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.done) < n:
            assert time.monotonic() < deadline, "the page did not finish"
            time.sleep(0.1)


@contextlib.contextmanager
def browsing(url: str, profile: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Headless Chromium showing ``url`` in real time, until the block ends."""
    cmd = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-agent={DESKTOP_CHROME}", f"--user-data-dir={profile}", url]  # fmt: skip
    log = open(profile.parent / f"{profile.name}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the browser's processes
        proc.wait(timeout=10)
        log.close()
