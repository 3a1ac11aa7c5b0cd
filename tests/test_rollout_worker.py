"""Rollouts that overlap the update (`rollout.max_staleness: k`) and the PPO ratio of a stale batch."""

import os
import signal

import pytest
import torch

from envgym.trainers import Trainer, config_from_dict
from envgym.trainers.batch import RolloutBatch
from envgym.trainers.losses import sampled_logprobs
from envgym.trainers.rollout_worker import RolloutWorkerFailed

MICRO = {"iterations": 3, "threads": 1,
         "env": {"id": "games/Maze-v0", "kwargs": {"size": 3}, "max_turns": 3, "show_admissible": True},
         "rollout": {"n_groups": 2, "group_size": 2, "max_new_tokens": 2, "context": "window", "window": 0},
         "optim": {"epochs": 1, "micro_batch_tokens": 1024, "lr": 1e-2}, "eval": {"every": 10, "episodes": 4},
         "checkpoint": {"every": 10}}


def micro(tmp_path, overrides=()):
    return config_from_dict({**MICRO, "out_dir": str(tmp_path / "run")}, overrides)


def test_a_stale_batch_is_corrected_against_its_own_behaviour_logprobs(tmp_path):
    trainer = Trainer(micro(tmp_path))
    try:
        batch = RolloutBatch.from_groups(trainer.collect().groups, pad_token_id=trainer.policy.pad_token_id)
        advantages = torch.randn(batch.turns.num_turns, generator=torch.Generator().manual_seed(0))  # any signal
        trainer.update(batch, advantages)  # the policy moves on; the batch keeps the logprobs that sampled it
        trainer.iteration += 1
        with torch.no_grad():
            now = torch.cat([sampled_logprobs(trainer.model, m)[0] for m in batch.micro_batches()])
        behaviour = torch.tensor([x for e in batch.episodes for t in e.turns for x in t.logprobs])
        expected = float(torch.exp(now - behaviour).mean())
        # the update changed the policy: a ratio against logprobs recomputed now would be 1
        assert float((now - behaviour).abs().max()) > 1e-2 and abs(expected - 1.0) > 1e-4
        metrics = trainer.update(batch, advantages)  # the batch is now one update stale
        # with a correction the ratio is taken against the trainer's logprobs at the start of the update
        # (1 on its single step) and the staleness goes into the capped importance weight instead
        trainer.config.algorithm.correction, trainer.config.algorithm.correction_cap = "tis", 1.05
        with torch.no_grad():
            now = torch.cat([sampled_logprobs(trainer.model, m)[0] for m in batch.micro_batches()])
        corrected = trainer.update(batch, advantages)
    finally:
        trainer.close()
    assert metrics["loss/ratio"] == pytest.approx(expected, rel=1e-5)
    assert metrics["loss/corrected_fraction"] == 0 and metrics["loss/is_weight"] == 1
    assert corrected["loss/ratio"] == pytest.approx(1.0, abs=1e-6)
    rho = torch.exp(now - behaviour)
    assert corrected["loss/is_weight"] == pytest.approx(float(rho.clamp(max=1.05).mean()), rel=1e-5)
    assert corrected["loss/corrected_fraction"] == pytest.approx(float((rho > 1.05).float().mean()))
    assert 0 < corrected["loss/corrected_fraction"] < 1
    gap = now - behaviour  # the engine (here the policy an update ago) against the trainer
    assert corrected["rollout/logprob_diff_max"] == pytest.approx(float(gap.abs().max()), rel=1e-4)
    assert corrected["rollout/engine_kl_k3"] == pytest.approx(float((torch.exp(gap) - gap - 1).mean()), rel=1e-4)


@pytest.mark.parametrize("k", [1, 3])
def test_sleep_mode_is_refused_when_the_engine_generates_during_the_update(tmp_path, k):
    message = rf"enable_sleep_mode .* rollout.max_staleness: {k} the engine generates during"
    with pytest.raises(ValueError, match=message):
        micro(tmp_path, [f"rollout.max_staleness={k}", "rollout.backend=vllm",
                         "rollout.vllm={enable_sleep_mode: true}"])


def test_a_correction_cap_below_one_fails_validation(tmp_path):
    with pytest.raises(ValueError, match=r"algorithm.correction_cap must be >= 1, got 0.5"):
        micro(tmp_path, ["algorithm.correction=tis", "algorithm.correction_cap=0.5"])


@pytest.mark.slow
def test_asynchronous_rollouts_are_at_most_k_updates_stale_and_a_dead_worker_stops_the_run(tmp_path):
    trainer = Trainer(micro(tmp_path, ["rollout.max_staleness=2", "iterations=4"]))
    try:
        history = trainer.fit()
        rl = [m for m in history if m["phase"] == "rl"]
        # the first batch is made on the spot; batches 1 and 2 are asked for with it and start on the same
        # weights (update 0 has not ended when batch 1 starts): no turn is more than 2 updates stale
        assert rl[0]["rollout/staleness_max"] == 0
        assert all(m["rollout/staleness_max"] <= 2 for m in rl) and max(m["rollout/staleness_max"] for m in rl) >= 1
        for m in rl:
            histogram = [m[f"rollout/staleness_{s}"] for s in range(3)]
            assert sum(histogram) == pytest.approx(1.0)
            assert m["rollout/staleness"] == pytest.approx(sum(s * f for s, f in enumerate(histogram)))
            assert m["time/trainer_wait"] >= 0 and m["time/engine_wait"] >= 0 and m["time/weight_publish_wait"] >= 0
        assert all(m["train/episodes"] == 4 for m in rl)
        worker = trainer.rollout_worker._process
        assert worker.is_alive()

        trainer.config.iterations = 10
        os.kill(worker.pid, signal.SIGKILL)
        worker.join()
        with pytest.raises(RolloutWorkerFailed, match=r"rollout worker process died \(killed by SIGKILL"):
            trainer.train_iteration()
    finally:
        trainer.close()
    assert not worker.is_alive()
