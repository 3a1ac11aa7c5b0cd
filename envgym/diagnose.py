"""`envgym diagnose ID`: what to know about an env before training on it, from cheap scripted play.

Three scripted policies play `groups` groups of `group_size` episodes each (one seed and task per
group, as in training) through `envgym.rollout.collect_groups`: `random` (a random legal move,
see `RandomPolicy`), `oracle` (the env's expert) and `oracle 50%` (the expert's move half the time, else a
random one: a stand-in for a policy that is learning). For each:

- the anchor hit rate: the share of turns whose `state_key` recurs within their group (anchor
  bucket size > 1). GiGPO's step-level advantage is 0 on every other turn, so near 0 it has
  nothing to group and reduces to GRPO. Turn 0 always hits (a group starts from one state, and
  that bucket only repeats the episode-level signal), so the rate from turn 1 on is shown too, and
  a warning is given when random play hits on fewer than 5% of those turns. A deterministic
  oracle in a deterministic env repeats one path G times, so its rate is 1 by construction;
- the range of per-turn rewards and of episode returns, the success rate, and turns to win.

Branching probe (`branch_k` > 0): one episode of each of `groups` tasks is played by
`branch_policy` ("mix": the oracle 50% policy, or "random"), and before every turn its env is forked
(`Env.fork`) into `branch_k` continuations played by the same policy; the mean return of a state's
continuations is its Monte Carlo value V_t (V after the last turn = 0). A turn's swing
`r_t + V_{t+1} - V_t` is how much its action moved the expected outcome (VinePPO's advantage). Shown:
the spread of V across an episode's turns (max - min, mean over episodes), the mean |swing|, and
how much of an episode's total |swing| its most decisive turn holds, and where it falls. Values that
barely move mean turn-level credit (vineppo, spo_tree, GiGPO) has little to assign: a warning says so.

Reward-hacking probes: on a few train tasks the oracle plays up to a turn (the first turn, and
the turn of its own last move), where a probe reply replaces its action. None of these replies
should earn reward; one that does (reward > 0 on that turn) is a finding: a warning with an
example. The probes (`PROBES`): empty, repeated (the right action written 16 times: an env that
pays it parses leniently, so a policy collapsing into repetition is not penalised), format-only,
overlong, and no admissible action.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import mean
from typing import Any

import numpy as np

from envgym.branching import BranchOptions
from envgym.policies import PolicyError, RandomPolicy, ScriptedPolicy, TextReply, TextRequest
from envgym.rollout import collect_groups
from envgym.trajectory import Episode, Group

#: Probe name -> (what it is, the reply given the oracle's action for the probed state).
PROBES: dict[str, tuple[str, Callable[[str], str]]] = {
    "empty": ("an empty reply", lambda oracle: ""),
    "repeated": ("the right action written 16 times", lambda oracle: " ".join([oracle] * 16)),
    "format-only": ("empty action and answer tags", lambda oracle: "<action></action>\n<answer></answer>"),
    "overlong": ("20,000 characters of filler, no action",
                 lambda oracle: "Let me think about this carefully before I act. " * 420),
    "no admissible action": ("a sentence naming no action",
                             lambda oracle: "I am not sure what to do here, so I will wait and think it over."),
}


def anchor_hit_rate(groups: Sequence[Group], from_turn: int = 0) -> float:
    """The share of turns (from turn `from_turn` of each episode on) whose state_key occurs more than once in their
    group; 0 when there are no such turns."""
    sizes = [size for group in groups for episode in group.anchor_sizes() for size in episode[from_turn:]]
    return sum(size > 1 for size in sizes) / len(sizes) if sizes else 0.0


@dataclass(frozen=True)
class PolicyStats:
    """What one scripted policy's episodes show; ranges are (min, max), None without episodes."""

    policy: str
    episodes: int
    success_rate: float
    anchor_hit_rate: float
    anchor_hit_rate_after_first: float | None  # the same over turns 1, 2, ... (None: every episode is one turn)
    turn_reward: tuple[float, float] | None
    episode_return: tuple[float, float] | None
    turns_to_win: tuple[float, int, int] | None  # mean, min, max over won episodes
    invalid_rate: float
    failures: list[str] = field(default_factory=list)  # causes of failed episodes (e.g. no oracle)


@dataclass(frozen=True)
class ProbeResult:
    """One probe reply tried at `turns` states; `findings` are the ones that earned reward."""

    probe: str
    turns: int
    flagged_invalid: int
    max_reward: float | None
    findings: list[str]


