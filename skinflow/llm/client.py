"""One way to talk to an OpenAI-compatible endpoint (a hosted model, vLLM, SGLang): the official ``openai``
client, which times out, retries connection errors, 408/409/429/5xx with exponential backoff and jitter, and
honours ``Retry-After`` (up to a minute); images go in as data URLs. ``Usage`` counts tokens and cost across
threads."""

from __future__ import annotations

import base64
import mimetypes
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from skinflow.errors import UserError


class EndpointError(UserError, RuntimeError):
    """The endpoint could not be used as configured (no key, unreachable after retries): the message says which."""


def make_client(base_url: str | None, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0, max_retries: int = 5):
    """An ``openai.OpenAI`` for ``base_url`` (``None``: the library's default, api.openai.com) with the key read
    from the environment variable ``api_key_env``. A local server that needs no key still needs the variable
    set (to anything): a missing key is an error naming the variable, not a silent anonymous request."""
    from openai import OpenAI

    key = os.environ.get(api_key_env)
    if not key:
        raise EndpointError(f"environment variable {api_key_env} is not set: put the endpoint's API key there "
                            "(any non-empty value for a local server that checks none), or name another with --api-key-env")
    return OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=max_retries)


def image_data_url(path: str | Path) -> str:
    path = Path(path)
    mime = mimetypes.guess_type(path.name)[0] or "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


@dataclass
class Usage:
    """Tokens and requests so far; ``cost`` in the currency of the prices (per million tokens)."""

    price_in: float = 0.0
    price_out: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, usage) -> None:
        with self.lock:
            self.requests += 1
            if usage is not None:
                self.prompt_tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
                self.completion_tokens += int(getattr(usage, "completion_tokens", 0) or 0)

    @property
    def cost(self) -> float:
        return (self.prompt_tokens * self.price_in + self.completion_tokens * self.price_out) / 1e6

    def as_dict(self) -> dict:
        return {"requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cost": round(self.cost, 6)}


MALFORMED_RETRIES = 2


def chat(client, model: str, messages: list[dict], usage: Usage | None = None, **options) -> str:
    """The text of the first choice ('' when the endpoint returned none); tokens added to ``usage``.

    A response body that is not JSON (a proxy cutting the reply short) is the one failure the client does not
    retry; it is asked again here, ``MALFORMED_RETRIES`` times, then raised."""
    import json

    from openai import APIResponseValidationError

    for attempt in range(MALFORMED_RETRIES + 1):
        try:
            response = client.chat.completions.create(model=model, messages=messages, **options)
            break
        except (json.JSONDecodeError, APIResponseValidationError):
            if attempt == MALFORMED_RETRIES:
                raise
    if usage is not None:
        usage.add(getattr(response, "usage", None))
    choices = getattr(response, "choices", None) or []
    if not choices:  # a 200 reply that is no chat completion: the endpoint's fault, not a malformed caption
        raise EndpointError(f"the endpoint answered without choices (model {model!r}); is --base-url an "
                            "OpenAI-compatible /v1 endpoint?")
    if choices[0].message is None:
        return ""
    return scrub(choices[0].message.content or "", getattr(client, "api_key", None))


def scrub(text: str, secret: str | None) -> str:
    """``text`` without ``secret`` (the kit's API key): an endpoint that echoes its request headers must not get
    the key written into review files, caches or logs.

    >>> scrub("Authorization: Bearer sk-123 ok", "sk-123")
    'Authorization: Bearer [API key removed] ok'
    """
    return text.replace(secret, "[API key removed]") if secret and len(secret) >= 4 else text
