"""Agents as rollouts: any program `agent(env, client)` played, recorded and trained through the gateway.

    def agent(env, client):                      # client: openai.OpenAI, model "policy"
        observation, info = env.reset()          # the task and seed are fixed by the rollout
        messages = [{"role": "system", "content": env.instructions}, {"role": "user", "content": observation}]
        while True:
            reply = client.chat.completions.create(model="policy", messages=messages, tools=info.get("tools"))
            ...
            observation, reward, terminated, truncated, info = env.step(action)

A config names it as ``rollout.agent: package.module:function``; ``envgym eval --agent
package.module:function`` plays it against any policy. `collect_agent_groups` is `collect_groups`
for agents and returns the same `RolloutResult`:

- each episode runs its agent in a thread of its own, with a fresh env (made in
  this process, reset with the group's seed and task whatever the agent passes)
  and a client whose base URL is that episode's on the gateway (`envgym.gateway`;
  for an `openai:` policy the gateway forwards to its endpoint, and turns carry
  text and the endpoint's usage only: evaluation);
- a turn is one model request; its reward is the sum of what the env returned
  for the steps the agent took after it and before its next request (steps
  before the first request count for the first turn); its `state_key` is the
  env state the request was made from;
- token rows: requests whose prompts extend the previous prompt and sampled ids
  (append-only history) form one row, a request whose history was rewritten
  starts a new row (see `envgym.gateway`);
- the episode ends when the agent returns: TERMINATED or TRUNCATED as the env
  last said (TRUNCATED when the agent stopped before the env was done); CONTEXT
  when a prompt filled the context budget (the gateway answered 400, and the
  agent may raise on it: that is no failure); MAX_TURNS after `max_turns` requests.
- metrics are `collect_groups`' plus `tool_calls` (returned structured) and
  `malformed_tool_calls` (returned as text);
- failures, retried from the start with a fresh env like the built-in loop's
  (`retries`, then the group is dropped): the agent raised (the cause is the
  exception's last traceback line), made no model request, or did not return
  within `episode_timeout` seconds (its episode is closed: its requests get
  409 and its env steps raise; the thread is left to end on its own).
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from envgym.core import stable_hash
from envgym.gateway import EpisodeRecord, Exchange, Gateway
from envgym.policies.base import Policy, SamplingParams
from envgym.rollout import COUNTED_METRICS, FailureLedger, RolloutResult, group_seed
from envgym.trajectory import Episode, EpisodeEnd, FinishReason, Group, Turn

log = logging.getLogger(__name__)

Agent = Callable[[Any, Any], Any]


def load_agent(spec: str) -> Agent:
    """The callable `package.module:function` names; ValueError saying what is wrong otherwise."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"agent {spec!r}: expected package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"agent {spec!r}: cannot import {module_name!r} ({exc})") from None
    agent = module
    for part in attribute.split("."):
        agent = getattr(agent, part, None)
    if not callable(agent):
        raise ValueError(f"agent {spec!r}: {module_name} has no callable {attribute!r}")
    return agent


class EpisodeClosed(RuntimeError):
    """The episode has ended (timed out, or the rollout gave up on it): its env takes no more steps."""


@dataclass
class _Step:
    after_request: int  # requests made before this step
    reward: float
    terminated: bool
    truncated: bool
    invalid: bool
    info: dict[str, Any]
    observation: str
    seconds: float


