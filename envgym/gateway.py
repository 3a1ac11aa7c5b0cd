"""An OpenAI-compatible gateway in front of a token policy that records every request token for token.

    with Gateway(policy, sampling=SamplingParams(max_new_tokens=256)) as gateway:
        record = gateway.open_episode()
        client = gateway.client(record)        # openai.OpenAI(base_url=.../episodes/<id>/v1), model "policy"
        client.chat.completions.create(model="policy", messages=[...], tools=[...])
        gateway.end_episode(record)
        record.exchanges                        # one `Exchange` per request: prompt ids, sampled ids, logprobs

Served with FastAPI on uvicorn, on 127.0.0.1 (a free port): ``/episodes/<id>/v1/chat/completions``
(streaming or not; `tools`, `tool_choice` "auto" or "none", `n` 1, `logprobs`, `max_tokens`, `stop`,
`temperature`, `top_p`) and ``/episodes/<id>/v1/models``. The episode id in the path is a random
token handed to one agent's client, so no request reaches another episode's record.

Token faithfulness: each request's messages (and `tools`) are rendered by the
policy's own chat template. When the rendering extends the episode's previous
prompt plus the text of its sampled ids (the agent sent the history back
unchanged: append-only), the request continues the episode's token row: its new
ids are the tokens of the added text only, after the sampled ids verbatim (the
rule of `envgym.chat`). Otherwise (the agent truncated, summarised or rewrote
its history) the request starts a new row holding the whole rendered prompt.
The reply's text and `tool_calls` are decoded from the sampled ids; nothing
returned is ever tokenised again to be trained on.

Limits: a completion has at most `sampling.max_new_tokens` tokens (a request's
`max_tokens` can lower it, not raise it) and prompt plus completion at most the
context budget (`envgym.rollout.context_budget`). A prompt that fills the budget
is answered 400 naming the budget and ends the episode (`end_reason` "context");
a request beyond `max_turns` is answered 400 and ends it ("max_turns"). A request
to an ended episode is answered 409, to an unknown model 404 naming the served
one. A malformed tool call comes back as text (finish_reason "stop" or
"length") and is counted in `EpisodeRecord.malformed_tool_calls`.

Concurrent requests of many episodes are batched: one generation thread takes
every request waiting and makes one `generate` call per sampling setting. A
policy that fails answers 500 with its cause.

In front of an `openai:` policy (`envgym.policies.openai_chat.OpenAIChatPolicy`,
for evaluation) the gateway forwards each request to the endpoint with the
endpoint's model name and records the reply's text and usage, no token ids.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations (`Request`) at runtime
import dataclasses
import itertools
import json
import logging
import queue
import secrets
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from envgym.chat import encode, render
from envgym.policies.base import CachingTokenPolicy, Completion, SamplingParams, TokenPolicy
from envgym.rollout import context_budget, finish_of
from envgym.tool_parsers import PARSERS, parse_tool_calls
from envgym.trajectory import FinishReason

log = logging.getLogger(__name__)

MODEL_NAME = "policy"
_gateways = itertools.count()


class GatewayError(Exception):
    """A request the gateway refuses: HTTP `status` with an OpenAI-style error body."""

    def __init__(self, status: int, message: str, code: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.code, "code": self.code, "param": None}}


@dataclass(frozen=True)
class Exchange:
    """One model request of an episode, as generated.

    `obs_ids` are the ids this request added to the episode's context (the whole
    rendered prompt when `starts_row`), `action_ids` the sampled ids verbatim and
    `logprobs` theirs (the policy's raw-model logprobs). `observation` is the
    last message's text, `text` the decoded completion (special tokens
    skipped), `state_key` the env state the request was made from (its latest
    `info["state_key"]`), `steps_before` how many env steps the agent had taken.
    """

    obs_ids: tuple[int, ...]
    starts_row: bool
    action_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish: FinishReason
    observation: str
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    state_key: str
    steps_before: int
    tool_calls: int = 0
    malformed_tool_call: str = ""
    cached_tokens: int = 0
    seconds: float = 0.0


@dataclass
class EpisodeRecord:
    """What the gateway records for one episode; the agent's env steps are added by whoever runs it
    (`envgym.agents`). `end_reason` is set once the episode has ended ("context", "max_turns", or the
    runner's reason); every later request is refused with 409."""

    id: str
    exchanges: list[Exchange] = field(default_factory=list)
    end_reason: str | None = None
    state_key: str = ""
    steps: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _prompt_text: str = ""  # the rendered text of the latest prompt
    _context: list[int] = field(default_factory=list)  # the latest prompt's ids plus its sampled ids

    @property
    def malformed_tool_calls(self) -> int:
        return sum(bool(e.malformed_tool_call) for e in self.exchanges)


@dataclass(frozen=True)
class _Job:
    prompt: list[int]
    params: SamplingParams
    key: Hashable
    future: Future


class _Generator:
    """One thread that runs the policy: it takes every job waiting and makes one `generate` call per
    sampling setting (cache keys kept distinct within a call). Before a call it waits up to `batch_wait`
    seconds for a request from each of the `open_episodes()` episodes (they arrive spread out, as each
    agent steps its env and builds its next request; one batch is far cheaper than several)."""

    def __init__(self, policy: TokenPolicy, open_episodes: Callable[[], int], batch_wait: float):
        self.policy, self.open_episodes, self.batch_wait = policy, open_episodes, batch_wait
        self.caching = isinstance(policy, CachingTokenPolicy)
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        torch = sys.modules.get("torch")
        # torch's intra-op thread count is the calling thread's (OpenMP): the generating thread takes its creator's
        self.torch_threads = torch.get_num_threads() if torch is not None else None
        self.thread = threading.Thread(target=self._run, name="gateway-generate", daemon=True)
        self.thread.start()

    def submit(self, prompt: list[int], params: SamplingParams, key: Hashable) -> Future:
        future: Future = Future()
        self.jobs.put(_Job(prompt, params, key, future))
        return future

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join()

    def _run(self) -> None:
        if self.torch_threads is not None:
            sys.modules["torch"].set_num_threads(self.torch_threads)
        while True:
            waiting = [self.jobs.get()]
            deadline = time.perf_counter() + self.batch_wait
            while None not in waiting:
                if not self.jobs.empty():
                    waiting.append(self.jobs.get())
                    continue
                left = deadline - time.perf_counter()
                if left <= 0 or len({job.key for job in waiting}) >= self.open_episodes():
                    break
                try:
                    waiting.append(self.jobs.get(timeout=left))
                except queue.Empty:
                    break
            if None in waiting:
                for job in waiting:
                    if job is not None:
                        job.future.set_exception(GatewayError(503, "the gateway is shutting down"))
                return
            by_params: dict[SamplingParams, list[_Job]] = {}
            for job in waiting:
                by_params.setdefault(job.params, []).append(job)
            for params, jobs in by_params.items():
                while jobs:  # an episode with two requests waiting (a client that sends in parallel) takes two calls
                    batch, later, keys = [], [], set()
                    for job in jobs:
                        (later if job.key in keys else batch).append(job)
                        keys.add(job.key)
                    self._generate(batch, params)
                    jobs = later

    def _generate(self, batch: list[_Job], params: SamplingParams) -> None:
        try:
            prompts = [job.prompt for job in batch]
            if self.caching:
                done = self.policy.generate(prompts, params, cache_keys=[job.key for job in batch])
            else:
                done = self.policy.generate(prompts, params)
        except Exception as exc:  # the policy failed: every request of the batch gets the cause
            for job in batch:
                job.future.set_exception(exc)
            return
        for job, completion in zip(batch, done):
            job.future.set_result(completion)


class Gateway:
    """The server (started by `start` or `with`), its episodes and its generation thread; see the module
    docstring. `policy` is a token policy (hf, vllm) or an `OpenAIChatPolicy`; `sampling` is the default
    and the bound of each request's sampling; `tool_parser` a key of `envgym.tool_parsers.PARSERS`;
    `batch_wait` the most seconds a request waits for other open episodes' requests to batch with."""

    def __init__(self, policy: Any, *, sampling: SamplingParams | None = None,
                 max_context_tokens: int | None = None, max_turns: int | None = None, tool_parser: str = "hermes",
                 model_name: str = MODEL_NAME, batch_wait: float = 0.05):
        from envgym.policies.openai_chat import OpenAIChatPolicy

        self.upstream = policy if isinstance(policy, OpenAIChatPolicy) else None
        if self.upstream is None and not isinstance(policy, TokenPolicy):
            raise TypeError(f"the gateway serves token policies (hf, vllm) and openai: endpoints, not "
                            f"{type(policy).__name__}")
        if tool_parser not in PARSERS:
            raise ValueError(f"unknown tool_parser {tool_parser!r}; expected one of {', '.join(PARSERS)}")
        self.policy, self.tokenizer = policy, getattr(policy, "tokenizer", None)
        self.sampling = sampling or SamplingParams()
        self.budget = context_budget(policy, max_context_tokens)
        self.max_turns, self.tool_parser, self.model_name = max_turns, tool_parser, model_name
        self.batch_wait = float(batch_wait)
        self.serial = next(_gateways)
        self._special_ids = frozenset(self.tokenizer.all_special_ids if self.tokenizer is not None else ())
        self.episodes: dict[str, EpisodeRecord] = {}
        self._generator: _Generator | None = None
        self._server = None
        self._thread: threading.Thread | None = None
        self._http = None  # one connection pool for every client handed out (a client of its own costs ~50 ms)
        self.url = ""

    # -- life cycle -----------------------------------------------------------------------------------

    def start(self) -> "Gateway":
        """Bind a free port on 127.0.0.1 and serve there (connections queue on the bound socket, so the
        gateway takes requests as soon as this returns)."""
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # accepted connections inherit it: without it a reply's headers and body wait out the client's delayed
        # ACK (40 ms a request on Linux)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._generator = None if self.upstream is not None else _Generator(
            self.policy, lambda: sum(r.end_reason is None for r in list(self.episodes.values())), self.batch_wait)
        self._server = uvicorn.Server(uvicorn.Config(self.app(), log_level="warning", lifespan="off",
                                                     access_log=False))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="gateway",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and end every open episode (idempotent)."""
        for record in list(self.episodes.values()):
            if record.end_reason is None:
                self.end_episode(record, "gateway closed")
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join()
            self._server = None
        if self._generator is not None:
            self._generator.close()
            self._generator = None
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- episodes -------------------------------------------------------------------------------------

    def open_episode(self) -> EpisodeRecord:
        """A new episode with its own id (a random token: no client can guess another episode's). Its record
        stays with the gateway after it ends, so late requests are told it ended (409)."""
        record = EpisodeRecord(secrets.token_urlsafe(12))
        self.episodes[record.id] = record
        return record

    def end_episode(self, record: EpisodeRecord, reason: str) -> None:
        """End `record` (its later requests get 409) and free its KV cache; a first reason is kept."""
        with record.lock:
            if record.end_reason is None:
                record.end_reason = reason
        if self.upstream is None and isinstance(self.policy, CachingTokenPolicy):
            self.policy.release([self._cache_key(record)])

    def base_url(self, record: EpisodeRecord) -> str:
        return f"{self.url}/episodes/{record.id}/v1"

    def client(self, record: EpisodeRecord, timeout: float | None = None) -> Any:
        """An `openai.OpenAI` client for `record`'s episode (no retries: a refused request is the agent's to see)."""
        import openai

        if self._http is None:
            self._http = openai.DefaultHttpxClient()
        return openai.OpenAI(base_url=self.base_url(record), api_key="envgym", max_retries=0,
                             timeout=timeout if timeout else 600.0, http_client=self._http)

    def _cache_key(self, record: EpisodeRecord) -> tuple[int, str]:
        return (self.serial, record.id)

    # -- the HTTP app ---------------------------------------------------------------------------------

    def app(self) -> Any:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, Response, StreamingResponse
        from starlette.concurrency import run_in_threadpool

        app = FastAPI(title="envgym gateway", docs_url=None, redoc_url=None, openapi_url=None)

        @app.exception_handler(GatewayError)
        async def refused(request: Request, exc: GatewayError) -> JSONResponse:
            return JSONResponse(exc.body(), status_code=exc.status)

        @app.get("/episodes/{episode}/v1/models")
        async def models(episode: str) -> dict[str, Any]:
            self._record(episode, ended_ok=True)
            return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": 0,
                                                "owned_by": "envgym", "max_model_len": self.budget}]}

        @app.post("/episodes/{episode}/v1/chat/completions")
        async def chat_completions(episode: str, request: Request) -> Any:
            try:
                body = await request.json()
            except ValueError:
                raise GatewayError(400, "the request body is not JSON") from None
            if not isinstance(body, dict):
                raise GatewayError(400, "the request body must be a JSON object")
            answer = await run_in_threadpool(self.complete, episode, body)
            if not body.get("stream"):  # serialised here: FastAPI's encoder would walk the whole answer first
                return Response(json.dumps(answer), media_type="application/json")
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(_sse(answer, include_usage), media_type="text/event-stream")

        return app

    def _record(self, episode: str, ended_ok: bool = False) -> EpisodeRecord:
        record = self.episodes.get(episode)
        if record is None:
            raise GatewayError(404, f"no open episode {episode!r} on this gateway (each agent gets its own "
                                    "base_url; an episode's URL stops working when it ends)", "not_found_error")
        if record.end_reason is not None and not ended_ok:
            raise GatewayError(409, f"episode {episode} has ended ({record.end_reason}); it takes no more requests",
                               "conflict")
        return record

    # -- one request ----------------------------------------------------------------------------------

    def complete(self, episode: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Answer one chat-completions request of `episode` (the OpenAI response as a dict), recording it;
        raises GatewayError for a request the gateway refuses."""
        started = time.perf_counter()
        record = self._record(episode)
        params, tools, parse_calls = self._request_settings(body)
        messages = _messages(body.get("messages"))
        with record.lock:  # one request of an episode at a time: each builds on the one before
            if record.end_reason is not None:
                raise GatewayError(409, f"episode {episode} has ended ({record.end_reason}); it takes no more "
                                        "requests", "conflict")
            if self.max_turns is not None and len(record.exchanges) >= self.max_turns:
                record.end_reason = "max_turns"
                raise GatewayError(400, f"episode {episode} has used its {self.max_turns} model requests "
                                        "(max_turns); it takes no more", "max_turns_exceeded")
            if self.upstream is not None:
                return self._forward(record, body, messages, started)
            text = self._render(messages, tools)
            obs_ids, starts_row = self._new_ids(record, text)
            prompt = obs_ids if starts_row else [*record._context, *obs_ids]
            room = params.max_new_tokens if self.budget is None else min(params.max_new_tokens,
                                                                        self.budget - len(prompt))
            if room < 1:
                record.end_reason = "context"
                raise GatewayError(400, f"This model's maximum context length is {self.budget} tokens (the "
                                        f"context budget); the prompt has {len(prompt)} tokens and leaves no room "
                                        "for a reply. The episode has ended.", "context_length_exceeded")
            clipped = room < params.max_new_tokens
            try:
                completion: Completion = self._generator.submit(
                    prompt, dataclasses.replace(params, max_new_tokens=room) if clipped else params,
                    self._cache_key(record)).result()
            except GatewayError:
                raise
            except Exception as exc:
                raise GatewayError(500, f"the policy failed: {type(exc).__name__}: {exc}", "server_error") from None
            finish = completion.finish_reason
            if clipped and finish == "length":
                finish = "context"
            calls_before = sum(e.tool_calls for e in record.exchanges)
            reply = parse_tool_calls(completion.text, self.tool_parser, calls_before) if parse_calls else None
            exchange = Exchange(
                obs_ids=tuple(obs_ids), starts_row=starts_row, action_ids=tuple(completion.token_ids),
                logprobs=tuple(completion.logprobs), finish=finish_of(finish, completion.text),
                observation=_text_of(messages[-1]) if messages else "", text=completion.text,
                prompt_tokens=len(prompt), completion_tokens=len(completion.token_ids), state_key=record.state_key,
                steps_before=record.steps,
                tool_calls=len(reply.tool_calls) if reply else 0, malformed_tool_call=reply.malformed if reply else "",
                cached_tokens=completion.cached_tokens, seconds=time.perf_counter() - started)
            record.exchanges.append(exchange)
            record._prompt_text = text
            record._context = [*prompt, *completion.token_ids]
        if reply is not None and reply.malformed:
            log.info("episode %s: a malformed tool call went back as text: %s", episode, reply.malformed)
        return self._response(body, completion, finish, reply, len(prompt))

    def _forward(self, record: EpisodeRecord, body: Mapping[str, Any], messages: list[dict[str, Any]],
                 started: float) -> dict[str, Any]:
        """An `openai:` policy: the request goes to its endpoint as it came (its model named, not streamed,
        sampled with the endpoint's settings where the request leaves them open); the turn records text and
        the endpoint's usage, no ids (it evaluates, it is not trained)."""
        from envgym.policies.openai_chat import _CONTEXT_OVERFLOW

        upstream = self.upstream
        sent = {key: value for key, value in body.items() if key not in ("stream", "stream_options")}
        sent["model"] = upstream.model
        for key, value in (("temperature", upstream.sampling.temperature), ("top_p", upstream.sampling.top_p),
                           ("max_tokens", upstream.sampling.max_new_tokens)):
            sent.setdefault(key, value)
        request = urllib.request.Request(upstream.url, json.dumps(sent).encode(), upstream._headers(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=upstream.timeout) as response:
                answer = json.loads(response.read())
            choice = answer["choices"][0]
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode("utf-8", "replace")
            if 400 <= exc.code < 500 and _CONTEXT_OVERFLOW.search(detail):
                record.end_reason = "context"
            raise GatewayError(exc.code, f"the endpoint {upstream.url} answered {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise GatewayError(502, f"no usable answer from {upstream.url}: {type(exc).__name__}: {exc}") from None
        message = choice.get("message") or {}
        usage = answer.get("usage") or {}
        text = message.get("content") or ""
        calls = message.get("tool_calls") or []
        finish = finish_of("length" if choice.get("finish_reason") == "length" else "stop", text or str(calls))
        record.exchanges.append(Exchange(
            obs_ids=(), starts_row=True, action_ids=(), logprobs=(), finish=finish,
            observation=_text_of(messages[-1]), text=text,
            prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
            state_key=record.state_key, steps_before=record.steps, tool_calls=len(calls),
            seconds=time.perf_counter() - started))
        return {**answer, "model": self.model_name}

    def _request_settings(self, body: Mapping[str, Any]) -> tuple[SamplingParams, list[dict[str, Any]] | None, bool]:
        """The sampling settings, the tools to render, and whether to read tool calls, of a request."""
        model = body.get("model")
        if model != self.model_name:
            raise GatewayError(404, f"The model {model!r} does not exist; this gateway serves {self.model_name!r}",
                               "model_not_found")
        if body.get("n", 1) != 1:
            raise GatewayError(400, f"n must be 1 (one completion per request), got {body.get('n')!r}")
        tools = body.get("tools") or None
        if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
            raise GatewayError(400, "tools must be a list of tool objects")
        choice = body.get("tool_choice", "auto")
        if choice not in ("auto", "none", None):
            raise GatewayError(400, f"tool_choice {choice!r} is not supported: the gateway samples freely, so it "
                                    "can only let the model choose (\"auto\") or not read calls (\"none\")")
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        stop = body.get("stop") or ()
        try:
            params = SamplingParams(
                temperature=float(self.sampling.temperature if body.get("temperature") is None
                                  else body["temperature"]),
                top_p=float(self.sampling.top_p if body.get("top_p") is None else body["top_p"]),
                max_new_tokens=min(self.sampling.max_new_tokens, int(limit)) if limit is not None
                else self.sampling.max_new_tokens,
                stop=(stop,) if isinstance(stop, str) else tuple(stop) or self.sampling.stop)
        except (TypeError, ValueError) as exc:
            raise GatewayError(400, f"bad sampling settings: {exc}") from None
        return params, tools, tools is not None and choice != "none"

    def _render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        try:
            return render(self.tokenizer, messages, True, tools)
        except Exception as exc:  # a template that cannot render these messages: the request's fault
            raise GatewayError(400, f"the chat template cannot render these messages: {type(exc).__name__}: "
                                    f"{exc}") from None

    def _new_ids(self, record: EpisodeRecord, text: str) -> tuple[list[int], bool]:
        """The ids this prompt adds and whether it starts a row (see the module docstring: Token faithfulness).

        The rendering continues the row when it starts with the previous prompt
        plus the sampled text; what the template writes to close the sampled
        turn is appended, less a special token (end of turn) already sampled.
        """
        if not record.exchanges:
            return encode(self.tokenizer, text), True
        last = record.exchanges[-1]
        sampled = record._prompt_text + last.text
        if not text.startswith(sampled):
            return encode(self.tokenizer, text), True
        rest = text[len(sampled):]
        if last.action_ids and last.action_ids[-1] in self._special_ids:
            closing = self.tokenizer.decode([last.action_ids[-1]], skip_special_tokens=False)
            if rest.startswith(closing):
                rest = rest[len(closing):]
        return encode(self.tokenizer, rest), False

    def _response(self, body: Mapping[str, Any], completion: Completion, finish: str, reply: Any,
                  prompt_tokens: int) -> dict[str, Any]:
        if reply is not None and reply.tool_calls:
            message = {"role": "assistant", "content": reply.content, "tool_calls": reply.tool_calls}
            finish_reason = "tool_calls"
        else:
            message = {"role": "assistant", "content": completion.text}
            finish_reason = "stop" if finish == "stop" else "length"
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": [
                {"token": self.tokenizer.convert_ids_to_tokens(i), "logprob": lp, "bytes": None, "top_logprobs": []}
                for i, lp in zip(completion.token_ids, completion.logprobs)]}
        return {"id": f"chatcmpl-{secrets.token_hex(8)}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model_name, "choices": [choice],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(completion.token_ids),
                          "total_tokens": prompt_tokens + len(completion.token_ids),
                          # as OpenAI's servers send them: some clients (older Agents SDKs) require the details
                          "prompt_tokens_details": {"cached_tokens": completion.cached_tokens},
                          "completion_tokens_details": {"reasoning_tokens": 0}}}


