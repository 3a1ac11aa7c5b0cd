"""`envgym serve`: any envgym env as an OpenEnv server, built on openenv-core's `HTTPEnvServer`.

OpenEnv's clients (`openenv.core.GenericEnvClient`, any `EnvClient`) work unchanged:
each WebSocket session (`/ws`) gets its own env, built by `envgym.make(ENV_ID, **kwargs)`
(turn limit included). On the wire:

- reset data: `seed`, `split`, `task` and `options` (a dict of the env's other reset options);
- step data: `{"message": ACTION}` (`EnvgymAction`);
- observation: `text`, `info` (state_key, invalid_action, admissible_actions, ... as JSON),
  `terminated`, `truncated`, `split`, `task` and, after reset, `instructions`; `reward` and
  `done` (= terminated or truncated) travel beside it as OpenEnv's protocol has them;
- state: the env's declarations (instructions, action format, tasks per split, reset options)
  and the current split, task, state_key and step count.

A bad request (an unknown split or reset field, a step before reset) is answered 400 over
HTTP, and over the WebSocket with an error whose message starts with `bad request:`; an env
that raises fails that session's call with `env failed:` and the cause, and other sessions go
on. A session idle past the idle timeout is closed; its next call says so. OpenEnv's stateless
HTTP `/reset` and `/step` build a fresh env per request (its design): episodes need `/ws`.
Two routes of envgym's own: `GET /envgym/sessions` (open and allowed sessions) and
`GET /envgym/task_keys?split=S&start=K` (what `RemoteEnv.task_key` reads).
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Mapping
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, WebSocketDisconnect
from fastapi.responses import JSONResponse
from openenv.core.env_server.http_server import HTTPEnvServer
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import Action, ConcurrencyConfig, EnvironmentMetadata, Observation, State
from pydantic import Field

import envgym
from envgym.pool import PROCESS_STEP_SECONDS
from envgym.remote import BAD_REQUEST, ENV_FAILED, SESSION_CLOSED, TASK_KEYS_BLOCK, TASK_KEYS_ROUTE
from envgym.wrappers import _jsonable

SESSIONS_ROUTE = "/envgym/sessions"


class EnvgymAction(Action):
    """One action of an envgym env: the agent's text."""

    message: str = Field(description="the action, as the agent wrote it")


class EnvgymObservation(Observation):
    """What reset or step returned; `reward` and `done` (terminated or truncated) are OpenEnv's own fields."""

    text: str = Field(description="the observation text")
    info: dict[str, Any] = Field(default_factory=dict, description="the env's info: state_key, invalid_action, ...")
    terminated: bool = False
    truncated: bool = False
    split: str = "train"
    task: int = 0
    instructions: str | None = Field(default=None, description="the system prompt (after reset only)")


class EnvgymState(State):
    """The env's declarations and where its episode stands."""

    env_id: str
    instructions: str
    action_format: str
    num_tasks: dict[str, int]
    reset_options: list[str]
    split: str = "train"
    task: int = 0
    state_key: str | None = None


class RequestError(ValueError):
    """The client asked for something the env cannot do; answered 400 with the reason."""

    def __init__(self, reason: str):
        super().__init__(f"{BAD_REQUEST} {reason}")


class EnvFailure(RuntimeError):
    """The env raised; answered 500 with the cause (over the WebSocket: only this session's call fails)."""

    def __init__(self, call: str, exc: BaseException):
        super().__init__(f"{ENV_FAILED} {call} raised {type(exc).__name__}: {exc}")


RESET_FIELDS = ("seed", "episode_id", "split", "task", "options")


class EnvgymEnvironment(Environment):
    """One envgym env behind OpenEnv's `Environment` interface (one per session)."""

    SUPPORTS_CONCURRENT_SESSIONS = True  # each session builds its own env

    def __init__(self, env_id: str, env_kwargs: Mapping[str, Any]):
        super().__init__()
        self.env_id = env_id
        self.env = envgym.make(env_id, **env_kwargs)
        declared = envgym.spec(env_id).step_seconds
        self.steps_inline = declared is None or declared <= PROCESS_STEP_SECONDS
        self.started = self.closed = False
        self.episode_id: str | None = None
        self.step_count = 0
        self.state_key: str | None = None

    def reset(self, seed: int | None = None, episode_id: str | None = None, **fields: Any) -> EnvgymObservation:
        self._check_open()
        unknown = sorted(set(fields) - set(RESET_FIELDS))
        if unknown:
            raise RequestError(f"unknown reset field(s) {unknown}; known: {list(RESET_FIELDS)}")
        options = fields.get("options") or {}
        if not isinstance(options, dict):
            raise RequestError(f"options must be an object, got {type(options).__name__}")
        options = {**options, **{k: fields[k] for k in ("split", "task") if fields.get(k) is not None}}
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise RequestError(f"seed must be an integer, got {seed!r}")
        try:
            text, info = self.env.reset(seed=seed, options=options)
        except (ValueError, TypeError) as exc:  # envgym's contract for bad reset options
            raise RequestError(str(exc)) from None
        except Exception as exc:
            raise EnvFailure("reset", exc) from exc
        self.started, self.episode_id, self.step_count = True, episode_id, 0
        return self._observation(text, 0.0, False, False, info, self.env.unwrapped.instructions)

    def step(self, action: EnvgymAction, timeout_s: float | None = None, **kwargs: Any) -> EnvgymObservation:
        self._check_open()
        if not self.started:
            raise RequestError("step before reset: reset first (over HTTP each request gets a fresh env, as "
                               "OpenEnv's stateless /step does: play episodes over the WebSocket /ws)")
        try:
            text, reward, terminated, truncated, info = self.env.step(action.message)
        except Exception as exc:
            raise EnvFailure(f"step({action.message[:40]!r})", exc) from exc
        self.step_count += 1
        return self._observation(text, float(reward), bool(terminated), bool(truncated), info, None)

    async def reset_async(self, seed: int | None = None, episode_id: str | None = None,
                          **fields: Any) -> EnvgymObservation:
        """In a thread: a reset may generate a task (seconds), and resets are rare enough to pay the hop."""
        return await asyncio.to_thread(self.reset, seed=seed, episode_id=episode_id, **fields)

    async def step_async(self, action: EnvgymAction, timeout_s: float | None = None,
                         **kwargs: Any) -> EnvgymObservation:
        """On the event loop where the env's steps are cheap (a thread hop was half the round trip), else in a
        thread, so that one slow session does not hold up the others."""
        if self.steps_inline:
            return self.step(action)
        return await asyncio.to_thread(self.step, action)

    def _observation(self, text: str, reward: float, terminated: bool, truncated: bool, info: dict[str, Any],
                     instructions: str | None) -> EnvgymObservation:
        self.state_key = info.get("state_key")
        base = self.env.unwrapped
        return EnvgymObservation(text=text, info=_jsonable(info), terminated=terminated, truncated=truncated,
                                 split=base.split, task=base.task, instructions=instructions, reward=reward,
                                 done=terminated or truncated)

    def _check_open(self) -> None:
        if self.closed:
            raise RequestError(f"{SESSION_CLOSED}: it was idle past the server's --idle-timeout; open a new one")

    @property
    def state(self) -> EnvgymState:
        base = self.env.unwrapped
        return EnvgymState(episode_id=self.episode_id, step_count=self.step_count, env_id=self.env_id,
                           instructions=base.instructions, action_format=base.action_format,
                           num_tasks=dict(base.num_tasks), reset_options=list(base.reset_options),
                           split=base.split, task=base.task, state_key=self.state_key)

    def get_metadata(self) -> EnvironmentMetadata:
        return EnvironmentMetadata(name=self.env_id, description=envgym.spec(self.env_id).description or self.env_id,
                                   version=envgym.__version__)

    def close(self) -> None:
        self.closed = True
        self.env.close()


