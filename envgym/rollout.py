"""Group rollouts: the one path from envs and a policy to `Group`s, for training and evaluation alike.

`collect_groups` plays `n_groups` groups of `group_size` episodes. The
episodes of a group reset with one seed and one task, so their first
observations are equal and anchor states can match across them. All active
episodes of all groups advance together: each turn step makes one batched
policy call for every episode that is waiting for an action, then one
concurrent pool step. A policy that keeps KV caches (`CachingTokenPolicy`)
gets one cache key per episode attempt, released when the attempt ends.

Context: every policy plays within one token budget, the smaller of
`max_context_tokens` and the policy's own `context_window` (see
`envgym.policies.base.context_window`). An episode whose context fills it
ends there (`EpisodeEnd.CONTEXT`): a token policy's last action, cut where the
budget filled, has `FinishReason.CONTEXT`; a text policy's reply whose prompt
and completion pass it (by the usage the policy reports) is its last, with
`FinishReason.CONTEXT`. When the prompt alone fills the budget (or an endpoint
answers that it does not fit its context), the episode ends after its previous
turn; an episode whose first prompt does not fit fails at once, without a
retry (a replay would not fit either).

Branching (`branch=BranchOptions(k=K, ...)`, see `envgym.branching`): before
each chosen turn of a root episode its env is forked K times into free pool
slots (the pool grows by a slot where none is free) and K branch episodes
play on from the same state and context; with a caching policy each branch
starts from a copy of its root's KV cache, so it prefills only its own
tokens. A fork that fails (an env not deterministic under replay) stops the
collection with `BranchingFailed`; any failed episode of a branched group
drops the group (a retry would orphan its branches).

Failure policy: an episode whose env raises, hangs, crashes or returns a
malformed result (or whose policy cannot answer) is retried from the start
with a fresh env up to `retries` times; after that its whole group is
dropped. A failure that repeats the previous attempt's (the same cause at the
same step, numbers and quoted text aside) is taken as deterministic: the group
is dropped at once, and the failure's cause says so. A failed episode never
becomes a row of training data; every failure is logged with its cause and
listed in `RolloutResult.failures`. Empty and cut-off completions are not
failures: they go to the env (which flags invalid actions) and are recorded
with their `FinishReason`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from envgym.branching import BranchOptions, check_branchable_policy
from envgym.chat import ContextMode, EpisodeChat
from envgym.core import RunFailed, stable_hash
from envgym.policies.base import (CachingTokenPolicy, Completion, ContextOverflow, Policy, PolicyError, SamplingParams,
                                  TextReply, TextRequest, TokenPolicy, context_window)
from envgym.pool import Backend, EnvFactory, EnvPool, EnvResult, default_num_envs
from envgym.trajectory import Episode, EpisodeEnd, FinishReason, Group, Turn

log = logging.getLogger(__name__)
_collections = itertools.count()
#: The metrics a collection counts as it goes (see `RolloutResult`).
COUNTED_METRICS = ("retries", "dropped_groups", "failed_attempts", "repeated_failures", "template_fallbacks",
                   "generated_tokens", "empty_actions", "cut_off_actions", "invalid_actions", "context_full",
                   "prompt_tokens", "cached_prompt_tokens", "cache_misses", "turns", "env_time", "model_time",
                   "branches", "fork_time")


class BranchingFailed(RunFailed):
    """An episode's env could not be forked for branching (the message names the env and why)."""


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
    `failed_attempts`, `repeated_failures` (failures that repeated the previous
    attempt's, so were not retried), `template_fallbacks` (episodes whose chat template
    rewrote history), `generated_tokens`, `empty_actions`, `cut_off_actions`,
    `invalid_actions`, `context_full` (episodes ended by the context budget),
    `prompt_tokens` (summed over turns), `cached_prompt_tokens` (of those,
    served from a policy's KV cache), `cache_misses` (turns that continued a
    token row but were prefilled afresh: the cache was evicted for its
    budget, or the weights changed), `branches` (branch episodes started), `fork_time`
    (seconds forking envs), `env_workers` (processes or actors stepping the envs; 0 =
    in-process), `env_time` and `model_time` (seconds), `wall_time`.
    """

    groups: list[Group]
    metrics: dict[str, float]
    failures: list[EpisodeFailure] = field(default_factory=list)
    action_sources: dict[str, int] = field(default_factory=dict)  # TextReply.source -> actions, where given

    @classmethod
    def merge(cls, parts: Sequence[RolloutResult]) -> RolloutResult:
        """One result of several collections (shards played by data-parallel ranks), in the order given.

        Groups and failures are concatenated, metrics and action sources summed, except `wall_time`: the
        longest part's.
        """
        metrics = {key: (max if key == "wall_time" else sum)(p.metrics.get(key, 0.0) for p in parts)
                   for key in dict.fromkeys(k for p in parts for k in p.metrics)}
        sources = {key: sum(p.action_sources.get(key, 0) for p in parts)
                   for key in dict.fromkeys(k for p in parts for k in p.action_sources)}
        return cls([g for p in parts for g in p.groups], metrics, [f for p in parts for f in p.failures], sources)


@dataclass(frozen=True)
class _Action:
    """What the policy wrote for one episode this turn."""

    text: str
    ids: list[int]
    logprobs: list[float]
    finish: FinishReason
    prompt_tokens: int | None
    completion_tokens: int | None
    source: str = ""


@dataclass(frozen=True)
class _NoRoom:
    """The prompt fills the context budget: nothing was written (`detail`: what the policy said, if anything)."""

    prompt_tokens: int | None
    detail: str = ""


def context_budget(policy: Policy, max_context_tokens: int | None) -> int | None:
    """The tokens a prompt plus its completion may hold: the smaller of `max_context_tokens` and the
    policy's own `context_window`; None where neither is set."""
    limits = [n for n in (max_context_tokens, context_window(policy)) if n]
    return min(limits) if limits else None


