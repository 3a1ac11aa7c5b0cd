"""IGPO's information-gain turn rewards (docs/algorithms.md, "IGPO").

log p_t = mean_j log pi(a*_j | context before action t, prefix), the length-
normalised log-probability of the tokens of the gold answer a* written as the
assistant's reply, teacher-forced through the policy's `score` (no grad). As in
IGPO's released code, the reply is the `answer_template` with the answer filled
in, the template's text before `{answer}` is forced as context (there: "Now
there's enough information to answer ... <answer>") and only the answer's own
tokens are scored: p_t then measures what the policy believes the answer is,
not whether it is about to answer (scoring the prefix too lets a turn earn
"information" by making the policy ready to answer). Turn t < L-1 earns
IG = p_{t+1} - p_t (`prob_diff`) or log p_{t+1} - log p_t (`log_prob_diff`);
the last turn earns nothing here, the estimator gives it the outcome.

Besides the rewards it reports what the signal looks like (`info_gain_profile`):
the mean IG of turns that changed the env's state (an informative question)
and of valid turns that left it as it was (a repeated or already-answered one),
and the correlation of an episode's summed IG with its outcome; a warning is
logged when redundant turns earn at least as much as informative ones for 5
iterations in a row (`health.FailureStreak`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from envgym.chat import encode
from envgym.trainers.config import TurnRewardOptions
from envgym.trainers.batch import RolloutBatch
from envgym.trainers.rewards.health import FailureStreak
from envgym.trajectory import Episode


def answer_tokens(tokenizer: Any, template: str, answer: str) -> tuple[list[int], list[int]]:
    """(forced prefix ids, scored answer ids) of `template` with `answer` filled in, tokenised as one reply."""
    before, marker, after = template.partition("{answer}")
    if not marker:
        raise ValueError(f"turn_reward.answer_template {template!r} has no '{{answer}}' placeholder")
    ids = encode(tokenizer, before + answer + after)
    start = len(encode(tokenizer, before)) if before else 0
    stop = len(ids) - (len(encode(tokenizer, after)) if after else 0)
    if ids[:start] != encode(tokenizer, before) or stop <= start:
        raise ValueError(f"turn_reward.answer_template {template!r} with answer {answer!r}: the answer does not "
                         "tokenise apart from the template's text; end the text before {answer} with a space or "
                         "newline, and check the answer is not empty")
    return ids[:start], ids[start:stop]


def answer_logprob_per_turn(policy: Any, episodes: list[Episode], template: str) -> list[list[float]]:
    """For each episode, mean log pi(answer tokens | context before action t, template prefix) for t = 0..L-1,
    in one batched call."""
    tokenizer = policy.tokenizer
    prompts, continuations, owners = [], [], []
    for e, episode in enumerate(episodes):
        if episode.answer is None:
            raise ValueError(f"turn_reward.kind info_gain needs the gold answer in info['answer'], but "
                             f"{episode.env_id} gives none; use it on known-answer envs (QA, search, "
                             "games/GuessNumber-v0)")
        prefix, answer = answer_tokens(tokenizer, template, episode.answer)
        for r, turns in enumerate(episode.rows()):
            for t in turns:
                prompts.append(episode.row_ids(r, upto_turn=t) + prefix)
                continuations.append(answer)
                owners.append(e)
    # shortest first: the policy pads each of its batches to its longest row, and one episode's prefixes differ
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(continuations[i]))
    scores: list[list[float]] = [[] for _ in prompts]
    for i, logprobs in zip(order, policy.score([prompts[i] for i in order], [continuations[i] for i in order])):
        scores[i] = logprobs
    per_episode: list[list[float]] = [[] for _ in episodes]
    for e, logprobs in zip(owners, scores):
        per_episode[e].append(sum(logprobs) / len(logprobs))
    return per_episode


def info_gain_profile(episodes: list[Episode], gains: list[list[float]]) -> dict[str, float]:
    """What the IG signal says about the turns of `episodes` (`gains[e][t]`: IG of turn t, the last turn's unused).

    - `info_gain/informative`: mean IG of non-final turns after which the state key changed;
    - `info_gain/redundant`: mean IG of valid non-final turns after which it did not (a repeated question,
      a move that undoes itself); invalid turns count in neither;
    - `info_gain/outcome_corr`: Pearson correlation over episodes of the summed IG with the outcome (won).
    Each is left out when the batch has nothing to measure it on.
    """
    informative, redundant, totals = [], [], []
    for episode, episode_gains in zip(episodes, gains):
        turns = episode.turns
        for t in range(len(turns) - 1):
            if turns[t + 1].state_key != turns[t].state_key:
                informative.append(episode_gains[t])
            elif not turns[t].invalid_action:
                redundant.append(episode_gains[t])
        totals.append(sum(episode_gains[:-1]))
    won = [float(e.won) for e in episodes]
    profile = {}
    if informative:
        profile["info_gain/informative"] = float(np.mean(informative))
    if redundant:
        profile["info_gain/redundant"] = float(np.mean(redundant))
    if np.std(totals) > 0 and np.std(won) > 0:
        profile["info_gain/outcome_corr"] = float(np.corrcoef(totals, won)[0, 1])
    return profile


class InfoGainReward:
    """Information gain of each turn under the current policy (IGPO). Has no trainable state."""

    def __init__(self, policy: Any, options: TurnRewardOptions):
        self.policy, self.kind, self.template = policy, options.info_gain, options.answer_template
        self.redundant_paid = FailureStreak(
            "info_gain/redundant_streak", "turns that left the env's state unchanged (repeated or already-answered "
            "questions) earn as much information gain as turns that changed it, so IGPO pays for wasted turns: the "
            "policy's probability of the answer is not tracking what it learnt. Check turn_reward.answer_template, "
            "or use gigpo where states recur")

    def turn_rewards(self, batch: RolloutBatch) -> tuple[list[float], dict[str, float]]:
        """One information gain per turn of `batch`, in its packed order, and summary metrics."""
        episodes = batch.episodes
        gains: list[list[float]] = []
        first, last = [], []
        for logp in answer_logprob_per_turn(self.policy, episodes, self.template):
            value = logp if self.kind == "log_prob_diff" else [math.exp(x) for x in logp]
            gains.append([b - a for a, b in zip(value, value[1:])] + [0.0])
            first.append(math.exp(logp[0]))
            last.append(math.exp(logp[-1]))
        intrinsic = [g for episode_gains in gains for g in episode_gains]
        profile = info_gain_profile(episodes, gains)
        informative, redundant = profile.get("info_gain/informative"), profile.get("info_gain/redundant")
        if informative is None or redundant is None:
            streak = self.redundant_paid.observe(None)
        else:
            streak = self.redundant_paid.observe(redundant >= informative,
                                                 f"{redundant:.3f} against {informative:.3f} now")
        return intrinsic, {"info_gain/mean": sum(intrinsic) / max(len(intrinsic), 1),
                           "info_gain/answer_prob_first": sum(first) / len(first),
                           "info_gain/answer_prob_last": sum(last) / len(last), **profile, **streak}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
