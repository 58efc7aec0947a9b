"""Raw HTTP/1.1 over a socket, for requests no client library will send: non-UTF-8 header
bytes, malformed header lines, lying Content-Encoding, trickled bytes.

    status, headers, body = send(url, request(method, path, body, headers))
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

Headers = Mapping[str, str | bytes]


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def request(method: str, path: str, body: bytes = b"", headers: Headers | None = None) -> bytes:
    """The bytes of one request; Content-Length is added unless given, Connection: close always."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    given = dict(headers or {})
    if body and "Content-Length" not in given:
        given["Content-Length"] = str(len(body))
    for name, value in given.items():
        lines.append(
            name.encode() + b": " + (value if isinstance(value, bytes) else value.encode())
        )
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def send(url: str, data: bytes, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` and read the whole answer (status, lower-cased headers, body)."""
    with socket.create_connection(address(url), timeout=timeout) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, body