@dataclass(frozen=True)
class BranchingStats:
    """The branching probe's Monte Carlo values (see the module docstring); None fields: no episode had turns."""

    policy: str
    k: int
    episodes: int
    value_spread: float | None  # mean over episodes of max_t V_t - min_t V_t
    mean_swing: float | None  # mean over turns of |r_t + V_{t+1} - V_t|
    decisive_share: float | None  # mean over episodes of max_t |swing_t| / sum_t |swing_t| (episodes with a swing)
    decisive_position: float | None  # mean over those episodes of (argmax_t |swing_t|) / (L - 1), 0 = first turn
    values_by_turn: list[float]  # V_t averaged over the episodes that reached turn t
    failures: list[str] = field(default_factory=list)


def turn_values(group: Group) -> list[float]:
    """V_t of the root episode of a branched `group` (see `branching_stats`), its turns 0..L-1, then 0."""
    root = group.episodes[0]
    returns: dict[int, list[float]] = {}
    for e in group.episodes[1:]:
        returns.setdefault(e.branch_turn, []).append(e.total_return)
    return [mean(returns[t]) if t in returns else root.total_return - sum(x.reward for x in root.turns[:t])
            for t in range(len(root.turns))] + [0.0]


def branching_stats(policy: str, k: int, groups: Sequence[Group], failures: list[str]) -> BranchingStats:
    """Value spread and turn swings over branched groups of one root episode each."""
    spreads, swings, shares, positions = [], [], [], []
    by_turn: dict[int, list[float]] = {}
    for group in groups:
        root, values = group.episodes[0], turn_values(group)
        swing = [abs(t.reward + values[i + 1] - values[i]) for i, t in enumerate(root.turns)]
        spreads.append(max(values[:-1]) - min(values[:-1]))
        swings += swing
        if sum(swing) > 0:
            shares.append(max(swing) / sum(swing))
            positions.append(swing.index(max(swing)) / max(1, len(swing) - 1))
        for t, v in enumerate(values[:-1]):
            by_turn.setdefault(t, []).append(v)
    return BranchingStats(policy, k, len(groups), mean(spreads) if spreads else None,
                          mean(swings) if swings else None, mean(shares) if shares else None,
                          mean(positions) if positions else None,
                          [mean(by_turn[t]) for t in sorted(by_turn)], failures)


@dataclass
class Diagnosis:
    """The result of `diagnose`: per-policy statistics and probe results; `warnings` says what to look at."""

    env_id: str
    group_size: int
    policies: list[PolicyStats]
    probes: list[ProbeResult]
    branching: BranchingStats | None = None

    @property
    def warnings(self) -> list[str]:
        notes = [f"probe '{p.probe}' ({PROBES[p.probe][0]}) earned reward: {p.findings[0]}"
                 for p in self.probes if p.findings]
        random = next((s for s in self.policies if s.policy == "random"), None)
        later = random.anchor_hit_rate_after_first if random else None
        if later is not None and later < 0.05:
            notes.append(f"random play revisits a state of its group on {later:.1%} of "
                         "turns after the first: GiGPO's step level has little to group (it reduces to GRPO); a "
                         "coarser state_key would give it anchors")
        b = self.branching
        if b is not None and b.mean_swing is not None and b.mean_swing < 0.01:
            notes.append(f"the Monte Carlo values of {b.policy} play barely change from turn to turn (mean |swing| "
                         f"{b.mean_swing:.3f}): no turn decides the outcome more than another, so turn-level credit "
                         "(vineppo, spo_tree, GiGPO) has little to assign")
        return notes

    def render(self) -> str:
        """A plain-text report: one line per policy, one per probe, then the warnings."""
        lines = [f"envgym diagnose {self.env_id} (groups of {self.group_size} episodes)",
                 f"  {'policy':<11} {'episodes':>8} {'success':>8} {'anchor hits':>11} {'after t0':>9} "
                 f"{'turn reward':>16} {'return':>16} {'turns to win':>15} {'invalid':>8}"]
        for s in self.policies:
            if not s.episodes:
                lines.append(f"  {s.policy:<11} no episodes: {s.failures[0] if s.failures else 'none played'}")
                continue
            lines.append(f"  {s.policy:<11} {s.episodes:>8} {s.success_rate:>8.1%} {s.anchor_hit_rate:>11.1%} "
                         f"{_share(s.anchor_hit_rate_after_first):>9} "
                         f"{_range(s.turn_reward):>16} {_range(s.episode_return):>16} {_turns(s.turns_to_win):>15} "
                         f"{s.invalid_rate:>8.1%}")
        lines += self._render_branching()
        lines.append("  reward-hacking probes (no probe reply should earn reward):")
        for p in self.probes:
            verdict = f"EARNED REWARD (max {p.max_reward:g})" if p.findings else "no reward"
            lines.append(f"    {p.probe:<21} {verdict}; {p.turns} turns probed, {p.flagged_invalid} flagged invalid")
        lines += [f"  WARNING {w}" for w in self.warnings] or ["  -> no warnings"]
        return "\n".join(lines)


    def _render_branching(self) -> list[str]:
        b = self.branching
        if b is None:
            return []
        head = f"  branching probe ({b.policy} play, {b.k} continuations from every turn of {b.episodes} episodes)"
        if b.value_spread is None:
            return [f"{head}: no episodes: {b.failures[0] if b.failures else 'none played'}"]
        decisive = ("no turn moved the value" if b.decisive_share is None else
                    f"the most decisive turn holds {b.decisive_share:.0%} of an episode's |swing|, "
                    f"at {b.decisive_position:.0%} of the episode")
        values = ", ".join(f"t{t} {v:.2f}" for t, v in enumerate(b.values_by_turn[:12]))
        more = ", ..." if len(b.values_by_turn) > 12 else ""
        return [f"{head}:", f"    value spread per episode {b.value_spread:.3f} (max - min V_t); mean |swing| "
                            f"{b.mean_swing:.3f}; {decisive}", f"    mean V_t by turn: {values}{more}"]


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _range(bounds: tuple[float, float] | None) -> str:
    return "-" if bounds is None else f"[{bounds[0]:g}, {bounds[1]:g}]"


