"""`OpenAIChatPolicy`: any OpenAI-compatible chat-completions endpoint as a text policy (for evaluation).

Spec: ``openai:URL#MODEL``, e.g. ``openai:http://127.0.0.1:8000/v1#Qwen2.5-0.5B-Instruct``;
requests go to ``URL/chat/completions``. The API key comes from `$OPENAI_API_KEY`
(sent only when set). Only the standard library is used (urllib).

At its first call the policy reads ``URL/models`` where the endpoint offers it:
a model name the endpoint does not serve gets a warning naming those it does
(llama.cpp's server answers any name with its one model; others refuse), and a
`max_model_len` listed for the model (vLLM, SGLang) becomes `context_window`.

Replies are `TextReply`s with the endpoint's `usage` and finish reason
("length": cut off at `max_tokens`). A prompt the endpoint says does not fit
its context (an HTTP 4xx whose message says so: llama.cpp's
`exceed_context_size_error`, vLLM's and OpenAI's "maximum context length",
`context_length_exceeded`) is a `ContextOverflow`: the episode ends there and
is never retried.

Tool envs: by default a tool env's calls travel as text, as the env's
instructions show them (``<tool_call>{...}</tool_call>``). With `tools=True`
each request also carries the env's schemas (`info["tools"]`) as the request's
``tools``, for the server's chat template to render and its tool-call parser
to read, and the ``tool_calls`` of an answer come back as that same
``<tool_call>`` text after the reply's content, so the env parses them as it
parses any model's. The history goes back structured too: an earlier reply's
``<tool_call>`` text is sent as its ``tool_calls`` (ids ``call_<turn>_<n>``), and
the env's answer to it as a ``tool`` message per call (the observation in the
first; an env answers all calls of a turn in one text). The server must accept
``tools`` (vLLM: ``--enable-auto-tool-choice --tool-call-parser NAME``).

Failures: rate limits (429), server errors (5xx), timeouts and refused
connections are retried `max_retries` times with exponential backoff; other
4xx answers are not retried. A request that still fails becomes a
`PolicyError` naming the status and the server's message, which fails that
episode (see the rollout's failure policy) and is never trained on.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from envgym.policies.base import ContextOverflow, PolicyError, SamplingParams, TextReply, TextRequest

log = logging.getLogger(__name__)

_RETRIED_STATUS = {408, 409, 429, 500, 502, 503, 504}
#: What servers say when a prompt does not fit: llama.cpp (`exceed_context_size_error`), vLLM and OpenAI
#: ("This model's maximum context length is N tokens"), OpenAI's code, SGLang ("longer than the model's
#: context length"), TGI ("must be <= N").
_CONTEXT_OVERFLOW = re.compile(r"exceed_context_size|context_length_exceeded|maximum context length|"
                               r"longer than the model's context length|exceeds? the available context size|"
                               r"tokens \+ `max_new_tokens` must be <=", re.IGNORECASE)


class OpenAIChatPolicy:
    """Chat completions from `base_url` with `model`; requests of a batch run concurrently.

    `context_window` is the endpoint's `max_model_len` once its /models was read (None before, or where
    it lists none); `served_models` the model ids it lists (empty where it offers no /models).
    """

    def __init__(self, base_url: str, model: str, *, sampling: SamplingParams | None = None,
                 api_key: str | None = None, timeout: float = 60.0, max_retries: int = 3, backoff: float = 0.5,
                 max_concurrency: int = 8, tools: bool = False):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if not model:
            raise ValueError("model must be named, as in openai:http://host:8000/v1#MODEL")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model, self.sampling = model, sampling or SamplingParams()
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout, self.max_retries, self.backoff = float(timeout), int(max_retries), float(backoff)
        self.max_concurrency = int(max_concurrency)
        self.tools = bool(tools)
        self.context_window: int | None = None
        self.served_models: list[str] = []
        self._checked = False

    @classmethod
    def from_spec(cls, target: str, **kwargs) -> OpenAIChatPolicy:
        """`URL#MODEL` (the part of a policy spec after ``openai:``)."""
        url, _, model = target.partition("#")
        if not model:
            raise ValueError(f"openai policy spec needs a model after '#': openai:{url}#MODEL")
        return cls(url, model, **kwargs)

    def act(self, requests: Sequence[TextRequest]) -> list[TextReply | PolicyError]:
        if not requests:
            return []
        if not self._checked:
            self._checked = True
            self.check_model()
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(requests))) as executor:
            return list(executor.map(self._complete, requests))

    def check_model(self) -> None:
        """Read ``URL/models`` (once, at the first `act`): warn when `model` is not among the models served,
        and take the model's `max_model_len` as `context_window`. An endpoint without /models is left alone."""
        try:
            with urllib.request.urlopen(urllib.request.Request(self.base_url + "/models", headers=self._headers()),
                                        timeout=self.timeout) as response:
                listed = json.loads(response.read())["data"]
            cards = {str(card["id"]): card for card in listed}
        except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as exc:
            log.debug("openai:%s#%s: no model list at %s/models (%s)", self.base_url, self.model, self.base_url, exc)
            return
        self.served_models = list(cards)
        if self.model not in cards:
            log.warning("openai:%s#%s: the endpoint serves %s, not %r; name one of those after '#' (a server "
                        "that serves one model may answer any name with it)", self.base_url, self.model,
                        ", ".join(repr(m) for m in cards) or "no models", self.model)
            return
        window = cards[self.model].get("max_model_len")
        if isinstance(window, int) and window > 0:
            self.context_window = window

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _complete(self, request: TextRequest) -> TextReply | PolicyError:
        structured = self.tools and bool(request.info.get("tools"))
        messages = structured_history(request.messages) if structured else [dict(m) for m in request.messages]
        body = {"model": self.model, "messages": messages,
                "temperature": self.sampling.temperature, "top_p": self.sampling.top_p,
                "max_tokens": self.sampling.max_new_tokens}
        if self.sampling.stop:
            body["stop"] = list(self.sampling.stop)
        if structured:
            body["tools"] = list(request.info["tools"])
        cause = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                http_request = urllib.request.Request(self.url, json.dumps(body).encode(), self._headers(),
                                                      method="POST")
                with urllib.request.urlopen(http_request, timeout=self.timeout) as response:
                    return self._reply(json.loads(response.read()))
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode("utf-8", "replace")
                cause = f"HTTP {exc.code} from {self.url}: {detail}"
                if 400 <= exc.code < 500 and _CONTEXT_OVERFLOW.search(detail):
                    return ContextOverflow(cause)
                if exc.code not in _RETRIED_STATUS:
                    return PolicyError(cause)
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError,
                    http.client.HTTPException) as exc:  # HTTPException: the server died mid-answer
                reason = getattr(exc, "reason", exc)
                cause = f"no answer from {self.url} ({type(reason).__name__}: {reason}; timeout {self.timeout:g}s)"
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                return PolicyError(f"malformed answer from {self.url}: {type(exc).__name__}: {exc}")
        return PolicyError(f"{cause} (gave up after {self.max_retries + 1} attempts)")

    @staticmethod
    def _reply(answer: dict[str, Any]) -> TextReply:
        """The first choice's content (then its tool calls, as ``<tool_call>`` text), finish reason and the
        answer's token usage."""
        choice = answer["choices"][0]
        message = choice["message"]
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise TypeError(f"message content must be a string, got {type(content).__name__}")
        text = (content or "") + "".join(_as_text(call) for call in message.get("tool_calls") or [])
        usage = answer.get("usage") or {}
        return TextReply(text, "length" if choice.get("finish_reason") == "length" else "stop",
                         _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")))


def structured_history(messages: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
    """A text chat with ``<tool_call>`` replies as OpenAI's structured chat: each assistant message whose text
    holds well-formed calls becomes its content plus `tool_calls`, and the message after it (the env's answer)
    one `tool` message per call, the observation in the first."""
    from envgym.tool_parsers import parse_hermes

    out: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    for turn, message in enumerate(messages):
        if pending and message["role"] in ("user", "tool"):
            out += [{"role": "tool", "tool_call_id": call["id"],
                     "content": message["content"] if n == 0 else "(answered with the first call)"}
                    for n, call in enumerate(pending)]
            pending = []
            continue
        pending = []
        if message["role"] == "assistant":
            reply = parse_hermes(message["content"])
            if reply.tool_calls:
                pending = [{**call, "id": f"call_{turn}_{n}"} for n, call in enumerate(reply.tool_calls)]
                out.append({"role": "assistant", "content": reply.content or "", "tool_calls": pending})
                continue
        out.append(dict(message))
    return out


def _as_text(call: Mapping[str, Any]) -> str:
    """An answer's tool call as the ``<tool_call>`` text tool envs parse; arguments that are not JSON stay the
    string they were, for the env to reject with its message."""
    function = call["function"]
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    return f'<tool_call>{json.dumps({"name": function["name"], "arguments": arguments})}</tool_call>'


def _count(value: Any) -> int | None:
    """A token count from `usage`, or None where it is missing or not a count."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