def failure_signature(cause: str) -> str:
    """`cause` with its numbers (past the step that failed) and quoted text masked: two attempts whose failures
    share it failed the same way (a hang, a crash, an exception) at the same point."""
    where, _, what = cause.partition(": ")
    return where + ": " + re.sub(r"'[^']*'|\"[^\"]*\"|\d+(?:\.\d+)?", "#", what)


class FailureLedger:
    """The failure policy of one collection (see the module docstring), shared by `collect_groups` and agent
    rollouts: records each failed attempt, counts it in `metrics`, and says whether to replay the episode."""

    def __init__(self, retries: int, metrics: dict[str, float], group_seed: Callable[[int], int], what: str):
        self.retries, self.metrics, self.group_seed, self.what = retries, metrics, group_seed, what
        self.failures: list[EpisodeFailure] = []
        self.dropped: set[int] = set()  # the groups dropped so far
        self._last: dict[tuple[int, int], str] = {}  # (group, member) -> its last failure's signature

    def fail(self, g: int, m: int, attempt: int, cause: str, *, retry: bool = True, by_env: bool = True) -> bool:
        """Record attempt `attempt` of member `m` of group `g` failing with `cause`; True: replay it (attempt + 1),
        False: its group is (or was already) dropped. `retry` False: a replay cannot succeed. `by_env`: the env
        failed, so a failure that repeats the previous attempt's is deterministic (a policy's errors, such as an
        endpoint's 503, are not)."""
        self.metrics["failed_attempts"] += 1
        signature = failure_signature(cause)
        if retry and by_env and attempt < self.retries and self._last.get((g, m)) == signature:
            retry = False
            self.metrics["repeated_failures"] += 1
            cause += " (as in the previous attempt, at the same step: deterministic, not retried)"
        self._last[(g, m)] = signature
        self.failures.append(EpisodeFailure(g, m, attempt, self.group_seed(g), cause))
        if g in self.dropped:
            return False
        if retry and attempt < self.retries:
            log.warning("%s %d of group %d failed (attempt %d of %d), retrying with a fresh env: %s",
                        self.what, m, g, attempt + 1, self.retries + 1, cause)
            self.metrics["retries"] += 1
            return True
        log.warning("%s %d of group %d failed %d times; dropping the group: %s", self.what, m, g, attempt + 1, cause)
        self.dropped.add(g)
        self.metrics["dropped_groups"] += 1
        return False


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
    parent: int | None = None  # a branch's root: its member index in the group
    branch_turn: int | None = None
    branch_points: int = 0  # a root's turns branched so far


