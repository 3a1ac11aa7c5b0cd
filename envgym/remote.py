"""Remote envs: `envgym.make("openenv:http://HOST:PORT")` plays an env that `envgym serve` serves.

`RemoteEnv` is an `envgym.Env` that speaks OpenEnv's WebSocket protocol over one kept-open
connection (one server session per env): reset and step go to the server, `info` comes back
as the served env's (state_key, invalid_action, admissible_actions, ...), and the served env's
declarations (instructions, action format, tasks per split) are read from its state. The
served env's knobs and turn limit are set where it is served (`envgym serve ID KEY=VALUE`).

Every request waits at most `timeout` seconds. A server that is down, answers garbage, closes
the connection or does not answer raises `RemoteEnvError` naming the server and the cause, so
an `EnvPool` fails that episode and retries it with a fresh env (a new session); a bad reset
option raises ValueError and a non-str action TypeError, as a local env does. A session the
server closed for idleness is reopened by the next reset. `oracle_action` and `sample_action`
do not cross the wire (the random baseline plays the listed admissible actions).

Needs only `websockets` (installed with the extra `envgym[openenv]`).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from envgym.core import Env

#: How the server's error messages start, so the client can tell a bad request from a failed env.
BAD_REQUEST, ENV_FAILED, SESSION_CLOSED = "bad request:", "env failed:", "session closed"
#: The server's extra route for task keys, and how many one request returns.
TASK_KEYS_ROUTE, TASK_KEYS_BLOCK = "/envgym/task_keys", 1000
DEFAULT_TIMEOUT = 30.0


class RemoteEnvError(ConnectionError):
    """The env server is unreachable, answered garbage or an error, or did not answer in time."""


class RemoteEnv(Env):
    """An env served over OpenEnv at `url` (``http://HOST:PORT``); each request waits at most `timeout` s."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https", "ws", "wss") or not parsed.hostname:
            raise ValueError(f"an OpenEnv server's url must look like http://HOST:PORT, got {url!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        secure = parsed.scheme in ("https", "wss")
        netloc_path = f"{parsed.netloc}{parsed.path.rstrip('/')}"
        self.url = f"{'https' if secure else 'http'}://{netloc_path}"
        self.ws_url = f"{'wss' if secure else 'ws'}://{netloc_path}/ws"
        self.timeout = float(timeout)
        self._ws: Any = None
        self._declared: dict[str, Any] | None = None
        self._task_keys: dict[tuple[str, int], list[str]] = {}

    # -- the served env's declarations (read from its state on connecting) ------------------------

    @property
    def instructions(self) -> str:
        return self._declarations()["instructions"]

    @property
    def action_format(self) -> str:
        return self._declarations()["action_format"]

    @property
    def num_tasks(self) -> dict[str, int]:
        return self._declarations()["num_tasks"]

    @property
    def reset_options(self) -> tuple[str, ...]:
        return tuple(self._declarations()["reset_options"])

    def _declarations(self) -> dict[str, Any]:
        if self._declared is None:
            self._connect()
        return self._declared

    # -- the env contract -------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)  # a local np_random that follows the seed, as Gymnasium's checker expects
        data: dict[str, Any] = {"options": dict(options or {})}
        if seed is not None:
            data["seed"] = int(seed)
        try:
            payload = self._call("reset", data)
        except _SessionExpired:  # the server closed an idle session: a new one serves this episode
            self._disconnect()
            payload = self._call("reset", data)
        observation = self._field(payload, "observation", dict)
        self.split, self.task = self._field(observation, "split", str), self._field(observation, "task", int)
        self._declarations()["instructions"] = self._field(observation, "instructions", str)
        return self._field(observation, "text", str), self._field(observation, "info", dict)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        action = self.check_action(action)
        payload = self._call("step", {"message": action})
        observation = self._field(payload, "observation", dict)
        reward = payload.get("reward")
        return (self._field(observation, "text", str), 0.0 if reward is None else reward,
                self._field(observation, "terminated", bool), self._field(observation, "truncated", bool),
                self._field(observation, "info", dict))

    def task_key(self, split: str, index: int) -> str:
        """The served env's `task_key`, fetched TASK_KEYS_BLOCK keys per request and cached."""
        if split not in self.num_tasks or not 0 <= index < self.num_tasks[split]:
            raise ValueError(f"no task {index} in split {split!r}; tasks per split: {self.num_tasks}")
        start = index - index % TASK_KEYS_BLOCK
        if (split, start) not in self._task_keys:
            query = urllib.parse.urlencode({"split": split, "start": start})
            self._task_keys[split, start] = self._get(f"{TASK_KEYS_ROUTE}?{query}")
        return self._task_keys[split, start][index - start]

    def close(self) -> None:
        self._disconnect()
        super().close()

    # -- the wire ---------------------------------------------------------------------------------

    def _connect(self) -> None:
        """Open a session and read the served env's declarations from its state."""
        import websockets
        from websockets.exceptions import InvalidHandshake
        from websockets.sync.client import connect

        # websockets >= 17 warns unless told this is its classic connection (`legacy`), which older ones lack
        classic = {"legacy": True} if int(websockets.__version__.split(".")[0]) >= 17 else {}
        try:
            # no compression, no client pings: a step is a few hundred bytes and latency is what counts
            self._ws = connect(self.ws_url, open_timeout=self.timeout, compression=None, proxy=None,
                               ping_interval=None, max_size=None, **classic)
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise RemoteEnvError(f"cannot open a session on the env server {self.ws_url}: {_reason(exc)}; "
                                 "is `envgym serve` running there?") from None
        try:
            state = self._call("state", None)
            self._declared = {
                "instructions": self._field(state, "instructions", str),
                "action_format": self._field(state, "action_format", str),
                "num_tasks": self._field(state, "num_tasks", dict),
                "reset_options": self._field(state, "reset_options", list),
            }
        except Exception:
            self._disconnect()  # the next call starts over with a new connection
            raise

    def _disconnect(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:  # closing the socket ends the session (a "close" message first makes the server
            ws.close()      # race the client's close frame and log a traceback)

    def _call(self, kind: str, data: dict[str, Any] | None) -> dict[str, Any]:
        """Send one OpenEnv message and return the reply's data; raises what the reply means."""
        from websockets.exceptions import ConnectionClosed

        if self._ws is None:
            self._connect()
        message = {"type": kind} if data is None else {"type": kind, "data": data}
        try:
            try:
                self._ws.send(json.dumps(message))
            except ConnectionClosed:
                pass  # the server may have said why before closing (at capacity): read that below
            raw = self._ws.recv(timeout=self.timeout)
        except TimeoutError:
            self._disconnect()
            raise RemoteEnvError(f"the env server {self.url} did not answer {kind} within {self.timeout:g} s "
                                 "(the env's timeout option)") from None
        except ConnectionClosed as exc:
            self._ws = None
            raise RemoteEnvError(f"the env server {self.url} closed the session during {kind}: "
                                 f"{_reason(exc)}") from None
        try:
            reply = json.loads(raw)
            reply_type, reply_data = reply["type"], reply["data"]
            if not isinstance(reply_data, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self._disconnect()
            raise RemoteEnvError(f"the env server {self.url} answered {kind} with something that is not an OpenEnv "
                                 f"message: {str(raw)[:120]!r}") from None
        if reply_type == "error":
            text = str(reply_data.get("message", reply_data))
            if SESSION_CLOSED in text:
                raise _SessionExpired(text)
            if text.startswith(BAD_REQUEST):
                raise ValueError(f"{self.url}: {text}")
            raise RemoteEnvError(f"the env server {self.url} failed {kind}: {text} "
                                 f"({reply_data.get('code', 'no code')})")
        return reply_data

    def _field(self, payload: Mapping[str, Any], name: str, kind: type) -> Any:
        value = payload.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise RemoteEnvError(f"the env server {self.url} sent no {kind.__name__} {name!r} (got {value!r}); "
                                 "is it an envgym server?")
        return value

    def _get(self, path: str) -> Any:
        """GET `path` from the server as JSON; a 4xx raises ValueError with the server's reason."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            if 400 <= exc.code < 500:
                raise ValueError(f"{self.url}{path}: HTTP {exc.code}: {detail}") from None
            raise RemoteEnvError(f"{self.url}{path}: HTTP {exc.code}: {detail}") from None
        except (OSError, ValueError) as exc:
            raise RemoteEnvError(f"{self.url}{path}: {_reason(exc)}") from None


class _SessionExpired(RemoteEnvError):
    """The server closed this session for idleness."""


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def make_openenv_env(url: str, **kwargs: Any) -> RemoteEnv:
    """The env served at `url` (what ``envgym.make("openenv:" + url, **kwargs)`` builds).

    The only option is `timeout` (seconds per request); the served env's own knobs are set by
    `envgym serve ID KEY=VALUE`.
    """
    unknown = sorted(set(kwargs) - {"timeout"})
    if unknown:
        raise TypeError(f"openenv:{url} takes no option(s) {unknown}; its one option is timeout (seconds per "
                        "request); set the served env's knobs where it is served: envgym serve ID KEY=VALUE")
    return RemoteEnv(url, **kwargs)
