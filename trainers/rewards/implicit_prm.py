"""PRIME's implicit process reward model (docs/algorithms.md, "PRIME").

The PRM pi_phi starts as a copy of the policy; pi_ref is a frozen copy.
Token reward q_j = beta * (log pi_phi(y_j) - log pi_ref(y_j)) on each sampled
token; a turn's reward is the sum over its tokens. Each iteration pi_phi is
trained on the outcome labels only:

- `prm_loss: ce`:  L = BCE(sigmoid(sum_{j in episode} q_j), won);
- `prm_loss: dpo` (OPRL): L = -log sigmoid(r_w - r_l) over every (won, lost)
  pair of episodes in a group, r = sum_j q_j.

`prm_update: after` scores with the PRM, then updates it; `before` updates first, then scores.
Under N data-parallel ranks each rank scores its own episodes, and the PRM's
gradients are averaged over the ranks weighted by each rank's number of loss
terms, so every rank's PRM takes the step one process would on the union.

The PRM's health is measured on each iteration's fresh batch before its update:
`prm/pair_accuracy` is the fraction of (won, lost) episode pairs of a group that
it ranks the right way round (ties count half; 0.5 is chance whatever the success
rate), and `prm/reward_invalid_minus_valid` the mean turn reward of invalid turns
minus that of valid ones. A PRM exploited by the policy ranks below chance and
rewards invalid replies; a warning is logged when the ranking stays below chance
for 5 iterations in a row (`health.FailureStreak`). Under N ranks these two are
measured on rank 0's groups.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from envgym.trainers.batch import RolloutBatch, TokenBatch
from envgym.trainers.config import TurnRewardOptions
from envgym.trainers.losses import sampled_logprobs
from envgym.trainers.rewards.health import FailureStreak

MICRO_BATCH_TOKENS = 8192


class ImplicitPRM:
    """An implicit PRM initialised from `model` (copied twice: the trained PRM and the frozen reference)."""

    def __init__(self, model: torch.nn.Module, options: TurnRewardOptions, data_parallel: Any = None):
        self.data_parallel = data_parallel  # a trainers.distributed.DataParallel, or None in one process
        self.prm = copy.deepcopy(model)
        self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self.options = options
        self.optimizer = torch.optim.AdamW([p for p in self.prm.parameters() if p.requires_grad], lr=options.prm_lr)
        # a PRM that ranks a fresh batch's winners below its losers pays the wrong turns; PRIME then pushes
        # the policy away from what wins (at a high prm_lr the policy drifts to invalid replies)
        self.below_chance = FailureStreak(
            "prm/below_chance_streak", "the implicit PRM ranks fresh episodes below chance, so its turn rewards "
            "point away from winning. Lower turn_reward.prm_lr, try turn_reward.prm_update: before, or use an "
            "outcome estimator (grpo, gigpo)")

    def turn_rewards(self, batch: RolloutBatch) -> tuple[list[float], dict[str, float]]:
        """One process reward per turn of `batch`, in its packed order; the PRM trains on the outcomes too."""
        labels, episode_group = _episode_layout(batch)
        metrics: dict[str, float] = {}
        if self.options.prm_update == "before":
            metrics = self.update(batch, labels, episode_group)
        turn_reward = self._turn_rewards(batch)
        if self.options.prm_update == "after":
            metrics = self.update(batch, labels, episode_group)
        invalid = batch.turns.invalid
        if invalid.any() and not invalid.all():
            gap = turn_reward[invalid].mean() - turn_reward[~invalid].mean()
            metrics["prm/reward_invalid_minus_valid"] = float(gap)
        return turn_reward.tolist(), {**metrics, "prm/turn_reward_mean": float(turn_reward.mean())}

    def _token_rewards(self, micro: TokenBatch, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """q_j for the sampled tokens of `micro` (flat) and their turns."""
        micro = micro.to(next(self.prm.parameters()).device)
        with torch.no_grad():
            ref_logp, _ = sampled_logprobs(self.reference, micro)
        with torch.set_grad_enabled(grad):
            logp, _ = sampled_logprobs(self.prm, micro)
        return self.options.prm_beta * (logp - ref_logp), micro.sampled_turns

    def _turn_rewards(self, batch: RolloutBatch) -> torch.Tensor:
        self.prm.eval()
        total = torch.zeros(batch.turns.num_turns, dtype=torch.float64)
        for micro in batch.micro_batches(max_tokens=MICRO_BATCH_TOKENS):
            q, token_turn = self._token_rewards(micro, grad=False)
            total.index_add_(0, token_turn.cpu(), q.double().cpu())
        return total

    def update(self, batch: RolloutBatch, labels: torch.Tensor, episode_group: torch.Tensor) -> dict[str, float]:
        """One optimizer step of the PRM on the outcome labels of this iteration's episodes."""
        self.prm.train()
        self.optimizer.zero_grad(set_to_none=True)
        turn_episode = batch.turns.episode
        # The episode sums couple tokens across micro-batches: accumulate r_i with grad, then one backward.
        episode_reward = torch.zeros(len(labels), dtype=torch.float32)
        for micro in batch.micro_batches(max_tokens=MICRO_BATCH_TOKENS):
            q, token_turn = self._token_rewards(micro, grad=True)
            episode_reward = episode_reward.index_add(0, turn_episode[token_turn.cpu()], q.float().cpu())
        loss, terms = self._loss(episode_reward, labels, episode_group)
        distributed = self.data_parallel is not None and self.data_parallel.launched
        if loss.requires_grad and (terms or not distributed):
            loss.backward()
        if distributed:  # a collective: every rank joins and steps, even one with no loss terms
            self.data_parallel.average_gradients(self.prm, terms)
        if loss.requires_grad or distributed:
            torch.nn.utils.clip_grad_norm_(self.prm.parameters(), 1.0)
            self.optimizer.step()
        self.prm.eval()
        scores = episode_reward.detach()
        accuracy = ((scores > 0) == labels.bool()).float().mean()
        metrics = {"prm/loss": float(loss.detach()), "prm/accuracy": float(accuracy)}
        pair_accuracy = _pair_accuracy(scores, labels, episode_group)
        if pair_accuracy is not None:
            metrics["prm/pair_accuracy"] = pair_accuracy
        if pair_accuracy is None:
            return {**metrics, **self.below_chance.observe(None)}
        return {**metrics, **self.below_chance.observe(pair_accuracy < 0.5, f"pair accuracy {pair_accuracy:.2f} now")}

    def _loss(self, episode_reward: torch.Tensor, labels: torch.Tensor,
              episode_group: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The PRM loss, a mean, and the number of terms it averages (episodes, or (won, lost) pairs)."""
        if self.options.prm_loss == "ce":
            return F.binary_cross_entropy_with_logits(episode_reward, labels), len(labels)
        pairs = _winner_loser_pairs(labels, episode_group)
        if not bool(pairs.any()):
            return episode_reward.sum() * 0.0, 0  # no group with both outcomes: nothing to prefer
        margins = episode_reward[:, None] - episode_reward[None, :]
        return -F.logsigmoid(margins[pairs]).mean(), int(pairs.sum())

    def state_dict(self) -> dict[str, Any]:
        return {"prm": self.prm.state_dict(), "reference": self.reference.state_dict(),
                "optimizer": self.optimizer.state_dict(), "below_chance_streak": self.below_chance.streak}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prm.load_state_dict(state["prm"])
        self.reference.load_state_dict(state["reference"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.below_chance.streak = state.get("below_chance_streak", 0)  # absent from checkpoints written before it


def _winner_loser_pairs(labels: torch.Tensor, episode_group: torch.Tensor) -> torch.Tensor:
    """[E, E] mask of (winner, loser) episode pairs of one group."""
    same_group = episode_group[:, None] == episode_group[None, :]
    return same_group & (labels[:, None] > 0.5) & (labels[None, :] < 0.5)


def _pair_accuracy(scores: torch.Tensor, labels: torch.Tensor, episode_group: torch.Tensor) -> float | None:
    """Fraction of (won, lost) pairs within a group with the winner scored higher (ties half); None if no pair."""
    pairs = _winner_loser_pairs(labels, episode_group)
    if not bool(pairs.any()):
        return None
    margins = (scores[:, None] - scores[None, :])[pairs]
    return float(((margins > 0).float() + 0.5 * (margins == 0).float()).mean())


def _episode_layout(batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Outcome label (won) and group of each episode, indexed by episode id."""
    starts = batch.turns.turn == 0
    return (torch.tensor([float(e.won) for e in batch.episodes]), batch.turns.group[starts])
