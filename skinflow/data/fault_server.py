"""A loopback HTTP server that serves images the way a tired atlas does: the downloader's stand-in for the web.

``FaultServer(files)`` serves ``files`` (``{md5hash: bytes}``) at ``/<mode>/<md5hash>.jpg``; ``mode`` picks a
behaviour, and a mode ending in ``-once`` fails only the first request for that path, then serves the image:

=================  ==================================================================================
``ok``             the image (after ``latency`` seconds)
``429``            status 429 with ``Retry-After: 1``
``500``            status 500
``reset``          the connection closed with a TCP reset before any response
``stall``          no response for ``stall`` seconds (past a client's read timeout)
``truncated``      ``Content-Length`` of the whole image, half the bytes, then the connection closed
``wrong``          a JPEG whose bytes are not the image's (an MD5 mismatch)
``html``           a 200 ``text/html`` page ("image not found")
``redirect``       302 to ``/ok/<md5hash>.jpg``
``loop``           302 to itself, for ever
``drip``           the image a few bytes at a time, each write within a read timeout, the whole far past it
``404``            status 404
=================  ==================================================================================

``server.requests`` lists ``(time, path)`` of every request received, for the tests to count and time;
``server.max_in_flight`` is the most requests it was answering at once.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WRONG_JPEG = b"\xff\xd8\xff\xe0" + b"not the image you asked for" * 10


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *args) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        # headers and body go out in two writes: without this, Nagle's algorithm holds the body until the
        # client's delayed ACK (40 ms a request), and the server, not the downloader, would set the pace
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, status: int, body: bytes = b"", content_type: str = "image/jpeg", headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        owner = self.server.owner
        with owner.lock:
            owner.requests.append((time.monotonic(), self.path))
            owner.user_agents.add(self.headers.get("User-Agent", ""))
            owner.in_flight += 1
            owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
        try:
            self._respond(owner)
        finally:
            with owner.lock:
                owner.in_flight -= 1

    def _respond(self, owner: "FaultServer") -> None:
        with owner.lock:
            seen = sum(p == self.path for _, p in owner.requests)
        parts = self.path.strip("/").split("/")
        if len(parts) != 2 or not parts[1].endswith(".jpg"):
            return self._send(404, b"no such path", "text/plain")
        mode, md5 = parts[0], parts[1][:-4]
        body = owner.files.get(md5)
        if body is None:
            return self._send(404, b"no such image", "text/plain")
        once = mode.endswith("-once")
        mode = mode.removesuffix("-once")
        if mode == "ok" or (once and seen > 1):
            if owner.latency:
                time.sleep(owner.latency)
            return self._send(200, body)
        if mode == "429":
            return self._send(429, b"slow down", "text/plain", {"Retry-After": "1"})
        if mode == "500":
            return self._send(500, b"oops", "text/plain")
        if mode == "404":
            return self._send(404, b"gone", "text/plain")
        if mode == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return None
        if mode == "stall":
            time.sleep(owner.stall)
            self.close_connection = True
            return None
        if mode == "truncated":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return None
        if mode == "wrong":
            return self._send(200, WRONG_JPEG)
        if mode == "html":
            return self._send(200, b"<!DOCTYPE html><html><body>Image not found</body></html>", "text/html; charset=utf-8")
        if mode == "redirect":
            return self._send(302, b"", "text/plain", {"Location": f"/ok/{md5}.jpg"})
        if mode == "loop":
            return self._send(302, b"", "text/plain", {"Location": self.path})
        if mode == "drip":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for i in range(0, len(body), owner.drip_bytes):
                    self.wfile.write(body[i:i + owner.drip_bytes])
                    self.wfile.flush()
                    time.sleep(owner.drip_every)
            except OSError:  # the client gave up
                self.close_connection = True
            return None
        return self._send(404, f"unknown mode {mode}".encode(), "text/plain")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: "FaultServer"


class FaultServer:
    """``with FaultServer(files) as server: server.url("429-once", md5)``."""

    def __init__(self, files: dict[str, bytes], latency: float = 0.0, stall: float = 3.0,
                 drip_bytes: int = 64, drip_every: float = 0.05):
        self.files, self.latency, self.stall = files, latency, stall
        self.drip_bytes, self.drip_every = drip_bytes, drip_every
        self.requests: list[tuple[float, str]] = []
        self.user_agents: set[str] = set()
        self.in_flight = self.max_in_flight = 0  # requests being answered now / at most at once
        self.lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, mode: str, md5: str) -> str:
        return f"{self.base}/{mode}/{md5}.jpg"

    def hits(self, mode: str, md5: str) -> list[float]:
        path = f"/{mode}/{md5}.jpg"
        with self.lock:
            return [t for t, p in self.requests if p == path]

    def __enter__(self) -> "FaultServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