class _Collector:
    """The state of one `collect_groups` call."""

    def __init__(self, env_name: str, policy: Policy, pool: EnvPool, *, n_groups: int, group_size: int,
                 split: str, seed: int, sampling: SamplingParams, context: ContextMode, window: int,
                 observation_role: str, max_turns: int | None, retries: int, tasks: Sequence[int] | None,
                 max_context_tokens: int | None, on_episode: Callable[[int, int], None] | None,
                 first_group: int = 0, branch: BranchOptions | None = None,
                 policy_version: Callable[[], int] | None = None):
        self.env_name, self.policy, self.pool = env_name, policy, pool
        self.group_size, self.split, self.seed = group_size, split, seed
        self.first_group = first_group
        self.sampling, self.context, self.window = sampling, context, window
        self.observation_role = observation_role
        self.max_turns, self.tasks = max_turns, tasks
        self.max_context_tokens = max_context_tokens
        self.on_episode = on_episode
        self.branch = branch or BranchOptions()
        self.policy_version = policy_version
        self.tokenizer = policy.tokenizer if isinstance(policy, TokenPolicy) else None
        self.caching = isinstance(policy, CachingTokenPolicy)
        self.serial = next(_collections)  # keeps cache keys apart across collections sharing a policy
        self.queue = deque((g, m, 0) for g in range(n_groups) for m in range(group_size))
        self.free = list(range(pool.num_envs))[::-1]
        self.live: dict[int, _Live] = {}
        self.done: dict[int, list[Episode | None]] = {g: [None] * group_size for g in range(n_groups)}
        self.first_observation: dict[int, str] = {}
        self.tasks_seen: dict[int, int] = {}
        self.action_sources: Counter[str] = Counter()
        self.metrics = dict.fromkeys(COUNTED_METRICS, 0.0)
        self.ledger = FailureLedger(retries, self.metrics, self._group_seed, "episode")
        self.finished_episodes = 0
        self.total_episodes = n_groups * group_size

    def _group_seed(self, g: int) -> int:
        return group_seed(self.seed, self.first_group + g)

    def run(self) -> list[Group]:
        try:
            while self.queue or self.live:
                self._start_waiting_episodes()
                if self.live:
                    self._advance_one_turn()
        finally:
            self._release(list(self.live.values()))
        return [self._group(g, episodes) for g, episodes in self.done.items() if g not in self.ledger.dropped]

    def _release(self, episodes: list[_Live]) -> None:
        """Free the policy's caches of episodes that ended (or are abandoned)."""
        if self.caching and episodes:
            self.policy.release([ep.cache_key for ep in episodes])

    # -- starting and ending episodes -----------------------------------------------------------------

    def _start_waiting_episodes(self) -> None:
        starting: dict[int, tuple[int, int, int]] = {}
        while self.queue and self.free:
            g, m, attempt = self.queue.popleft()
            if g not in self.ledger.dropped:
                starting[self.free.pop()] = (g, m, attempt)
        options = {"split": self.split}
        requests = {slot: (self._group_seed(g), options if self.tasks is None else
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

    def _fail(self, g: int, m: int, attempt: int, slot: int, cause: str, *, retry: bool = True,
              by_env: bool = True) -> None:
        """Free `slot`, record the failure (`FailureLedger.fail`), and replay the episode or drop its group."""
        ep = self.live.pop(slot, None)
        if ep is not None:
            self._release([ep])
        self.free.append(slot)
        dropped_before = g in self.ledger.dropped
        # a branched collection cannot replay one member: its branches were forked from that member's env
        if self.ledger.fail(g, m, attempt, cause, retry=retry and not self.branch.enabled, by_env=by_env):
            self.queue.appendleft((g, m, attempt + 1))
        elif not dropped_before:
            for other_slot in [s for s, ep in self.live.items() if ep.group == g]:
                self._release([self.live.pop(other_slot)])
                self.free.append(other_slot)
            self._report_progress(self.group_size - sum(e is not None for e in self.done[g][:self.group_size]))

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
            seed=self._group_seed(ep.group), turns=tuple(ep.turns), end=end, won=won,
            row_starts=tuple(ep.row_starts), answer=ep.answer if answer is None else str(answer),
            final_observation=final.observation, parent=ep.parent, branch_turn=ep.branch_turn)
        if ep.parent is None:
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
        if self.branch.enabled:
            self._start_branches()
        episodes = list(self.live.values())
        for ep in episodes:
            if ep.starts_row:
                ep.row_starts.append(len(ep.turns))
                ep.context = []
            ep.context += ep.pending_ids
        version = None if self.policy_version is None else self.policy_version()  # may load new weights
        start = time.perf_counter()
        actions = self._generate(episodes) if self.tokenizer is not None else self._act(episodes)
        model_time = (time.perf_counter() - start) / len(episodes)
        self.metrics["model_time"] += model_time * len(episodes)
        stepping: dict[int, tuple[_Live, _Action]] = {}
        for ep, action in zip(episodes, actions):
            if ep.group in self.ledger.dropped:  # a member failed just before: its slot is free already
                continue
            if isinstance(action, PolicyError):
                self._fail(ep.group, ep.member, ep.attempt, ep.slot, f"policy: {action}", by_env=False)
            elif isinstance(action, _NoRoom):
                self._end_without_room(ep, action)
            else:
                stepping[ep.slot] = (ep, action)
        results = self.pool.step({slot: action.text for slot, (_, action) in stepping.items()})
        for slot, (ep, action) in stepping.items():
            if ep.group in self.ledger.dropped:
                continue
            result = results[slot]
            self.metrics["env_time"] += result.seconds
            if result.error is not None:
                self._fail(ep.group, ep.member, ep.attempt, slot, f"step {len(ep.turns)}: {result.error}")
                continue
            invalid = bool(result.info.get("invalid_action", False))
            ep.turns.append(Turn(
                observation=ep.observation, action=action.text, reward=result.reward,
                state_key=ep.info["state_key"], invalid_action=invalid, finish=action.finish,
                obs_ids=tuple(ep.pending_ids), action_ids=tuple(action.ids), logprobs=tuple(action.logprobs),
                env_time=result.seconds, model_time=model_time, prompt_tokens=action.prompt_tokens,
                completion_tokens=action.completion_tokens, policy_version=version))
            self._count_turn(action, invalid)
            full = action.finish is FinishReason.CONTEXT
            played = len(ep.turns) + (ep.branch_turn or 0)  # a branch's turns continue its root's
            if result.done or full or (self.max_turns is not None and played >= self.max_turns):
                end = (EpisodeEnd.TERMINATED if result.terminated else EpisodeEnd.TRUNCATED if result.truncated
                       else EpisodeEnd.CONTEXT if full else EpisodeEnd.MAX_TURNS)
                self.metrics["context_full"] += end is EpisodeEnd.CONTEXT
                self._finish(ep, end, result)
                continue
            ep.context += action.ids
            ep.pending_ids, ep.starts_row = ep.chat.advance(action.ids, action.text, result.observation)
            ep.observation, ep.info = result.observation, result.info

    def _start_branches(self) -> None:
        """Fork each root episode about to play one of its branch turns into `branch.k` branch episodes."""
        for ep in [e for e in self.live.values() if e.parent is None]:
            turn = len(ep.turns)
            if not self.branch.branches_before(turn, ep.branch_points):
                continue
            ep.branch_points += 1
            prompt = ([] if ep.starts_row else ep.context) + ep.pending_ids  # the branch's first row: all of it
            for _ in range(self.branch.k):
                slot = self.free.pop() if self.free else self.pool.add_slot()
                forked = self.pool.fork(ep.slot, slot)
                self.metrics["env_time"] += forked.seconds
                self.metrics["fork_time"] += forked.seconds
                if forked.error is not None:
                    self.free.append(slot)
                    raise BranchingFailed(f"branching {self.env_name} before turn {turn}: {forked.error}")
                member = len(self.done[ep.group])
                self.done[ep.group].append(None)
                key = (self.serial, ep.group, member, 0)
                if self.caching and hasattr(self.policy, "copy_cache"):
                    self.policy.copy_cache(ep.cache_key, key)
                self.live[slot] = _Live(ep.group, member, 0, slot, ep.chat.fork(), ep.info, ep.observation, prompt,
                                        True, key, answer=ep.answer, parent=ep.member, branch_turn=turn)
                self.metrics["branches"] += 1

    def _end_without_room(self, ep: _Live, no_room: _NoRoom) -> None:
        """The prompt fills the context before the policy could write: the episode ends after its last turn."""
        if not ep.turns:
            budget = context_budget(self.policy, self.max_context_tokens)
            size = f" ({no_room.prompt_tokens} tokens)" if no_room.prompt_tokens else ""
            limit = f"the context budget of {budget} tokens" if budget else "the policy's context window"
            self._fail(ep.group, ep.member, ep.attempt, ep.slot,
                       f"context: the first prompt{size} does not fit {limit}"
                       + (f": {no_room.detail}" if no_room.detail else ""), retry=False)
            return
        self.metrics["context_full"] += 1
        self._finish(ep, EpisodeEnd.CONTEXT, EnvResult(observation=ep.observation, info=ep.info))

    def _count_turn(self, action: _Action, invalid: bool) -> None:
        self.metrics["turns"] += 1
        self.metrics["generated_tokens"] += action.completion_tokens or 0
        self.metrics["prompt_tokens"] += action.prompt_tokens or 0
        self.metrics["empty_actions"] += action.finish is FinishReason.EMPTY
        self.metrics["cut_off_actions"] += action.finish is FinishReason.LENGTH
        self.metrics["invalid_actions"] += invalid
        if action.source:
            self.action_sources[action.source] += 1

    def _generate(self, episodes: list[_Live]) -> list[_Action | _NoRoom]:
        """One batched `generate` per distinct room for all `episodes` (a token policy).

        An episode's room is `max_new_tokens`, or less where its context nears
        the budget; a completion cut by a smaller room ends with
        `FinishReason.CONTEXT`, and a context with no room gets no call.
        """
        limit, budget = self.sampling.max_new_tokens, context_budget(self.policy, self.max_context_tokens)
        rooms = [limit if budget is None else min(limit, budget - len(ep.context)) for ep in episodes]
        completions: list[Completion | None] = [None] * len(episodes)
        by_room: dict[int, list[int]] = {}
        for i, room in enumerate(rooms):
            if room >= 1:
                by_room.setdefault(room, []).append(i)
        for room, rows in by_room.items():
            params = self.sampling if room == limit else dataclasses.replace(self.sampling, max_new_tokens=room)
            prompts = [episodes[i].context for i in rows]
            if self.caching:
                done = self.policy.generate(prompts, params, cache_keys=[episodes[i].cache_key for i in rows])
            else:
                done = self.policy.generate(prompts, params)
            for i, completion in zip(rows, done):
                if room < limit and completion.finish_reason == "length":
                    completion = dataclasses.replace(completion, finish_reason="context")
                completions[i] = completion
        actions: list[_Action | _NoRoom] = []
        for ep, c in zip(episodes, completions):
            if c is None or (c.finish_reason == "context" and not c.token_ids):  # the policy's own check agreed
                actions.append(_NoRoom(len(ep.context)))
                continue
            self.metrics["cached_prompt_tokens"] += c.cached_tokens
            continues_row = len(ep.turns) > ep.row_starts[-1]
            self.metrics["cache_misses"] += self.caching and continues_row and c.cached_tokens == 0
            actions.append(_Action(c.text, list(c.token_ids), list(c.logprobs), finish_of(c.finish_reason, c.text),
                                   len(ep.context), len(c.token_ids)))
        return actions

    def _act(self, episodes: list[_Live]) -> list[_Action | _NoRoom | PolicyError]:
        """One batched `act` for all `episodes` (a text policy); replies are held to the context budget
        by the usage they report (the budget is read after the call: an endpoint learns its window then)."""
        requests = [TextRequest(tuple(ep.chat.prompt_messages()), ep.info,
                                oracle=functools.partial(self.pool.oracle_action, ep.slot),
                                sample_action=functools.partial(self.pool.sample_action, ep.slot))
                    for ep in episodes]
        try:
            answers = self.policy.act(requests)
        except PolicyError as exc:
            answers = [exc] * len(episodes)
        budget = context_budget(self.policy, self.max_context_tokens)
        actions: list[_Action | _NoRoom | PolicyError] = []
        for answer in answers:
            reply = TextReply(answer) if isinstance(answer, str) else answer
            if isinstance(reply, ContextOverflow):
                actions.append(_NoRoom(None, str(reply)))
            elif isinstance(reply, PolicyError):
                actions.append(reply)
            elif not isinstance(reply, TextReply):
                actions.append(PolicyError(f"act returned {type(reply).__name__}, expected str or TextReply"))
            else:
                actions.append(_text_action(reply, budget))
        return actions


def finish_of(finish_reason: str, text: str) -> FinishReason:
    """A completion's finish reason as the rollout records it (an empty reply is EMPTY unless the context cut it)."""
    if finish_reason == "context":
        return FinishReason.CONTEXT
    if not text.strip():
        return FinishReason.EMPTY
    return FinishReason.LENGTH if finish_reason == "length" else FinishReason.STOP


def _text_action(reply: TextReply, budget: int | None) -> _Action | _NoRoom:
    """A text policy's reply as an action, held to `budget` by the usage it reports.

    A prompt of `budget` tokens or more leaves no room (the reply is not played);
    a reply whose prompt and completion pass `budget` is played as the episode's
    last action, with `FinishReason.CONTEXT`.
    """
    finish = finish_of(reply.finish_reason, reply.text)
    prompt, completion = reply.prompt_tokens, reply.completion_tokens
    if budget is not None and prompt is not None:
        if prompt >= budget:
            return _NoRoom(prompt)
        if prompt + (completion or 0) > budget:
            finish = FinishReason.CONTEXT
    return _Action(reply.text, [], [], finish, prompt, completion, reply.source)


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
    max_context_tokens: int | None = None,
    on_episode: Callable[[int, int], None] | None = None,
    first_group: int = 0,
    branch: BranchOptions | None = None,
    policy_version: Callable[[], int] | None = None,
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
    caps episodes (end `MAX_TURNS`) on top of the env's own limit;
    `max_context_tokens` caps prompt plus completion for every policy (see
    the module docstring: Context). `on_episode(finished, total)` is called as
    episodes end. `first_group` makes this call one shard of a larger
    collection: group g resets with seed `group_seed(seed, first_group + g)`, so
    shards played by data-parallel ranks together reset exactly the groups one
    call of all of them would. `branch` plays branch episodes from forked states
    (see the module docstring and `envgym.branching`); it is refused for an
    `openai:` endpoint policy (`BranchingRefused`). `policy_version()`, called
    before each turn's generation, returns the version of the policy's weights,
    recorded in each `Turn.policy_version`; it may change the weights
    (asynchronous training hands the engine new weights between turns this way).
    """
    if n_groups < 0 or group_size < 1 or first_group < 0:
        raise ValueError(f"need n_groups >= 0, group_size >= 1 and first_group >= 0, got {n_groups}, {group_size} "
                         f"and {first_group}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if tasks is not None and len(tasks) != n_groups:
        raise ValueError(f"tasks names {len(tasks)} tasks for {n_groups} groups; give one per group")
    if max_context_tokens is not None and max_context_tokens < 1:
        raise ValueError(f"max_context_tokens must be >= 1, got {max_context_tokens}")
    if not isinstance(policy, TokenPolicy) and not hasattr(policy, "act"):
        raise TypeError(f"{type(policy).__name__} is neither a TokenPolicy (generate/score/tokenizer) "
                        "nor a TextPolicy (act)")
    if branch is not None and branch.enabled:
        branch.check()
        check_branchable_policy(policy)
    env_name = _env_name(env)
    own_pool = pool is None
    if own_pool:
        pool = EnvPool(env, num_envs or default_num_envs(backend, n_groups * group_size, env), backend=backend)
    started = time.perf_counter()
    try:
        collector = _Collector(env_name, policy, pool, n_groups=n_groups, group_size=group_size, split=split,
                               seed=seed, sampling=sampling or SamplingParams(), context=context, window=window,
                               observation_role=observation_role, max_turns=max_turns, retries=retries, tasks=tasks,
                               max_context_tokens=max_context_tokens, on_episode=on_episode,
                               first_group=first_group, branch=branch, policy_version=policy_version)
        groups = collector.run()
    finally:
        if own_pool:
            pool.close()
    metrics = {**collector.metrics, "groups": float(len(groups)),
               "episodes": float(sum(len(g.episodes) for g in groups)),
               "env_workers": 0.0 if pool.backend == "sync" else float(pool.num_envs),
               "wall_time": time.perf_counter() - started}
    return RolloutResult(groups, metrics, collector.ledger.failures, dict(collector.action_sources))
