"""Group rollouts: the one path from envs and a policy to `Group`s, for training and evaluation alike.

`collect_groups` plays `n_groups` groups of `group_size` episodes. The
episodes of a group reset with one seed and one task, so their first
observations are equal and anchor states can match across them. All active
episodes of all groups advance together: each turn step makes one batched
policy call for every episode that is waiting for an action, then one
concurrent pool step. A policy that keeps KV caches (`CachingTokenPolicy`)
gets one cache key per episode attempt, released when the attempt ends.

Context: an episode whose context fills the policy's context window ends
there (`EpisodeEnd.CONTEXT`): its last action, cut where the window filled,
has `FinishReason.CONTEXT`; when the window is already full before the
policy can write anything, the episode ends after its previous turn (an
episode whose first prompt does not fit fails, with that cause).

Failure policy: an episode whose env raises, hangs, crashes or returns a
malformed result (or whose policy cannot answer) is retried from the start
with a fresh env up to `retries` times; after that its whole group is
dropped. A failed episode never becomes a row of training data; every failure
is logged with its cause and listed in `RolloutResult.failures`. Empty and
cut-off completions are not failures: they go to the env (which flags invalid
actions) and are recorded with their `FinishReason`.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from envgym.chat import ContextMode, EpisodeChat
from envgym.core import stable_hash
from envgym.policies.base import CachingTokenPolicy, Policy, PolicyError, SamplingParams, TextRequest, TokenPolicy
from envgym.pool import Backend, EnvFactory, EnvPool, EnvResult, default_num_envs
from envgym.trajectory import Episode, EpisodeEnd, FinishReason, Group, Turn

log = logging.getLogger(__name__)
_collections = itertools.count()


@dataclass(frozen=True)
class EpisodeFailure:
    """One failed attempt at an episode, with its cause."""

    group: int
    member: int
    attempt: int
    seed: int
    cause: str


@dataclass
class RolloutResult:
    """The complete groups (dropped groups left out, order by group index), metrics and failures.

    Metrics: `groups`, `episodes`, `turns`, `retries`, `dropped_groups`,
    `failed_attempts`, `template_fallbacks` (episodes whose chat template
    rewrote history), `generated_tokens`, `empty_actions`, `cut_off_actions`,
    `invalid_actions`, `context_full` (episodes ended by the context window),
    `prompt_tokens` (summed over turns), `cached_prompt_tokens` (of those,
    served from a policy's KV cache), `cache_misses` (turns that continued a
    token row but were prefilled afresh: the cache was evicted for its
    budget, or the weights changed), `env_workers` (processes or actors stepping the envs; 0 =
    in-process), `env_time` and `model_time` (seconds), `wall_time`.
    """

    groups: list[Group]
    metrics: dict[str, float]
    failures: list[EpisodeFailure] = field(default_factory=list)


def group_seed(seed: int, group: int) -> int:
    """The reset seed of group `group` in a collection seeded with `seed` (stable across processes)."""
    return stable_hash(f"rollout|{seed}|{group}") & 0x7FFF_FFFF


@dataclass
class _Live:
    """An episode in progress in one pool slot."""

    group: int
    member: int
    attempt: int
    slot: int
    chat: EpisodeChat
    info: dict[str, Any]
    observation: str
    pending_ids: list[int]
    starts_row: bool
    cache_key: tuple[int, int, int, int]
    context: list[int] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    row_starts: list[int] = field(default_factory=list)
    answer: str | None = None


class _Collector:
    """The state of one `collect_groups` call."""

    def __init__(self, env_name: str, policy: Policy, pool: EnvPool, *, n_groups: int, group_size: int,
                 split: str, seed: int, sampling: SamplingParams, context: ContextMode, window: int,
                 observation_role: str, max_turns: int | None, retries: int, tasks: Sequence[int] | None,
                 on_episode: Callable[[int, int], None] | None):
        self.env_name, self.policy, self.pool = env_name, policy, pool
        self.group_size, self.split, self.seed = group_size, split, seed
        self.sampling, self.context, self.window = sampling, context, window
        self.observation_role = observation_role
        self.max_turns, self.retries, self.tasks = max_turns, retries, tasks
        self.on_episode = on_episode
        self.tokenizer = policy.tokenizer if isinstance(policy, TokenPolicy) else None
        self.caching = isinstance(policy, CachingTokenPolicy)
        self.serial = next(_collections)  # keeps cache keys apart across collections sharing a policy
        self.queue = deque((g, m, 0) for g in range(n_groups) for m in range(group_size))
        self.free = list(range(pool.num_envs))[::-1]
        self.live: dict[int, _Live] = {}
        self.done: dict[int, list[Episode | None]] = {g: [None] * group_size for g in range(n_groups)}
        self.first_observation: dict[int, str] = {}
        self.tasks_seen: dict[int, int] = {}
        self.dropped: set[int] = set()
        self.failures: list[EpisodeFailure] = []
        self.metrics = dict.fromkeys(
            ("retries", "dropped_groups", "failed_attempts", "template_fallbacks", "generated_tokens",
             "empty_actions", "cut_off_actions", "invalid_actions", "context_full", "prompt_tokens",
             "cached_prompt_tokens", "cache_misses", "turns", "env_time", "model_time"), 0.0)
        self.finished_episodes = 0
        self.total_episodes = n_groups * group_size

    def run(self) -> list[Group]:
        try:
            while self.queue or self.live:
                self._start_waiting_episodes()
                if self.live:
                    self._advance_one_turn()
        finally:
            self._release(list(self.live.values()))
        return [self._group(g, episodes) for g, episodes in self.done.items() if g not in self.dropped]

    def _release(self, episodes: list[_Live]) -> None:
        """Free the policy's caches of episodes that ended (or are abandoned)."""
        if self.caching and episodes:
            self.policy.release([ep.cache_key for ep in episodes])

    # -- starting and ending episodes -----------------------------------------------------------------

    def _start_waiting_episodes(self) -> None:
        starting: dict[int, tuple[int, int, int]] = {}
        while self.queue and self.free:
            g, m, attempt = self.queue.popleft()
            if g not in self.dropped:
                starting[self.free.pop()] = (g, m, attempt)
        options = {"split": self.split}
        requests = {slot: (group_seed(self.seed, g), options if self.tasks is None else
                           {**options, "task": int(self.tasks[g])}) for slot, (g, m, a) in starting.items()}
        for slot, result in self.pool.reset(requests).items():
            g, m, attempt = starting[slot]
            self.metrics["env_time"] += result.seconds
            if result.error is None and self.first_observation.setdefault(g, result.observation) != result.observation:
                result = EnvResult(error="reset gave a different first observation than the group's other episodes "
                                         "with the same seed and task (reset is not deterministic)")
            if result.error is not None:
                self._fail(g, m, attempt, slot, f"reset: {result.error}")
                continue
            chat = EpisodeChat(self.tokenizer, result.instructions, context=self.context, window=self.window,
                               observation_role=self.observation_role, tools=result.info.get("tools"))
            ids, starts_row = chat.start(result.observation)
            answer = result.info.get("answer")
            self.live[slot] = _Live(g, m, attempt, slot, chat, result.info, result.observation, ids, starts_row,
                                    (self.serial, g, m, attempt), answer=None if answer is None else str(answer))
            if result.task is not None:
                self.tasks_seen[g] = result.task

    def _fail(self, g: int, m: int, attempt: int, slot: int, cause: str) -> None:
        ep = self.live.pop(slot, None)
        if ep is not None:
            self._release([ep])
        self.free.append(slot)
        self.metrics["failed_attempts"] += 1
        self.failures.append(EpisodeFailure(g, m, attempt, group_seed(self.seed, g), cause))
        if g in self.dropped:
            return
        if attempt < self.retries:
            log.warning("episode %d of group %d failed (attempt %d of %d), retrying with a fresh env: %s",
                        m, g, attempt + 1, self.retries + 1, cause)
            self.metrics["retries"] += 1
            self.queue.appendleft((g, m, attempt + 1))
            return
        log.warning("episode %d of group %d failed %d times; dropping the group: %s", m, g, attempt + 1, cause)
        self.dropped.add(g)
        self.metrics["dropped_groups"] += 1
        for other_slot in [s for s, ep in self.live.items() if ep.group == g]:
            self._release([self.live.pop(other_slot)])
            self.free.append(other_slot)
        self._report_progress(self.group_size - sum(e is not None for e in self.done[g]))

    def _finish(self, ep: _Live, end: EpisodeEnd, final: EnvResult) -> None:
        self.live.pop(ep.slot)
        self._release([ep])
        self.free.append(ep.slot)
        if ep.chat.rewrote_history:
            self.metrics["template_fallbacks"] += 1
        won = bool(final.info.get("won", final.terminated and final.reward > 0))
        answer = final.info.get("answer")
        self.done[ep.group][ep.member] = Episode(
            env_id=self.env_name, split=self.split, task=self.tasks_seen.get(ep.group, -1),
            seed=group_seed(self.seed, ep.group), turns=tuple(ep.turns), end=end, won=won,
            row_starts=tuple(ep.row_starts), answer=ep.answer if answer is None else str(answer),
            final_observation=final.observation)
        self._report_progress(1)

    def _report_progress(self, finished: int) -> None:
        self.finished_episodes += finished
        if self.on_episode is not None:
            self.on_episode(self.finished_episodes, self.total_episodes)

    def _group(self, g: int, episodes: list[Episode | None]) -> Group:
        first = episodes[0]
        return Group(first.env_id, first.split, first.task, first.seed, tuple(episodes))

    # -- one turn for every live episode ----------------------------------------------------------------

    def _advance_one_turn(self) -> None:
        episodes = list(self.live.values())
        for ep in episodes:
            if ep.starts_row:
                ep.row_starts.append(len(ep.turns))
                ep.context = []
            ep.context += ep.pending_ids
        start = time.perf_counter()
        actions = self._act(episodes)
        model_time = (time.perf_counter() - start) / len(episodes)
        self.metrics["model_time"] += model_time * len(episodes)
        stepping: dict[int, tuple[_Live, str, list[int], list[float], FinishReason]] = {}
        for ep, action in zip(episodes, actions):
            if isinstance(action, PolicyError):
                self._fail(ep.group, ep.member, ep.attempt, ep.slot, f"policy: {action}")
                continue
            text, ids, logprobs, finish = action
            if finish is FinishReason.CONTEXT and not ids:
                self._end_without_room(ep)
                continue
            stepping[ep.slot] = (ep, text, ids, logprobs, finish)
        results = self.pool.step({slot: text for slot, (_, text, *_) in stepping.items()})
        for slot, (ep, text, ids, logprobs, finish) in stepping.items():
            if ep.group in self.dropped:
                continue
            result = results[slot]
            self.metrics["env_time"] += result.seconds
            if result.error is not None:
                self._fail(ep.group, ep.member, ep.attempt, slot, f"step {len(ep.turns)}: {result.error}")
                continue
            invalid = bool(result.info.get("invalid_action", False))
            ep.turns.append(Turn(
                observation=ep.observation, action=text, reward=result.reward, state_key=ep.info["state_key"],
                invalid_action=invalid, finish=finish, obs_ids=tuple(ep.pending_ids), action_ids=tuple(ids),
                logprobs=tuple(logprobs), env_time=result.seconds, model_time=model_time))
            self._count_turn(ids, finish, invalid)
            full = finish is FinishReason.CONTEXT
            if result.done or full or (self.max_turns is not None and len(ep.turns) >= self.max_turns):
                end = (EpisodeEnd.TERMINATED if result.terminated else EpisodeEnd.TRUNCATED if result.truncated
                       else EpisodeEnd.CONTEXT if full else EpisodeEnd.MAX_TURNS)
                self.metrics["context_full"] += end is EpisodeEnd.CONTEXT
                self._finish(ep, end, result)
                continue
            ep.context += ids
            ep.pending_ids, ep.starts_row = ep.chat.advance(ids, text, result.observation)
            ep.observation, ep.info = result.observation, result.info

    def _end_without_room(self, ep: _Live) -> None:
        """The context window was full before the policy could write: the episode ends after its last turn."""
        if not ep.turns:
            self._fail(ep.group, ep.member, ep.attempt, ep.slot,
                       f"the first prompt ({len(ep.context)} tokens) does not fit the policy's context window")
            return
        self.metrics["context_full"] += 1
        self._finish(ep, EpisodeEnd.CONTEXT, EnvResult(observation=ep.observation, info=ep.info))

    def _count_turn(self, ids: list[int], finish: FinishReason, invalid: bool) -> None:
        self.metrics["turns"] += 1
        self.metrics["generated_tokens"] += len(ids)
        self.metrics["empty_actions"] += finish is FinishReason.EMPTY
        self.metrics["cut_off_actions"] += finish is FinishReason.LENGTH
        self.metrics["invalid_actions"] += invalid

    def _act(self, episodes: list[_Live]) -> list[tuple[str, list[int], list[float], FinishReason] | PolicyError]:
        """One batched policy call for all `episodes`: (text, sampled ids, logprobs, finish) or a PolicyError."""
        if self.tokenizer is not None:
            prompts = [ep.context for ep in episodes]
            if self.caching:
                completions = self.policy.generate(prompts, self.sampling,
                                                   cache_keys=[ep.cache_key for ep in episodes])
            else:
                completions = self.policy.generate(prompts, self.sampling)
            for ep, completion in zip(episodes, completions):
                self.metrics["prompt_tokens"] += len(ep.context)
                self.metrics["cached_prompt_tokens"] += completion.cached_tokens
                continues_row = len(ep.turns) > ep.row_starts[-1]
                self.metrics["cache_misses"] += self.caching and continues_row and completion.cached_tokens == 0
            return [(c.text, list(c.token_ids), list(c.logprobs),
                     FinishReason.CONTEXT if c.finish_reason == "context" else
                     FinishReason.EMPTY if not c.text.strip() else
                     FinishReason.LENGTH if c.finish_reason == "length" else FinishReason.STOP)
                    for c in completions]
        requests = [TextRequest(tuple(ep.chat.messages), ep.info,
                                oracle=lambda slot=ep.slot: self.pool.oracle_action(slot)) for ep in episodes]
        try:
            answers = self.policy.act(requests)
        except PolicyError as exc:
            answers = [exc] * len(episodes)
        return [a if isinstance(a, PolicyError) else
                PolicyError(f"act returned {type(a).__name__}, expected str") if not isinstance(a, str) else
                (a, [], [], FinishReason.EMPTY if not a.strip() else FinishReason.STOP) for a in answers]


