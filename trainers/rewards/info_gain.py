"""IGPO's information-gain turn rewards (docs/algorithms.md, "IGPO").

log p_t = mean_j log pi(a*_j | context before action t), the length-normalised
log-probability of the gold answer a* written as the assistant's reply,
teacher-forced through the policy's `score` (no grad). Turn t < L-1 earns
IG = p_{t+1} - p_t (`prob_diff`) or log p_{t+1} - log p_t (`log_prob_diff`);
the last turn earns nothing here, the estimator gives it the outcome.
"""

from __future__ import annotations

import math
from typing import Any

from envgym.chat import encode
from envgym.trainers.config import TurnRewardOptions
from envgym.trainers.batch import RolloutBatch
from envgym.trajectory import Episode


def answer_logprob_per_turn(policy: Any, episodes: list[Episode], template: str) -> list[list[float]]:
    """For each episode, mean log pi(answer tokens | context before action t) for t = 0..L-1, in one batched call."""
    tokenizer = policy.tokenizer
    prompts, continuations, owners = [], [], []
    for e, episode in enumerate(episodes):
        if episode.answer is None:
            raise ValueError(f"turn_reward.kind info_gain needs the gold answer in info['answer'], but {episode.env_id} "
                             "gives none; use it on known-answer envs (QA, search, games/GuessNumber-v0)")
        answer = (*encode(tokenizer, template.format(answer=episode.answer)), tokenizer.eos_token_id)
        for r, turns in enumerate(episode.rows()):
            for t in turns:
                prompts.append(episode.row_ids(r, upto_turn=t))
                continuations.append(answer)
                owners.append(e)
    scores = policy.score(prompts, continuations)
    per_episode: list[list[float]] = [[] for _ in episodes]
    for e, logprobs in zip(owners, scores):
        per_episode[e].append(sum(logprobs) / len(logprobs))
    return per_episode


class InfoGainReward:
    """Information gain of each turn under the current policy (IGPO). Has no trainable state."""

    def __init__(self, policy: Any, options: TurnRewardOptions):
        self.policy, self.kind, self.template = policy, options.info_gain, options.answer_template

    def turn_rewards(self, batch: RolloutBatch) -> tuple[list[float], dict[str, float]]:
        """One information gain per turn of `batch`, in its packed order, and summary metrics."""
        episodes = batch.episodes
        intrinsic: list[float] = []
        first, last = [], []
        for logp in answer_logprob_per_turn(self.policy, episodes, self.template):
            value = logp if self.kind == "log_prob_diff" else [math.exp(x) for x in logp]
            intrinsic += [b - a for a, b in zip(value, value[1:])] + [0.0]
            first.append(math.exp(logp[0]))
            last.append(math.exp(logp[-1]))
        return intrinsic, {"info_gain/mean": sum(intrinsic) / max(len(intrinsic), 1),
                           "info_gain/answer_prob_first": sum(first) / len(first),
                           "info_gain/answer_prob_last": sum(last) / len(last)}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
