"""A loopback OpenAI-compatible server for the tests and benchmarks: ``POST /v1/chat/completions``.

``FakeOpenAI(reply)`` answers each request with ``reply(request) -> str | Fault``: ``request`` is the parsed JSON
body (model, messages with text and ``image_url`` parts). A ``Fault`` makes the server misbehave instead:
``Fault(429, retry_after=1)``, ``Fault(500)``, ``Fault("stall", seconds=3)`` (no answer within a client's
timeout), ``Fault("malformed")`` (a 200 whose body is not a completion). ``server.requests`` keeps every body with
its arrival time; ``latency`` delays every answer.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass
class Fault:
    kind: str | int
    retry_after: float | None = None
    seconds: float = 3.0


def images_in(request: dict) -> list[bytes]:
    """The decoded bytes of every data-URL image in a chat request."""
    out = []
    for message in request.get("messages", []):
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if part.get("type") == "image_url":
                    url = part["image_url"]["url"]
                    out.append(base64.b64decode(url.split(",", 1)[1]))
    return out


def text_of(request: dict, role: str | None = None) -> str:
    """All text parts of the request's messages (of one role), joined by newlines."""
    parts = []
    for message in request.get("messages", []):
        if role and message.get("role") != role:
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [p["text"] for p in content if p.get("type") == "text"]
    return "\n".join(parts)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *args) -> None:
        pass

    def _json(self, status: int, body: dict | str, headers: dict | None = None) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        owner = self.server.owner
        length = int(self.headers.get("Content-Length", 0))
        request = json.loads(self.rfile.read(length) or b"{}")
        if not self.path.rstrip("/").endswith("/chat/completions"):
            return self._json(404, {"error": {"message": f"no route {self.path}"}})
        if self.headers.get("Authorization", "") != f"Bearer {owner.api_key}":
            return self._json(401, {"error": {"message": "bad key"}})
        with owner.lock:
            owner.requests.append((time.monotonic(), request))
        answer = owner.reply(request)
        if owner.latency:
            time.sleep(owner.latency)
        if isinstance(answer, Fault) and answer.kind == "echo_auth":  # a hostile endpoint echoing the request headers
            answer = f"<caption>\ncolour: red\n</caption>\nAuthorization: {self.headers.get('Authorization')}"
        if isinstance(answer, Fault):
            if answer.kind == "stall":
                time.sleep(answer.seconds)
                self.close_connection = True
                return None
            if answer.kind == "malformed":
                return self._json(200, "{\"id\": \"x\", \"choices\": ")
            if answer.kind == "no_choices":  # 200, JSON, but no chat completion
                return self._json(200, {"id": "x", "object": "chat.completion", "created": 0, "model": "m"})
            headers = {"Retry-After": f"{answer.retry_after:g}"} if answer.retry_after is not None else {}
            return self._json(int(answer.kind), {"error": {"message": f"scripted {answer.kind}"}}, headers)
        prompt = len(text_of(request).split()) + 85 * len(images_in(request))  # words, and a flat 85 per image
        completion = len(answer.split())
        return self._json(200, {
            "id": f"chatcmpl-{len(owner.requests)}", "object": "chat.completion", "created": int(time.time()),
            "model": request.get("model", ""),
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        })


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: "FakeOpenAI"


class FakeOpenAI:
    """``with FakeOpenAI(reply) as server: OpenAI(base_url=server.base_url, api_key=server.api_key)``."""

    def __init__(self, reply: Callable[[dict], "str | Fault"], latency: float = 0.0, api_key: str = "test-key"):
        self.reply, self.latency, self.api_key = reply, latency, api_key
        self.requests: list[tuple[float, dict]] = []
        self.lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> "FakeOpenAI":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