def _env_name(env: str | EnvFactory) -> str:
    """The id recorded in episodes: the env id, an `EnvMaker`'s id, or the id inside `partial(envgym.make, id)`."""
    if isinstance(env, str):
        return env
    if isinstance(getattr(env, "env_id", None), str):
        return env.env_id
    if isinstance(env, functools.partial) and env.args and isinstance(env.args[0], str):
        return env.args[0]
    return getattr(env, "__name__", type(env).__name__)


def collect_groups(
    env: str | EnvFactory,
    policy: Policy,
    *,
    n_groups: int,
    group_size: int,
    split: str = "train",
    seed: int = 0,
    sampling: SamplingParams | None = None,
    context: ContextMode = "full",
    window: int = 4,
    observation_role: str = "user",
    pool: EnvPool | None = None,
    backend: Backend = "auto",
    num_envs: int | None = None,
    max_turns: int | None = None,
    retries: int = 2,
    tasks: Sequence[int] | None = None,
    on_episode: Callable[[int, int], None] | None = None,
) -> RolloutResult:
    """Play `n_groups` groups of `group_size` episodes of `env` (an id or a factory) with `policy`.

    Group g resets with seed `group_seed(seed, g)` and `options={"split": split}`
    (plus `"task": tasks[g]` when `tasks` is given). Without `pool`, a pool of
    `num_envs` envs (default: `envgym.pool.default_num_envs`) with `backend` is made and
    closed here; "auto" keeps cheap envs in this process and steps slow ones
    (TextWorld, sandboxed tools) in worker processes (see `envgym.pool`).
    Observations are chat messages of `observation_role`
    ("user", or "tool" for tool envs whose template has that role); `context`
    and `window` choose the token layout (see `envgym.chat`). `max_turns`
    caps episodes (end `MAX_TURNS`) on top of the env's own limit.
    `on_episode(finished, total)` is called as episodes end.
    """
    if n_groups < 0 or group_size < 1:
        raise ValueError(f"need n_groups >= 0 and group_size >= 1, got {n_groups} and {group_size}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if tasks is not None and len(tasks) != n_groups:
        raise ValueError(f"tasks names {len(tasks)} tasks for {n_groups} groups; give one per group")
    if not isinstance(policy, TokenPolicy) and not hasattr(policy, "act"):
        raise TypeError(f"{type(policy).__name__} is neither a TokenPolicy (generate/score/tokenizer) "
                        "nor a TextPolicy (act)")
    env_name = _env_name(env)
    own_pool = pool is None
    if own_pool:
        pool = EnvPool(env, num_envs or default_num_envs(backend, n_groups * group_size, env), backend=backend)
    started = time.perf_counter()
    try:
        collector = _Collector(env_name, policy, pool, n_groups=n_groups, group_size=group_size, split=split,
                               seed=seed, sampling=sampling or SamplingParams(), context=context, window=window,
                               observation_role=observation_role, max_turns=max_turns, retries=retries, tasks=tasks,
                               on_episode=on_episode)
        groups = collector.run()
    finally:
        if own_pool:
            pool.close()
    metrics = {**collector.metrics, "groups": float(len(groups)),
               "episodes": float(sum(len(g.episodes) for g in groups)),
               "env_workers": 0.0 if pool.backend == "sync" else float(pool.num_envs),
               "wall_time": time.perf_counter() - started}
    return RolloutResult(groups, metrics, collector.failures)