def _turns(stats: tuple[float, int, int] | None) -> str:
    return "-" if stats is None else f"{stats[0]:.1f} ({stats[1]}-{stats[2]})"


class OracleMix:
    """The oracle's action with probability `p_oracle`, else a random legal one (RandomPolicy)."""

    def __init__(self, p_oracle: float, seed: int = 0):
        self.p_oracle = p_oracle
        self.oracle, self.random = ScriptedPolicy(), RandomPolicy(seed)
        self.rng = np.random.default_rng(seed + 1)

    def act(self, requests: Sequence[TextRequest]) -> list[str | TextReply | PolicyError]:
        take_oracle = self.rng.random(len(requests)) < self.p_oracle
        oracle = self.oracle.act([r for r, o in zip(requests, take_oracle) if o])
        random = self.random.act([r for r, o in zip(requests, take_oracle) if not o])
        return [oracle.pop(0) if o else random.pop(0) for o in take_oracle]


class ProbePolicy:
    """The oracle until turn `at_turn[first observation]` (default 0), then `reply(oracle's action)`."""

    def __init__(self, reply: Callable[[str], str], at_turn: Mapping[str, int]):
        self.reply, self.at_turn = reply, at_turn
        self.oracle = ScriptedPolicy()

    def act(self, requests: Sequence[TextRequest]) -> list[str | PolicyError]:
        answers: list[str | PolicyError] = []
        for request in requests:
            oracle = self.oracle.act([request])[0]
            if isinstance(oracle, PolicyError):
                answers.append(oracle)
                continue
            turn = sum(m["role"] == "assistant" for m in request.messages)
            first = next(m["content"] for m in request.messages if m["role"] != "system")
            answers.append(self.reply(oracle) if turn >= self.at_turn.get(first, 0) else oracle)
        return answers


def _policy_stats(name: str, groups: list[Group], failures: list[str]) -> PolicyStats:
    episodes: list[Episode] = [e for g in groups for e in g.episodes]
    if not episodes:
        return PolicyStats(name, 0, 0.0, 0.0, None, None, None, None, 0.0, failures)
    rewards = [t.reward for e in episodes for t in e.turns]
    returns = [e.total_return for e in episodes]
    won = [len(e.turns) for e in episodes if e.won]
    return PolicyStats(
        policy=name, episodes=len(episodes), success_rate=mean(e.won for e in episodes),
        anchor_hit_rate=anchor_hit_rate(groups),
        anchor_hit_rate_after_first=anchor_hit_rate(groups, from_turn=1) if any(len(e.turns) > 1 for e in episodes)
        else None,
        turn_reward=(min(rewards), max(rewards)),
        episode_return=(min(returns), max(returns)), turns_to_win=(mean(won), min(won), max(won)) if won else None,
        invalid_rate=mean(t.invalid_action for e in episodes for t in e.turns), failures=failures)


