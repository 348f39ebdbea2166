"""A proxy that loses answers: the events were stored, the client never heard it."""

from __future__ import annotations

import socket
import struct
import threading


class LossyProxy:
    """Forwards each HTTP request to the service, and for the first ``lose`` requests
    closes the client's connection instead of passing the answer on: the events were
    stored, the client never heard it, so it retries (the case dedup exists for).

    One request per connection (``Connection: close`` both ways); bounded by timeouts.
    """

    def __init__(self, upstream_port: int, lose: int) -> None:
        self.upstream_port = upstream_port
        self.lose = lose
        self.forwarded = 0
        self.lost = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LossyProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._one, args=(client,), daemon=True).start()

    @staticmethod
    def _read_request(conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return b""
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = 0
        kept = [lines[0]]
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
            if name.strip().lower() != b"connection":
                kept.append(line)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        return b"\r\n".join([*kept, b"Connection: close"]) + b"\r\n\r\n" + body

    def _one(self, client: socket.socket) -> None:
        with client:
            client.settimeout(10)
            request = self._read_request(client)
            if not request:
                return
            with socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10) as up:
                up.sendall(request)
                answer = b""
                while chunk := up.recv(65536):
                    answer += chunk
            with self._lock:
                self.forwarded += 1
                lose = self.lost < self.lose
                if lose:
                    self.lost += 1
            if lose:
                # RST instead of FIN: the client sees a reset, as when a network drops.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            client.sendall(answer)
