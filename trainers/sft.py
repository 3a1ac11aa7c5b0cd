"""Supervised warm start: behaviour cloning of the env's oracle (`env.unwrapped.oracle_action()`).

Demonstrations are episodes of the `scripted` policy on the train split,
collected by the same `collect_groups` as RL and tokenised through the same
chat renderer (`envgym.chat.EpisodeChat`, the policy tokenizer's template,
the same context mode), so the rows look exactly like the rows RL trains on.
Each oracle action becomes the tokens a policy would sample for it (its text
tokens plus end-of-sequence), and only those tokens carry loss.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from envgym.chat import EpisodeChat, encode
from envgym.policies import ScriptedPolicy
from envgym.pool import EnvPool
from envgym.rollout import collect_groups
from envgym.trainers.batch import RolloutBatch, TokenBatch
from envgym.trainers.config import TrainConfig
from envgym.trainers.losses import sampled_logprobs
from envgym.trajectory import Episode, Group, Turn


def tokenize_episode(episode: Episode, tokenizer: Any, instructions: str, *, context: str, window: int,
                     tools: Sequence[Mapping[str, Any]] | None = None) -> Episode:
    """`episode` (played by a text policy) with the token fields a token policy would have recorded.

    `tools` are the env's tool schemas (rendered as the rollout renders them). The logprobs
    are placeholders (0.0): demonstrations train by likelihood, not by ratio.
    """
    chat = EpisodeChat(tokenizer, instructions, context=context, window=window, tools=tools)
    pending, starts_row = chat.start(episode.turns[0].observation)
    turns, row_starts = [], []
    for t, turn in enumerate(episode.turns):
        if starts_row:
            row_starts.append(t)
        action_ids = (*encode(tokenizer, turn.action), tokenizer.eos_token_id)
        turns.append(Turn(turn.observation, turn.action, turn.reward, turn.state_key, turn.invalid_action,
                          obs_ids=tuple(pending), action_ids=action_ids, logprobs=(0.0,) * len(action_ids)))
        if t + 1 < len(episode.turns):
            pending, starts_row = chat.advance(action_ids, turn.action, episode.turns[t + 1].observation)
    return Episode(episode.env_id, episode.split, episode.task, episode.seed, tuple(turns), episode.end,
                   episode.won, tuple(row_starts), episode.answer, episode.final_observation)


def demonstration_batch(config: TrainConfig, env_factory: Callable[[], Any], tokenizer: Any,
                        pool: EnvPool | None = None) -> RolloutBatch:
    """`config.sft.episodes` oracle episodes on the train split (a seed disjoint from RL's), packed for training.

    Envs are stepped through `pool` when given (the run's pool), else in this process.
    """
    result = collect_groups(env_factory, ScriptedPolicy(), n_groups=config.sft.episodes, group_size=1,
                            split="train", seed=-1 - config.seed, context=config.rollout.context,
                            window=config.rollout.window, max_turns=config.env.max_turns, pool=pool,
                            retries=config.rollout.retries)
    if not result.groups:
        causes = sorted({f.cause for f in result.failures})[:3]
        raise ValueError(f"no oracle demonstrations of {config.env.id}: {causes}")
    with env_factory() as env:
        instructions = env.unwrapped.instructions
        tools = env.reset(seed=0)[1].get("tools")
    groups = [Group(g.env_id, g.split, g.task, g.seed,
                    tuple(tokenize_episode(e, tokenizer, instructions, context=config.rollout.context,
                                           window=config.rollout.window, tools=tools) for e in g.episodes))
              for g in result.groups]
    return RolloutBatch.from_groups(groups, pad_token_id=tokenizer.pad_token_id or 0)


def _shuffled_batches(batch: RolloutBatch, batch_tokens: int, generator: torch.Generator) -> Iterator[TokenBatch]:
    """Endless micro-batches of `batch_tokens`: each pass over the rows in a fresh random order."""
    while True:
        yield from batch.micro_batches(torch.randperm(batch.num_rows, generator=generator).tolist(), batch_tokens)


def supervised_steps(model: torch.nn.Module, batch: RolloutBatch, *, steps: int, lr: float, batch_tokens: int,
                     seed: int, on_step: Callable[[int, float], None] | None = None) -> dict[str, float]:
    """`steps` AdamW steps of mean token cross-entropy on random micro-batches of `batch`; returns loss and speed."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    batches = _shuffled_batches(batch, batch_tokens, torch.Generator().manual_seed(seed))
    model.train()
    device = next(model.parameters()).device
    started, tokens, loss_value = time.perf_counter(), 0, float("nan")
    for step in range(steps):
        micro = next(batches).to(device)
        logprobs, _ = sampled_logprobs(model, micro)
        loss = -logprobs.mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"SFT step {step}: loss is {float(loss)}; lower sft.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        tokens += int(micro.attention_mask.sum())
        loss_value = float(loss.detach())
        if on_step is not None:
            on_step(step, loss_value)
    model.eval()
    seconds = time.perf_counter() - started
    return {"sft/loss": loss_value, "sft/steps": float(steps), "sft/tokens_per_s": tokens / max(seconds, 1e-9),
            "sft/seconds": seconds}