def diagnose(env_id: str, *, env_kwargs: Mapping[str, Any] | None = None, groups: int = 8, group_size: int = 8,
             probe_tasks: int = 3, seed: int = 0, max_turns: int | None = None, branch_k: int = 8,
             branch_policy: str = "mix") -> Diagnosis:
    """Play the scripted policies, the branching probe and the probes of the module docstring on `env_id`
    (train split)."""
    if branch_k < 0 or branch_policy not in ("mix", "random"):
        raise ValueError(f"need branch_k >= 0 (0: no branching probe) and branch_policy 'mix' or 'random', got "
                         f"{branch_k} and {branch_policy!r}")
    import envgym

    if groups < 1 or group_size < 2 or probe_tasks < 0:
        raise ValueError(f"need groups >= 1, group_size >= 2 (anchors recur across episodes) and probe_tasks >= 0, "
                         f"got {groups}, {group_size}, {probe_tasks}")
    envgym.spec(env_id)  # an unknown id fails before any work
    env = functools.partial(envgym.make, env_id, **dict(env_kwargs or {}))
    play = functools.partial(collect_groups, env, split="train", seed=seed, retries=0)
    stats = []
    for name, policy in (("random", RandomPolicy(seed)), ("oracle 50%", OracleMix(0.5, seed)),
                         ("oracle", ScriptedPolicy())):
        result = play(policy, n_groups=groups, group_size=group_size, max_turns=max_turns)
        stats.append(_policy_stats(name, result.groups, [f.cause for f in result.failures]))
    branching = None
    if branch_k:
        policy = OracleMix(0.5, seed) if branch_policy == "mix" else RandomPolicy(seed)
        limit = max_turns or envgym.spec(env_id).max_turns or 100
        result = play(policy, n_groups=groups, group_size=1, max_turns=max_turns,
                      branch=BranchOptions(k=branch_k, turns=list(range(limit))))
        name = "oracle 50%" if branch_policy == "mix" else "random"
        branching = branching_stats(name, branch_k, result.groups, [f.cause for f in result.failures])
    return Diagnosis(env_id, group_size, stats, _probe(play, probe_tasks, max_turns), branching)


def _probe(play: Callable[..., Any], tasks: int, max_turns: int | None) -> list[ProbeResult]:
    """Each probe at turn 0 and at the oracle's last turn of the first `tasks` train tasks."""
    if tasks == 0:
        return []
    oracle = play(ScriptedPolicy(), n_groups=tasks, group_size=1, tasks=list(range(tasks)), max_turns=max_turns)
    if not oracle.groups:
        return []  # no oracle: the policy stats say why
    last_turn = {g.episodes[0].turns[0].observation: len(g.episodes[0].turns) - 1 for g in oracle.groups}
    longest = max(last_turn.values())
    results = []
    for name, (_, reply) in PROBES.items():
        probed: list[tuple[str, float, bool, str]] = []  # (observation, reward, invalid, reply)
        first_turn = {obs: 0 for obs in last_turn}
        for at_turn, turns in ((first_turn, 1), (last_turn, longest + 1)):
            result = play(ProbePolicy(reply, at_turn), n_groups=len(oracle.groups), group_size=1,
                          tasks=[g.task for g in oracle.groups], max_turns=turns)
            for group in result.groups:
                episode = group.episodes[0]
                t = at_turn.get(episode.turns[0].observation, 0)
                # a one-move task's last turn is its first: probed once
                if t < len(episode.turns) and (at_turn is first_turn or t > 0):
                    turn = episode.turns[t]
                    probed.append((turn.observation, turn.reward, turn.invalid_action, turn.action))
        findings = [f"reward {reward:g} for {_clip(action)} after {_clip(observation)}"
                    for observation, reward, _, action in probed if reward > 0]
        results.append(ProbeResult(name, len(probed), sum(invalid for _, _, invalid, _ in probed),
                                   max((r for _, r, _, _ in probed), default=None), findings))
    return results


def _clip(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= width else flat[:width] + "...")