def _text_of(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else ""


def _messages(raw: Any) -> list[dict[str, Any]]:
    """The request's messages as the chat template takes them: content parts joined into text, a missing
    content as "", tool-call arguments as objects (templates write them with `tojson`)."""
    if not isinstance(raw, list) or not raw:
        raise GatewayError(400, "messages must be a non-empty list of {role, content} objects")
    messages = []
    for n, message in enumerate(raw):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise GatewayError(400, f"messages[{n}] must be an object with a string role")
        content = message.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise GatewayError(400, f"messages[{n}]: only text content parts are supported")
            content = "".join(str(p.get("text", "")) for p in content)
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            raise GatewayError(400, f"messages[{n}].content must be a string or a list of text parts")
        out = {**message, "content": content}
        if message.get("tool_calls"):
            out["tool_calls"] = [_call_for_template(call) for call in message["tool_calls"]]
        messages.append(out)
    return messages


def _call_for_template(call: Any) -> dict[str, Any]:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise GatewayError(400, "each tool_calls entry must be {id, type, function: {name, arguments}}")
    function = dict(call["function"])
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            function["arguments"] = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            pass  # the template writes the string as it is
    return {**call, "function": function}


async def _sse(answer: dict[str, Any], include_usage: bool):
    """The answer as server-sent chat.completion.chunk events: the role, the content, the tool calls, the
    finish reason (and the usage when asked), then [DONE]."""
    choice = answer["choices"][0]
    message = choice["message"]
    head = {"id": answer["id"], "object": "chat.completion.chunk", "created": answer["created"],
            "model": answer["model"]}

    def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> str:
        event = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}]}
        return f"data: {json.dumps(event)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    if message.get("content"):
        yield chunk({"content": message["content"]}, logprobs=choice["logprobs"])
    for index, call in enumerate(message.get("tool_calls") or []):
        yield chunk({"tool_calls": [{"index": index, **call}]})
    yield chunk({}, choice["finish_reason"])
    if include_usage:
        yield f"data: {json.dumps({**head, 'choices': [], 'usage': answer['usage']})}\n\n"
    yield "data: [DONE]\n\n"
