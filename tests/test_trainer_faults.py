"""Training survives faulty envs: through the run's EnvPool a hung, crashed or exhausted env fails its episode,
with its cause, and never becomes a row; a run with nothing left to train on stops with a message."""

import pytest

import envgym
from envgym.pool import EnvPool
from envgym.rollout import group_seed
from envgym.trainers import Trainer, config_from_dict
from envgym.trainers.trainer import RolloutFailed

for name in ("HangsOnStep", "CrashesOnStep", "SegfaultsOnStep", "AllocatesOnStep", "FailOnSeed"):
    envgym.register(f"faulty-train/{name}-v0", f"faulty_envs:{name}", max_turns=4)

GUESS = {"iterations": 1, "threads": 1, "model": {"name": "tiny-guess"},
         "env": {"id": "games/GuessNumber-v0", "kwargs": {"low": 1, "high": 16}, "max_turns": 3},
         "rollout": {"n_groups": 2, "group_size": 2, "max_new_tokens": 2, "context": "window", "window": 0,
                     "pool": "process", "step_timeout": 2.0, "retries": 1},
         "optim": {"epochs": 1}, "eval": {"every": 1, "episodes": 4}, "checkpoint": {"every": 1}}


def trainer(tmp_path, env_id, **rollout):
    config = config_from_dict({**GUESS, "out_dir": str(tmp_path / "run"), "env": {**GUESS["env"], "id": env_id},
                               "rollout": {**GUESS["rollout"], **rollout}})
    return Trainer(config)


@pytest.mark.slow
@pytest.mark.parametrize("env_id, cause", [
    ("faulty-train/HangsOnStep-v0", "step timed out after 2s; the worker was killed and restarted"),
    ("faulty-train/CrashesOnStep-v0", "the worker process died during step (exit code 3)"),
])
def test_an_iteration_whose_every_group_fails_stops_with_the_causes(tmp_path, env_id, cause):
    run = trainer(tmp_path, env_id)
    try:
        with pytest.raises(RolloutFailed, match="iteration 0: every group of .* failed past its 1 retries") as info:
            run.train_iteration()
        assert cause in str(info.value)
    finally:
        run.close()


@pytest.mark.slow
def test_dropped_groups_are_counted_in_training_and_in_the_held_out_set(tmp_path):
    run = trainer(tmp_path, "faulty-train/FailOnSeed-v0", retries=0)  # odd seeds fail in reset, every time
    odd = [group_seed(0, g) % 2 for g in range(2)]  # training seed 0 at iteration 0, and EvalSettings.seed = 0
    assert odd == [0, 1]
    try:
        metrics = run.train_iteration()
        assert metrics["rollout/dropped_groups"] == 1 and metrics["train/episodes"] == 2
        held_out = run.evaluate()  # greedy on the 2-task test split: 2 episodes, the second dropped
        assert held_out["eval/episodes"] == 1 and held_out["eval/dropped_episodes"] == 1
        assert held_out["eval/success"] in (0.0, 0.5)  # over both planned episodes, the dropped one a loss
    finally:
        run.close()


@pytest.mark.parametrize("env_id, cause, limit", [
    ("faulty-train/SegfaultsOnStep-v0", "killed by SIGSEGV (segmentation fault)", None),
    ("faulty-train/AllocatesOnStep-v0", "out of memory (MemoryError", 512),
])
def test_pool_names_how_a_worker_died(env_id, cause, limit):
    with EnvPool(env_id, 1, backend="process", memory_limit_mb=limit) as pool:
        assert pool.reset({0: (0, {"split": "test", "task": 0})})[0].error is None
        result = pool.step({0: "8"})[0]
        assert cause in result.error
        assert pool.reset({0: (0, {"split": "test", "task": 0})})[0].error is None  # the slot recovered


def test_a_memory_cap_needs_worker_processes():
    with pytest.raises(ValueError, match="memory_limit_mb caps a worker process: it needs backend='process'"):
        EnvPool("games/GuessNumber-v0", 1, backend="sync", memory_limit_mb=512)


@pytest.mark.slow
def test_train_command_stops_with_one_line_and_exit_code_one(tmp_path, capsys):
    import yaml

    from envgym.cli import main

    recipe = tmp_path / "crash.yaml"
    recipe.write_text(yaml.safe_dump({**GUESS, "out_dir": str(tmp_path / "run"), "eval": {"every": 1, "episodes": 1},
                                      "env": {**GUESS["env"], "id": "faulty-train/CrashesOnStep-v0"}}))
    assert main(["train", str(recipe)]) == 1
    out = capsys.readouterr().out
    assert "envgym train: iteration 0: every group of faulty-train/CrashesOnStep-v0 failed" in out
    assert "exit code 3" in out and "Traceback" not in out
