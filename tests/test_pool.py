"""EnvPool: concurrent stepping, checked results, timeouts and crash recovery in every backend."""

import os
import time

import pytest

import envgym
from envgym.pool import EnvPool, cores_of_this_process, default_num_envs

FAULTS = {
    "Raises": "RaisesOnStep", "Hangs": "HangsOnStep", "Slow": "SlowStep", "Crashes": "CrashesOnStep",
    "NonStr": "NonStrObservation", "NoStateKey": "MissingStateKey", "NoOracle": "NoOracle",
}
for name, cls in FAULTS.items():
    envgym.register(f"faulty/{name}-v0", f"faulty_envs:{cls}", max_turns=10)

RESET = {"split": "test", "task": 0}


@pytest.fixture(params=["sync", "process"])
def backend(request):
    return request.param


def test_pool_steps_envs_like_the_env_itself(backend):
    with EnvPool("games/GuessNumber-v0", 2, backend=backend) as pool:
        first = pool.reset({0: (1, RESET), 1: (1, {"split": "test", "task": 1})})
        assert first[0].error is None and first[0].instructions.startswith("I am thinking")
        assert first[0].info["state_key"] == "1-100" and first[0].task == 0
        stepped = pool.step({0: "50", 1: "nonsense"})
        env = envgym.make("games/GuessNumber-v0")
        env.reset(seed=1, options=RESET)
        obs, reward, *_ = env.step("50")
        assert stepped[0].observation == obs and stepped[0].reward == reward
        assert stepped[1].info["invalid_action"] is True
        secret = int(env.unwrapped.secret)
        assert pool.oracle_action(0) == env.unwrapped.oracle_action()
        done = pool.step({0: str(secret)})[0]
        assert done.terminated and done.reward == 1.0


@pytest.mark.parametrize("env_id,cause", [
    ("faulty/Raises-v0", "RuntimeError: the simulator exploded"),
    ("faulty/NonStr-v0", "str observation, got dict"),
])
def test_faulty_step_is_reported_with_its_cause_and_the_slot_recovers(backend, env_id, cause):
    with EnvPool(env_id, 1, backend=backend) as pool:
        assert pool.reset({0: (0, RESET)})[0].error is None
        result = pool.step({0: "50"})[0]
        assert result.error is not None and cause in result.error
        again = pool.step({0: "50"})[0]
        assert "reset it first" in again.error
        assert pool.reset({0: (0, RESET)})[0].error is None  # a fresh env


def test_missing_state_key_fails_reset(backend):
    with EnvPool("faulty/NoStateKey-v0", 1, backend=backend) as pool:
        assert "state_key" in pool.reset({0: (0, RESET)})[0].error


def test_process_backend_kills_a_hung_step_and_restarts_the_worker():
    with EnvPool("faulty/Hangs-v0", 2, backend="process", step_timeout=0.5) as pool:
        pool.reset({0: (0, RESET), 1: (0, RESET)})
        start = time.monotonic()
        results = pool.step({0: "50", 1: "50"})
        assert time.monotonic() - start < 5
        assert all("timed out after 0.5s" in r.error for r in results.values()), results
        assert pool.restarts == 2
        assert pool.reset({0: (0, RESET)})[0].error is None


def test_process_backend_restarts_a_crashed_worker():
    with EnvPool("faulty/Crashes-v0", 1, backend="process") as pool:
        pool.reset({0: (0, RESET)})
        result = pool.step({0: "50"})[0]
        assert "died during step (exit code 3)" in result.error
        assert pool.reset({0: (0, RESET)})[0].error is None


def test_sync_backend_reports_a_step_past_its_timeout():
    with EnvPool("faulty/Slow-v0", 1, backend="sync", step_timeout=0.05) as pool:
        pool.reset({0: (0, RESET)})
        assert "past the timeout of 0.05s" in pool.step({0: "50"})[0].error


def test_episode_timeout_fails_the_next_step(backend):
    with EnvPool("games/GuessNumber-v0", 1, backend=backend, episode_timeout=0.2) as pool:
        pool.reset({0: (0, RESET)})
        assert pool.step({0: "50"})[0].error is None
        time.sleep(0.3)
        assert "past its timeout of 0.2s" in pool.step({0: "50"})[0].error


def test_oracle_errors_reach_the_caller(backend):
    with EnvPool("faulty/NoOracle-v0", 1, backend=backend) as pool:
        pool.reset({0: (0, RESET)})
        with pytest.raises(Exception, match="no oracle"):
            pool.oracle_action(0)