class AgentEnv:
    """The env an agent gets: `reset` uses the rollout's seed and task, every step is recorded against the
    agent's model requests; other attributes are the env's (`instructions`, `unwrapped`, ...)."""

    def __init__(self, env: Any, seed: int, options: dict[str, Any], record: EpisodeRecord):
        self._env, self._seed, self._options, self._record = env, seed, options, record
        self.steps: list[_Step] = []
        self.reset_info: dict[str, Any] | None = None
        self.task: int | None = None
        self.reset_observation = ""
        self.reset_seconds = 0.0

    @property
    def instructions(self) -> str:
        """The env's instructions (the system prompt the built-in loop uses)."""
        return self._env.unwrapped.instructions

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Reset with the episode's seed and options (the agent's are ignored: the rollout fixes the task)."""
        self._check_open()
        started = time.perf_counter()
        observation, info = self._env.reset(seed=self._seed, options=dict(self._options))
        self.reset_seconds += time.perf_counter() - started
        self.reset_info, self.reset_observation = dict(info), observation
        self.task = getattr(self._env.unwrapped, "task", None)  # the task index drawn, as the pool reads it
        self.steps.clear()
        self._record.state_key = _state_key(info, observation)
        return observation, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self._check_open()
        if self.reset_info is None:
            raise RuntimeError("call env.reset() before env.step()")
        if self.steps and (self.steps[-1].terminated or self.steps[-1].truncated):
            raise RuntimeError("the episode is over (the env said terminated or truncated); the agent should return")
        started = time.perf_counter()
        observation, reward, terminated, truncated, info = self._env.step(action)
        self.steps.append(_Step(len(self._record.exchanges), float(reward), bool(terminated), bool(truncated),
                                bool(info.get("invalid_action", False)), dict(info), observation,
                                time.perf_counter() - started))
        self._record.state_key = _state_key(info, observation)
        self._record.steps = len(self.steps)
        return observation, reward, terminated, truncated, info

    def _check_open(self) -> None:
        if self._record.end_reason is not None and self._record.end_reason not in ("context", "max_turns"):
            raise EpisodeClosed(f"the episode has ended ({self._record.end_reason})")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


def _state_key(info: dict[str, Any], observation: str) -> str:
    key = info.get("state_key")
    return key if isinstance(key, str) else f"obs:{stable_hash(observation):x}"


@dataclass
class _Attempt:
    group: int
    member: int
    attempt: int
    record: EpisodeRecord
    env: AgentEnv
    started: float
    error: str | None = None
    returned: bool = False
    ended: bool = False  # the agent's thread is done with it (set under the collector's condition)


class _AgentCollector:
    """The state of one `collect_agent_groups` call."""

    def __init__(self, env_factory: Callable[[], Any], agent: Agent, gateway: Gateway, *,
                 n_groups: int, group_size: int, split: str, seed: int, first_group: int, tasks: Sequence[int] | None,
                 retries: int, episode_timeout: float | None, concurrency: int, env_name: str,
                 on_episode: Callable[[int, int], None] | None, policy_version: Callable[[], int] | None):
        self.env_factory, self.agent, self.gateway = env_factory, agent, gateway
        self.group_size, self.split, self.seed, self.first_group = group_size, split, seed, first_group
        self.tasks, self.episode_timeout = tasks, episode_timeout
        self.concurrency, self.env_name, self.on_episode = concurrency, env_name, on_episode
        self.policy_version = policy_version
        self.settled = 0
        self.queue = [(g, m, 0) for g in range(n_groups) for m in range(group_size)][::-1]
        self.done: dict[int, list[Episode | None]] = {g: [None] * group_size for g in range(n_groups)}
        self.running: list[_Attempt] = []
        self.finished = threading.Condition()
        self.metrics = dict.fromkeys((*COUNTED_METRICS, "tool_calls", "malformed_tool_calls"), 0.0)
        self.ledger = FailureLedger(retries, self.metrics, self._group_seed, "agent episode")

    def run(self) -> list[Group]:
        try:
            while self.queue or self.running:
                while self.queue and len(self.running) < self.concurrency:
                    g, m, attempt = self.queue.pop()
                    if g not in self.ledger.dropped:
                        self._start(g, m, attempt)
                self._wait_and_settle()
        finally:
            for attempt in self.running:  # abandoned (an interrupt): their requests get 409 from now on
                self._close(attempt, "the rollout stopped")
        return [Group(self.env_name, self.split, eps[0].task, eps[0].seed, tuple(eps))
                for g, eps in self.done.items() if g not in self.ledger.dropped]

    def _group_seed(self, g: int) -> int:
        return group_seed(self.seed, self.first_group + g)

    def _start(self, g: int, m: int, attempt: int) -> None:
        record = self.gateway.open_episode()
        options: dict[str, Any] = {"split": self.split}
        if self.tasks is not None:
            options["task"] = int(self.tasks[g])
        try:
            env = AgentEnv(self.env_factory(), self._group_seed(g), options, record)
        except Exception as exc:
            self.gateway.end_episode(record, "env failed")
            self._fail(g, m, attempt, f"make env: {_last_line(exc)}")
            return
        client = self.gateway.client(record)
        run = _Attempt(g, m, attempt, record, env, time.perf_counter())
        self.running.append(run)
        threading.Thread(target=self._play, args=(run, client), daemon=True, name=f"agent-{g}-{m}-{attempt}").start()

    def _play(self, run: _Attempt, client: Any) -> None:
        try:
            self.agent(run.env, client)
            run.returned = True
        except BaseException as exc:  # the agent's own failure: its episode fails, the rollout goes on
            run.error = _last_line(exc)
        with self.finished:
            run.ended = True
            self.finished.notify_all()

    def _wait_and_settle(self) -> None:
        with self.finished:
            if not any(r.ended for r in self.running):
                deadlines = [r.started + self.episode_timeout - time.perf_counter() for r in self.running] \
                    if self.episode_timeout else []
                self.finished.wait(timeout=max(0.0, min(deadlines)) if deadlines else None)
            ended = [r for r in self.running if r.ended]
        now = time.perf_counter()
        for run in list(self.running):
            if run not in self.running:  # a failure just before dropped its group
                continue
            if run in ended:
                self.running.remove(run)
                self._settle(run)
            elif self.episode_timeout and now - run.started >= self.episode_timeout:
                self.running.remove(run)
                self._close(run, "timed out")
                self._fail(run.group, run.member, run.attempt,
                           f"agent: did not return within rollout.episode_timeout={self.episode_timeout:g}s")

    def _close(self, run: _Attempt, reason: str) -> None:
        self.gateway.end_episode(run.record, reason)
        try:
            run.env._env.close()
        except Exception:  # the env of an abandoned episode: its close failing changes nothing
            log.debug("closing the env of an abandoned agent episode failed", exc_info=True)

    def _settle(self, run: _Attempt) -> None:
        context_ended = run.record.end_reason == "context"
        self._close(run, "agent returned" if run.returned else "agent raised")
        if run.error is not None and not context_ended and run.record.end_reason != "max_turns":
            self._fail(run.group, run.member, run.attempt, f"agent: {run.error}")
            return
        if not run.record.exchanges:
            cause = ("context: the first prompt does not fit the context budget" if context_ended
                     else "agent: made no model request")
            self._fail(run.group, run.member, run.attempt, cause, retry=not context_ended)
            return
        if run.env.reset_info is None:
            self._fail(run.group, run.member, run.attempt, "agent: never called env.reset()")
            return
        episode = self._episode(run)
        self.done[run.group][run.member] = episode
        self._count(episode, run.record)
        self.settled += 1
        if self.on_episode is not None:
            self.on_episode(self.settled, len(self.done) * self.group_size)

    def _episode(self, run: _Attempt) -> Episode:
        record, env = run.record, run.env
        exchanges = record.exchanges
        rewards = [0.0] * len(exchanges)
        invalid = [False] * len(exchanges)
        env_time = [0.0] * len(exchanges)
        env_time[0] = env.reset_seconds
        for step in env.steps:
            turn = max(0, step.after_request - 1)
            rewards[turn] += step.reward
            invalid[turn] |= step.invalid
            env_time[turn] += step.seconds
        version = None if self.policy_version is None else self.policy_version()
        turns = tuple(_turn(e, rewards[i], invalid[i], env_time[i], version) for i, e in enumerate(exchanges))
        last = env.steps[-1] if env.steps else None
        final_info = last.info if last else env.reset_info
        if record.end_reason == "context" or (record.end_reason != "max_turns"
                                              and turns[-1].finish is FinishReason.CONTEXT):
            end = EpisodeEnd.CONTEXT
        elif last is not None and last.terminated:
            end = EpisodeEnd.TERMINATED
        elif record.end_reason == "max_turns":
            end = EpisodeEnd.MAX_TURNS
        else:
            end = EpisodeEnd.TRUNCATED
        won = bool(final_info.get("won", last is not None and last.terminated and last.reward > 0))
        answer = final_info.get("answer", env.reset_info.get("answer"))
        task = env.task if env.task is not None else self.tasks[run.group] if self.tasks is not None else -1
        return Episode(env_id=self.env_name, split=self.split, task=int(task),
                       seed=self._group_seed(run.group), turns=turns, end=end, won=won,
                       row_starts=tuple(i for i, e in enumerate(exchanges) if e.starts_row),
                       answer=None if answer is None else str(answer),
                       final_observation=last.observation if last else env.reset_observation)

    def _count(self, episode: Episode, record: EpisodeRecord) -> None:
        m = self.metrics
        m["template_fallbacks"] += len(episode.row_starts) > 1
        m["context_full"] += episode.end is EpisodeEnd.CONTEXT
        for turn, exchange in zip(episode.turns, record.exchanges):
            m["turns"] += 1
            m["generated_tokens"] += turn.completion_tokens or 0
            m["prompt_tokens"] += turn.prompt_tokens or 0
            m["cached_prompt_tokens"] += exchange.cached_tokens
            m["empty_actions"] += turn.finish is FinishReason.EMPTY
            m["cut_off_actions"] += turn.finish is FinishReason.LENGTH
            m["invalid_actions"] += turn.invalid_action
            m["env_time"] += turn.env_time
            m["model_time"] += turn.model_time
            m["tool_calls"] += exchange.tool_calls
            m["malformed_tool_calls"] += bool(exchange.malformed_tool_call)

    def _fail(self, g: int, m: int, attempt: int, cause: str, retry: bool = True) -> None:
        """Record the failure (`FailureLedger.fail`), and replay the episode or drop its group."""
        dropped_before = g in self.ledger.dropped
        if self.ledger.fail(g, m, attempt, cause, retry=retry):
            self.queue.append((g, m, attempt + 1))
        elif not dropped_before:
            for run in [r for r in self.running if r.group == g]:
                self.running.remove(run)
                self._close(run, "its group was dropped")


def _turn(exchange: Exchange, reward: float, invalid: bool, env_time: float, version: int | None) -> Turn:
    return Turn(observation=exchange.observation, action=exchange.text, reward=reward, state_key=exchange.state_key,
                invalid_action=invalid, finish=exchange.finish, obs_ids=exchange.obs_ids,
                action_ids=exchange.action_ids, logprobs=exchange.logprobs, env_time=env_time,
                model_time=exchange.seconds, prompt_tokens=exchange.prompt_tokens,
                completion_tokens=exchange.completion_tokens, policy_version=version)


def _last_line(exc: BaseException) -> str:
    """The last line of `exc`'s traceback (``Type: message``)."""
    return traceback.format_exception_only(type(exc), exc)[-1].strip()


