"""Asynchronous rollouts with a staleness bound (`rollout.max_staleness: k`, trainers/rollout_worker.py)."""

import pytest
import torch

from envgym.trainers import Trainer, config_from_dict
from envgym.trainers.rollout_worker import RolloutWorker

RUN = {"iterations": 3, "threads": 1, "model": {"name": "tiny-maze"},
       "env": {"id": "games/Maze-v0", "kwargs": {"size": 4, "view": "local"}, "max_turns": 4},
       "rollout": {"n_groups": 2, "group_size": 4, "max_new_tokens": 2, "context": "window", "window": 0},
       "algorithm": {"estimator": "gigpo", "options": {"invalid_penalty": 0.1}},
       "optim": {"epochs": 1, "micro_batch_tokens": 1024, "lr": 1e-2}, "eval": {"every": 2, "episodes": 4},
       "checkpoint": {"every": 10}, "sft": {"steps": 5, "episodes": 16, "lr": 1e-2}}  # a warm start: valid moves
TIMINGS = ("time/", "perf/", "sft/tokens_per_s", "sft/seconds")


def config(tmp_path, name, overrides=()):
    return config_from_dict({**RUN, "out_dir": str(tmp_path / name)}, overrides)


@pytest.mark.slow
def test_k0_through_the_rollout_worker_reproduces_the_synchronous_loop(tmp_path):
    """The worker with k = 0 waits for each update's weights before it collects: the same episodes, metrics and
    weights as the trainer sampling them itself."""
    results = []
    for name in ("sync", "worker"):
        trainer = Trainer(config(tmp_path, name))
        try:
            if name == "worker":  # the async machinery at k = 0 (the trainer itself uses it for k >= 1)
                trainer.rollout_worker = RolloutWorker(trainer.config, trainer.env_factory, episodes=8,
                                                       dtype=torch.float32)
            history = trainer.fit()
            weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        finally:
            trainer.close()
        results.append(([{k: v for k, v in m.items() if not k.startswith(TIMINGS)} for m in history], weights))
    (sync, sync_weights), (worker, worker_weights) = results
    rl = [m for m in sync if m["phase"] == "rl"]
    assert [m["rollout/staleness_max"] for m in rl] == [0, 0, 0]
    assert sum(m["loss/grad_norm"] > 1e-3 for m in rl) >= 2  # the policy moves: stale weights would show
    assert sync == worker
    assert sync_weights.keys() == worker_weights.keys()
    for name, tensor in sync_weights.items():
        assert torch.equal(tensor, worker_weights[name]), name
