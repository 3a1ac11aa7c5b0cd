"""One PPO update on a fixed batch, in one process or as one rank of a torchrun world (a helper of test_distributed).

    torchrun --nproc_per_node 2 tests/distributed_update.py GROUPS.pt OUT_DIR VARIANT [VARIANT ...]

Each rank loads the same pickled groups, keeps its share (`DataParallel.shard`),
runs the turn-reward model and the advantages on the union as `Trainer.train_iteration`
does, then one `Trainer.update`; rank 0 writes the policy's (and any PRM's) weights
and the update's metrics to OUT_DIR/VARIANT.pt.

The update is one optimizer step (one epoch, one minibatch), and the gradient it
takes is recorded too. Every loss term has a gradient: the batch's behaviour
logprobs are those of a perturbed policy (so ratios differ from 1 and some are
clipped), and the KL reference differs from the policy (a perturbed reference, or
LoRA adapters that start away from zero).
"""

from __future__ import annotations

import dataclasses
import os
import random
import sys
from pathlib import Path

import torch

from envgym.rollout import collect_groups
from envgym.trainers import Trainer, config_from_dict
from envgym.trainers.advantages import compute_advantages
from envgym.trainers.batch import RolloutBatch

BASE = {"iterations": 1, "threads": 1, "out_dir": "unused",
        "env": {"id": "games/Maze-v0", "kwargs": {"size": 3}, "max_turns": 3, "show_admissible": True},
        # a small token budget: several micro-batches per rank, a different number on each
        "rollout": {"n_groups": 4, "group_size": 3, "max_new_tokens": 2, "context": "window", "window": 0},
        "optim": {"epochs": 1, "minibatches": 1, "micro_batch_tokens": 160, "lr": 1e-3},
        "loss": {"kl_coef": 0.1, "entropy_coef": 0.01}, "eval": {"episodes": 2}}

#: name -> config overrides. Each runs under the strategy its name starts with (one process ignores it).
VARIANTS = {
    "ddp": ["distributed.strategy=ddp"],
    "fsdp": ["distributed.strategy=fsdp"],
    "ddp-lora": ["distributed.strategy=ddp", "model.lora.r=4"],
    "fsdp-lora": ["distributed.strategy=fsdp", "model.lora.r=4"],
    # PRIME whitens over the batch and trains a reward model: both must see the union
    "ddp-prime": ["distributed.strategy=ddp", "algorithm.estimator=prime", "algorithm.options={}",
                  "turn_reward.kind=implicit_prm", "turn_reward.prm_update=before"],
}


def config(variant: str, out_dir: str):
    return config_from_dict({**BASE, "out_dir": out_dir}, VARIANTS[variant])


def fixed_groups(out_dir: str, seed: int = 5) -> list:
    """A batch of the tiny policy's own episodes (its sampled ids), with outcomes drawn at random so that episodes
    of a group differ (the untrained policy loses them all) and behaviour logprobs off the policy's by N(0, 0.2)."""
    trainer = Trainer(config("ddp", out_dir))
    try:
        torch.manual_seed(seed)
        rollout = collect_groups(trainer.env_factory, trainer.policy, pool=trainer.pool, **trainer.collect_options(0))
    finally:
        trainer.close()
    rng = random.Random(seed)
    return [dataclasses.replace(g, episodes=tuple(_stale(e, rng.random() < 0.5, rng) for e in g.episodes))
            for g in rollout.groups]


def _stale(episode, won: bool, rng: random.Random):
    turns = [dataclasses.replace(t, logprobs=tuple(x + rng.gauss(0.0, 0.2) for x in t.logprobs))
             for t in episode.turns]
    turns[-1] = dataclasses.replace(turns[-1], reward=float(won))
    return dataclasses.replace(episode, turns=tuple(turns), won=won)


def _move_away_from_the_reference(trainer) -> None:
    """Perturb (the same way on every rank) what makes the KL term zero at the start: the frozen reference's
    weights, or a LoRA policy's B matrices (whose reference is the base with adapters off)."""
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        if trainer.reference is not None:
            for p in trainer.reference.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=generator))
        else:
            for name, p in trainer.model.named_parameters():
                if "lora_B" in name:
                    p.add_(0.02 * torch.randn(p.shape, generator=generator))
            trainer.dp.load_replica()


def _record_gradients(trainer) -> dict:
    """The gradient of each optimizer step, whole (gathered from FSDP2 shards), filled in as the trainer steps."""
    recorded = {}

    def record(optimizer, args, kwargs):
        for name, p in trainer.train_module.named_parameters():
            if p.grad is not None:
                grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
                recorded[name.removeprefix("module.")] = grad.detach().clone()

    trainer.optimizer.register_step_pre_hook(record)
    return recorded


def one_update(variant: str, groups: list, out_dir: str) -> dict:
    """Weights after one update of `variant` on this rank's share of `groups` (everything on rank 0)."""
    trainer = Trainer(config(variant, out_dir))
    try:
        _move_away_from_the_reference(trainer)
        initial = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        mine = trainer.dp.shard(len(groups))
        batch = RolloutBatch.from_groups(groups[mine.start:mine.stop], pad_token_id=trainer.policy.pad_token_id)
        if trainer.turn_reward is not None:
            intrinsic, _ = trainer.turn_reward.turn_rewards(batch)
            batch = batch.with_intrinsic(intrinsic)
        union, rows = trainer.dp.union_turns(batch.turns)
        cfg = trainer.config.algorithm
        advantages = compute_advantages(union, cfg.estimator, preset=cfg.preset, **cfg.options)[rows]
        gradients = _record_gradients(trainer)
        metrics = trainer.update(batch, advantages)
        result = {"model": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, "initial": initial,
                  "gradient": gradients,
                  "metrics": metrics, "world_size": trainer.dp.world_size, "strategy": trainer.dp.strategy}
        if trainer.turn_reward is not None:
            result["prm"] = {k: v.detach().clone() for k, v in trainer.turn_reward.prm.state_dict().items()}
        return result
    finally:
        trainer.close()


def main(groups_file: str, out_dir: str, *variants: str) -> None:
    groups = torch.load(groups_file, weights_only=False)
    if "RANK" in os.environ:  # one process group for all variants (each Trainer uses it, and leaves it open)
        torch.distributed.init_process_group("gloo")
    try:
        for variant in variants:
            result = one_update(variant, groups, out_dir)
            if os.environ.get("RANK", "0") == "0":
                torch.save(result, Path(out_dir) / f"{variant}.pt")
    finally:
        # a gloo group left for the interpreter's exit to tear down can abort the process (SIGABRT, "terminate
        # called without an active exception") once in a while
        if torch.distributed.is_initialized():
            torch.distributed.barrier()  # no rank tears its connections down while another still uses them
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
    if "RANK" in os.environ:
        # every result is written and the group is gone; skip the interpreter's teardown, where a C++ thread
        # object still joinable at static destruction aborts a rank now and then ("terminate called without
        # an active exception", SIGABRT) after its work is done
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