def collect_agent_groups(env: Callable[[], Any], policy: Policy, agent: Agent | str, *, n_groups: int,
                         group_size: int, split: str = "train", seed: int = 0, sampling: SamplingParams | None = None,
                         max_turns: int | None = None, retries: int = 2, tasks: Sequence[int] | None = None,
                         max_context_tokens: int | None = None, first_group: int = 0,
                         episode_timeout: float | None = None, concurrency: int | None = None,
                         on_episode: Callable[[int, int], None] | None = None,
                         policy_version: Callable[[], int] | None = None, **_layout: Any) -> RolloutResult:
    """Play `n_groups` groups of `group_size` episodes of `agent` (a callable or ``package.module:function``)
    on envs from the factory `env`, with `policy` behind a gateway (see the module docstring).

    Seeds, tasks, `first_group`, `retries` and `max_context_tokens` mean what they mean for
    `envgym.rollout.collect_groups`; `sampling` bounds every request (`envgym.gateway`); `concurrency`
    episodes run at once (default: all). `policy_version()` is the version of the policy's weights, recorded in
    each `Turn.policy_version` (the weights do not change during an agent rollout). Chat-layout options of
    `collect_groups` (`context`, `window`, `observation_role`, `pool`, ...) are accepted and ignored: the agent
    lays out its own chat.
    """
    if isinstance(agent, str):
        agent = load_agent(agent)
    if n_groups < 0 or group_size < 1:
        raise ValueError(f"need n_groups >= 0 and group_size >= 1, got {n_groups} and {group_size}")
    if tasks is not None and len(tasks) != n_groups:
        raise ValueError(f"tasks names {len(tasks)} tasks for {n_groups} groups; give one per group")
    env_name = getattr(env, "env_id", None) or getattr(env, "__name__", type(env).__name__)
    started = time.perf_counter()
    gateway = Gateway(policy, sampling=sampling, max_context_tokens=max_context_tokens, max_turns=max_turns)
    gateway.start()
    try:
        collector = _AgentCollector(env, agent, gateway, n_groups=n_groups, group_size=group_size,
                                    split=split, seed=seed, first_group=first_group, tasks=tasks, retries=retries,
                                    episode_timeout=episode_timeout or None,
                                    concurrency=concurrency or n_groups * group_size or 1, env_name=str(env_name),
                                    on_episode=on_episode, policy_version=policy_version)
        groups = collector.run()
    finally:
        gateway.close()
    metrics = {**collector.metrics, "groups": float(len(groups)),
               "episodes": float(sum(len(g.episodes) for g in groups)), "env_workers": 0.0,
               "wall_time": time.perf_counter() - started}
    return RolloutResult(groups, metrics, collector.ledger.failures)
