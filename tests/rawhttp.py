"""One HTTP/1.1 response read from a raw socket, for the tests that speak to the
service's protocol layer byte by byte (keep-alive, HEAD, 100 Continue, connection caps)."""

from __future__ import annotations

import socket
from typing import NamedTuple


class RawResponse(NamedTuple):
    status: int
    headers: dict[str, str]  # names lower-case
    head: bytes  # the status line and headers, as sent
    body: bytes


def read_response(sock: socket.socket, to_head: bool = False) -> RawResponse:
    """One response from a kept-alive connection, its body by Content-Length; ``to_head``:
    the answer to a HEAD request (its Content-Length, but no body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
    while not to_head and len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk, body
        body += chunk
    return RawResponse(int(lines[0].split()[1]), headers, head, body)