@pytest.mark.parametrize("backend", ["sync", "process"])
def test_sample_action_is_drawn_where_the_env_lives(backend):
    with EnvPool("games/GuessNumber-v0", 1, backend=backend, make_kwargs={"high": 1000}) as pool, \
            EnvPool("games/Maze-v0", 1, backend=backend) as maze:
        pool.reset({0: (0, RESET)})
        maze.reset({0: (0, RESET)})
        draws = [pool.sample_action(0, seed) for seed in (1, 2, 1)]
        assert draws[0] == draws[2] != draws[1] and all(1 <= int(d) <= 1000 for d in draws)
        assert maze.sample_action(0, 1) is None  # Maze lists admissible actions and has no sampler


def test_close_closes_every_env_and_is_idempotent():
    closed = []

    class Tracked(envgym.envs.games.guess.GuessNumber):
        def close(self):
            closed.append(self)

    pool = EnvPool(Tracked, 3)
    pool.reset({i: (0, RESET) for i in range(3)})
    pool.close()
    pool.close()
    assert len(closed) == 3
    with pytest.raises(RuntimeError, match="closed"):
        pool.step({0: "1"})


def test_bad_arguments_are_clear_errors():
    with pytest.raises(KeyError, match="unknown env id"):
        EnvPool("games/Maze-v9", 1)
    with pytest.raises(ValueError, match="backend"):
        EnvPool("games/Maze-v0", 1, backend="threads")


@pytest.mark.slow
def test_ray_backend_steps_and_survives_a_crash():
    pytest.importorskip("ray")
    with EnvPool("faulty/Crashes-v0", 1, backend="ray", step_timeout=20) as pool:
        assert pool.reset({0: (0, RESET)})[0].error is None
        assert "died" in pool.step({0: "50"})[0].error
        assert pool.reset({0: (0, RESET)})[0].error is None
    with EnvPool("games/GuessNumber-v0", 2, backend="ray") as pool:
        pool.reset({0: (0, RESET), 1: (0, RESET)})
        results = pool.step({0: "50", 1: "50"})
        assert results[0].observation == results[1].observation and results[0].error is None


def test_a_slot_near_its_episode_timeout_does_not_cut_the_others_short():
    with EnvPool("faulty/Slow-v0", 2, backend="process", step_timeout=5, episode_timeout=0.5) as pool:
        pool.reset({0: (0, RESET)})
        time.sleep(0.35)
        pool.reset({1: (0, RESET)})  # slot 1 starts later: it has ~0.5 s left, slot 0 only ~0.15 s
        results = pool.step({0: "50", 1: "50"})  # each step takes 0.2 s
        assert "timed out" in results[0].error or "past its timeout" in results[0].error
        assert results[1].error is None


envgym.register("faulty/SlowDeclared-v0", "faulty_envs:SlowStep", max_turns=10, step_seconds=0.2)


def test_auto_keeps_cheap_envs_in_process_and_sends_declared_slow_ones_to_workers():
    import functools

    with EnvPool("games/GuessNumber-v0", 2, backend="auto") as pool:
        assert pool.backend == "sync" and "declares no step_seconds" in pool.choice
    with EnvPool("faulty/SlowDeclared-v0", 1, backend="auto") as pool:
        assert pool.backend == "sync" and "cannot step in parallel" in pool.choice
    # a factory's spec is read from the env it builds: the spec registered only here reaches the workers too
    factory = functools.partial(envgym.make, "faulty/SlowDeclared-v0")
    with EnvPool(factory, 2, backend="auto") as pool:
        expected = "process" if cores_of_this_process() >= 2 else "sync"
        assert pool.backend == expected, pool.choice
        results = pool.reset({0: (0, RESET), 1: (0, RESET)})
        assert all(r.error is None for r in results.values())
        stepped = pool.step({0: "50", 1: "50"})  # 0.2 s each
        assert all(r.error is None for r in stepped.values())
        if expected == "process":  # concurrent, not one after the other: the two sleeps overlap
            (start_0, end_0), (start_1, end_1) = (stepped[slot].info["slept"] for slot in (0, 1))
            assert max(start_0, start_1) < min(end_0, end_1), stepped


def test_worker_slots_share_the_machine_among_the_ranks_on_it(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_num_envs("process", 1000) == 64 and default_num_envs("sync", 1000) == 1000
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # as torchrun --nproc-per-node 4 sets it
    assert cores_of_this_process() == 4 and default_num_envs("process", 1000) == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert cores_of_this_process() == 1 and default_num_envs("process", 10) == 4


def test_step_seconds_must_be_a_duration():
    with pytest.raises(ValueError, match="step_seconds of 'faulty/Negative-v0' must be >= 0"):
        envgym.register("faulty/Negative-v0", "faulty_envs:SlowStep", step_seconds=-1)
