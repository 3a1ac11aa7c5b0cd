"""The episodes a training run keeps for `envgym view`: a sample of each logged iteration, annotated.

The files and their format are `envgym.run_files`'s.

Each stored turn carries `Turn.annotations`:

    advantage       float        the estimator's advantage for the turn (what the loss weighted its tokens by)
    intrinsic       float        the turn-reward model's reward (only with `turn_reward.kind` set)
    anchor_size     int          turns of the group acting from the same state_key, itself included
    new_logprobs    list[float]  the updated policy's log-probability of each action id, computed after the
                                 iteration's update the way the loss computes it; exp(new - Turn.logprobs)
                                 is the per-token ratio the next update would start from
    obs_tokens      list[str]    each of `obs_ids` decoded on its own (the viewer needs no tokenizer)
    action_tokens   list[str]    the same for `action_ids`

Disk use is bounded by the config: ceil(iterations / every) + 1 samples of `groups * group_size`
episodes each (the quickstart's default, 2 groups of 8 every iteration, is about 0.1 MB a sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envgym.run_files import write_sample
from envgym.trajectory import Group

if TYPE_CHECKING:
    import torch

    from envgym.rollout import EpisodeFailure
    from envgym.trainers.batch import RolloutBatch
    from envgym.trainers.config import TrainConfig


def is_due(config: TrainConfig, iteration: int) -> bool:
    """Whether iteration `iteration` (1-based) keeps a sample: the first, every `every`-th, and the last."""
    every = config.log_episodes.every
    if every == 0 or config.log_episodes.groups == 0:
        return False
    return iteration == 1 or iteration % every == 0 or iteration == config.iterations


def log_episode_sample(out_dir: str | Path, config: TrainConfig, iteration: int, batch: RolloutBatch,
                       advantages: torch.Tensor, failures: Sequence[EpisodeFailure], model: Any,
                       tokenizer: Any, groups_collected: int | None = None) -> Path | None:
    """Annotate and write the sample of `iteration` if it is due; call it after the update.

    `advantages` holds one value per turn of `batch.turns`; `batch.turns.intrinsic`, if set, the
    turn-reward model's; `failures` are the rollout's; `model` is the updated policy;
    `groups_collected` the groups of the whole iteration (default `batch`'s: more under torchrun,
    where `batch` is rank 0's share). Returns the written path, or None.
    """
    if not is_due(config, iteration):
        return None
    kept = batch.groups[:config.log_episodes.groups]
    num_turns = sum(len(e.turns) for g in kept for e in g.episodes)  # the groups' turns lead the packed order
    intrinsic = batch.turns.intrinsic
    groups = annotate(kept, advantages[:num_turns].tolist(),
                      None if intrinsic is None else intrinsic[:num_turns].tolist(),
                      policy_logprobs(model, kept, config.optim.micro_batch_tokens), tokenizer)
    return write_sample(out_dir, iteration, groups, failures=[asdict(f) for f in failures],
                        groups_collected=len(batch.groups) if groups_collected is None else groups_collected,
                        fmt=config.log_episodes.format)


def annotate(groups: Sequence[Group], advantages: Sequence[float], intrinsic: Sequence[float] | None,
             new_logprobs: Sequence[Sequence[float]], tokenizer: Any) -> list[Group]:
    """`groups` with the annotations of the module docstring added to every turn (values in packed turn order)."""
    turn_ids = [t.obs_ids + t.action_ids for g in groups for e in g.episodes for t in e.turns]
    vocab = {i: tokenizer.decode([i]) for i in {i for ids in turn_ids for i in ids}}
    position = 0
    annotated = []
    for group in groups:
        episodes = []
        for episode, sizes in zip(group.episodes, group.anchor_sizes()):
            turns = []
            for turn, anchor_size in zip(episode.turns, sizes):
                notes = {"advantage": float(advantages[position]), "anchor_size": anchor_size,
                         "new_logprobs": [float(x) for x in new_logprobs[position]],
                         "obs_tokens": [vocab[i] for i in turn.obs_ids],
                         "action_tokens": [vocab[i] for i in turn.action_ids]}
                if intrinsic is not None:
                    notes["intrinsic"] = float(intrinsic[position])
                turns.append(replace(turn, annotations={**turn.annotations, **notes}))
                position += 1
            episodes.append(replace(episode, turns=tuple(turns)))
        annotated.append(replace(group, episodes=tuple(episodes)))
    if position != len(advantages):
        raise ValueError(f"got {len(advantages)} advantages for {position} turns")
    return annotated


def policy_logprobs(model: Any, groups: Sequence[Group], micro_batch_tokens: int) -> list[list[float]]:
    """log pi(a) of each action id under `model`, one list per turn in packed order (the loss's computation)."""
    import torch

    from envgym.trainers.batch import RolloutBatch
    from envgym.trainers.losses import sampled_logprobs

    batch = RolloutBatch.from_groups(groups)
    per_turn: list[list[float]] = [[] for _ in range(batch.turns.num_turns)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for micro in batch.micro_batches(max_tokens=micro_batch_tokens):
                micro = micro.to(device)
                logprobs, _ = sampled_logprobs(model, micro)
                for turn, value in zip(micro.sampled_turns.tolist(), logprobs.tolist()):
                    per_turn[turn].append(value)
    finally:
        model.train(was_training)
    return per_turn