def build_app(env_id: str, env_kwargs: Mapping[str, Any] | None = None, *, max_sessions: int = 16,
              idle_timeout: float | None = 600.0) -> FastAPI:
    """The FastAPI app serving `env_id` (built once here so a bad id or kwarg fails now, not per session).

    Raises KeyError (unknown id), TypeError/ValueError (bad kwargs or limits).
    """
    if max_sessions < 1:
        raise ValueError(f"--max-sessions must be >= 1, got {max_sessions}")
    if idle_timeout is not None and not idle_timeout > 0:
        raise ValueError(f"--idle-timeout must be > 0 seconds, got {idle_timeout}")
    env_kwargs = dict(env_kwargs or {})
    keys_env = envgym.make(env_id, **env_kwargs).unwrapped  # also proves the id and kwargs before serving
    server = HTTPEnvServer(functools.partial(EnvgymEnvironment, env_id, env_kwargs), EnvgymAction, EnvgymObservation,
                           concurrency_config=ConcurrencyConfig(max_concurrent_envs=max_sessions,
                                                                session_timeout=idle_timeout))
    app = FastAPI(title=f"envgym {env_id} (OpenEnv)", version=envgym.__version__)
    server.register_routes(app)
    app.add_exception_handler(RequestError, _answer(400))
    app.add_exception_handler(EnvFailure, _answer(500))

    @app.get(SESSIONS_ROUTE)
    def sessions() -> dict[str, int]:
        """How many sessions are open, of how many allowed."""
        return server.get_capacity_status().model_dump()

    @app.get(TASK_KEYS_ROUTE)
    def task_keys(split: str, start: int = 0) -> list[str]:
        """`task_key(split, k)` for k in [start, start + TASK_KEYS_BLOCK) within the split (the checker's
        disjointness proof, without a round trip per task)."""
        if split not in keys_env.num_tasks:
            raise RequestError(f"unknown split {split!r}; this env has splits {sorted(keys_env.num_tasks)}")
        end = min(start + TASK_KEYS_BLOCK, keys_env.num_tasks[split])
        return [keys_env.task_key(split, k) for k in range(max(0, start), end)]

    return app


def _answer(status: int):
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=status, content={"detail": str(exc)})

    return handler


class _QuietDisconnects:
    """ASGI wrapper: openenv-core 0.3.0 closes a WebSocket the client already closed, which raises
    WebSocketDisconnect after the session ended cleanly; without this uvicorn logs a traceback per session."""

    def __init__(self, app: FastAPI):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except WebSocketDisconnect:
            if scope["type"] != "websocket":
                raise


def serve(env_id: str, env_kwargs: Mapping[str, Any] | None = None, *, host: str = "127.0.0.1", port: int = 8000,
          max_sessions: int = 16, idle_timeout: float | None = 600.0) -> None:
    """Serve `env_id` on host:port until interrupted; port 0 picks a free port. Prints the address first."""
    app = build_app(env_id, env_kwargs, max_sessions=max_sessions, idle_timeout=idle_timeout)
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(2048)  # before the address is printed: connections wait in the backlog until uvicorn serves
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound_port = listener.getsockname()[1]
    print(f"serving {env_id} on http://{host}:{bound_port} (OpenEnv: WebSocket /ws, /reset, /step, /state, "
          f"/schema); up to {max_sessions} sessions, idle timeout {idle_timeout or 'none'} s; "
          f"train on it with env id openenv:http://{host}:{bound_port}", flush=True)
    config = uvicorn.Config(_QuietDisconnects(app), log_level="warning", ws_max_size=64 * 2**20)
    uvicorn.Server(config).run(sockets=[listener])
