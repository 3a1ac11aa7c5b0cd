"""`OpenAIChatPolicy`: any OpenAI-compatible chat-completions endpoint as a text policy (for evaluation).

Spec: ``openai:URL#MODEL``, e.g. ``openai:http://127.0.0.1:8000/v1#Qwen2.5-0.5B-Instruct``;
requests go to ``URL/chat/completions``. The API key comes from `$OPENAI_API_KEY`
(sent only when set). Only the standard library is used (urllib).

Failures: rate limits (429), server errors (5xx), timeouts and refused
connections are retried `max_retries` times with exponential backoff; other
4xx answers are not retried. A request that still fails becomes a
`PolicyError` naming the status and the server's message, which fails that
episode (see the rollout's failure policy) and is never trained on.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from envgym.policies.base import PolicyError, SamplingParams, TextRequest

_RETRIED_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIChatPolicy:
    """Chat completions from `base_url` with `model`; requests of a batch run concurrently."""

    def __init__(self, base_url: str, model: str, *, sampling: SamplingParams | None = None,
                 api_key: str | None = None, timeout: float = 60.0, max_retries: int = 3, backoff: float = 0.5,
                 max_concurrency: int = 8):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if not model:
            raise ValueError("model must be named, as in openai:http://host:8000/v1#MODEL")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.sampling = model, sampling or SamplingParams()
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout, self.max_retries, self.backoff = float(timeout), int(max_retries), float(backoff)
        self.max_concurrency = int(max_concurrency)

    @classmethod
    def from_spec(cls, target: str, **kwargs) -> OpenAIChatPolicy:
        """`URL#MODEL` (the part of a policy spec after ``openai:``)."""
        url, _, model = target.partition("#")
        if not model:
            raise ValueError(f"openai policy spec needs a model after '#': openai:{url}#MODEL")
        return cls(url, model, **kwargs)

    def act(self, requests: Sequence[TextRequest]) -> list[str | PolicyError]:
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(requests))) as executor:
            return list(executor.map(self._complete, requests))

    def _complete(self, request: TextRequest) -> str | PolicyError:
        body = {"model": self.model, "messages": [dict(m) for m in request.messages],
                "temperature": self.sampling.temperature, "top_p": self.sampling.top_p,
                "max_tokens": self.sampling.max_new_tokens}
        if self.sampling.stop:
            body["stop"] = list(self.sampling.stop)
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        cause = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                http_request = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
                with urllib.request.urlopen(http_request, timeout=self.timeout) as response:
                    return self._content(json.loads(response.read()))
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode("utf-8", "replace")
                cause = f"HTTP {exc.code} from {self.url}: {detail}"
                if exc.code not in _RETRIED_STATUS:
                    return PolicyError(cause)
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as exc:
                reason = getattr(exc, "reason", exc)
                cause = f"no answer from {self.url} ({type(reason).__name__}: {reason}; timeout {self.timeout:g}s)"
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                return PolicyError(f"malformed answer from {self.url}: {type(exc).__name__}: {exc}")
        return PolicyError(f"{cause} (gave up after {self.max_retries + 1} attempts)")

    @staticmethod
    def _content(answer: dict) -> str:
        content = answer["choices"][0]["message"]["content"]
        if content is not None and not isinstance(content, str):
            raise TypeError(f"message content must be a string, got {type(content).__name__}")
        return content or ""
