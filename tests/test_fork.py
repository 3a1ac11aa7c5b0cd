"""Env.fork: copies and replays, through wrappers, across EnvPool slots in every backend, and its errors."""

import pytest

import envgym
from envgym.core import ReplayDiverged, fork_env
from envgym.pool import EnvPool
from envgym.wrappers import ActionExtraction, EnvMaker, InvalidActionPolicy, TurnLimit

envgym.register("fork/ReplaysDifferently-v0", "broken_envs:ReplaysDifferently", max_turns=10)


def oracle_steps(env, n):
    """`n` oracle steps; the observations."""
    return [env.step(env.unwrapped.oracle_action())[0] for _ in range(n)]


@pytest.mark.parametrize("env_id, by", [("games/Maze-v0", "copy"), ("toytext/FrozenLake-v0", "replay")])
def test_fork_has_the_same_future_and_leaves_the_original_alone(env_id, by):
    env = envgym.make(env_id)
    env.reset(seed=4)
    oracle_steps(env, 1)
    fork = env.fork()
    assert isinstance(fork, TurnLimit) and fork.env is not env.env and fork.turns == env.turns == 1
    assert bool(env.unwrapped.episode_state) == (by == "copy")
    fork_future = oracle_steps(fork, 3)
    assert env.turns == 1  # stepping the fork moved only the fork's wrapper
    assert oracle_steps(env, 3) == fork_future


def test_wrapper_state_is_copied_not_shared():
    env = InvalidActionPolicy(ActionExtraction(envgym.make("textworld/CoinCollector-v0")), penalty=0.5)
    obs, info = env.reset(seed=1)
    env.step("dance")  # invalid: counted
    fork = env.fork()
    assert fork.invalid_count == 1 and isinstance(fork.env, ActionExtraction)
    fork.step("dance")
    assert (fork.invalid_count, env.invalid_count) == (2, 1)
    move = info["admissible_actions"][0]
    assert fork.step(f"I will {move} now")[:2] == env.step(f"I will {move} now")[:2]
    fork.close()
    env.close()


def test_replay_reproduces_an_unseeded_reset():
    env = envgym.make("toytext/FrozenLake-v0")
    env.reset(seed=1)
    first, _ = env.reset()  # seed=None: the task comes from the stream as it stood
    fork = env.fork()
    assert fork.unwrapped.task == env.unwrapped.task
    assert [fork.step(a)[0] for a in ("down", "right")] == [env.step(a)[0] for a in ("down", "right")]


def test_a_fresh_env_forks_to_a_fresh_env():
    fork = envgym.make("toytext/FrozenLake-v0").fork()
    assert fork.reset(seed=2)[0] == envgym.make("toytext/FrozenLake-v0").reset(seed=2)[0]


def test_a_replay_that_diverges_names_the_env_and_the_step():
    env = envgym.make("fork/ReplaysDifferently-v0")
    env.reset(seed=0, options={"split": "test", "task": 0})
    env.step("50")
    env.step("20")
    with pytest.raises(ReplayDiverged, match=r"cannot fork fork/ReplaysDifferently-v0: .* diverged at step 0 "
                                             r"\(action '50'\).*not deterministic under replay"):
        fork_env(env)


def test_fork_refuses_what_is_not_an_envgym_env():
    import gymnasium

    with pytest.raises(TypeError, match="CartPoleEnv is not an envgym Env"):
        fork_env(gymnasium.make("CartPole-v1"))


@pytest.fixture(scope="module", params=["sync", "process", "ray"])
def pool_backend(request):
    if request.param == "ray":
        pytest.importorskip("ray")
    return request.param


@pytest.mark.parametrize("env_id", ["games/Maze-v0", "toytext/FrozenLake-v0"])
def test_pool_forks_an_episode_into_another_slot(pool_backend, env_id):
    with EnvPool(EnvMaker(env_id), 1, backend=pool_backend) as pool:
        pool.reset({0: (5, {"split": "test", "task": 1})})
        pool.step({0: pool.oracle_action(0) if "Maze" in env_id else "down"})
        assert pool.add_slot() == 1 and pool.num_envs == 2
        forked = pool.fork(0, 1)
        assert forked.error is None
        for _ in range(2):
            move = pool.oracle_action(0) if "Maze" in env_id else "right"
            results = pool.step({0: move, 1: move})
            assert results[0].error is None and results[1].error is None
            assert (results[0].observation, results[0].info["state_key"]) == \
                (results[1].observation, results[1].info["state_key"])


def test_pool_reports_a_diverging_replay(pool_backend):
    with EnvPool("fork/ReplaysDifferently-v0", 2, backend=pool_backend) as pool:
        pool.reset({0: (0, {"split": "test", "task": 0})})
        pool.step({0: "50"})
        forked = pool.fork(0, 1)
        assert forked.error.startswith("fork: cannot fork fork/ReplaysDifferently-v0") and "step 0" in forked.error
        with pytest.raises(ValueError, match="into itself"):
            pool.fork(0, 0)


def test_textworld_forks_a_long_episode_by_copying_its_engine(monkeypatch):
    from envgym.envs.textworld import env as textworld_env

    monkeypatch.setattr(textworld_env, "COPY_AFTER_STEPS", 2)
    env = envgym.make("textworld/CoinCollector-v0")
    _, info = env.reset(seed=3)
    for _ in range(2):
        _, _, _, _, info = env.step(info["admissible_actions"][0])
    fork = env.fork()
    assert fork.unwrapped._game_env is not env.unwrapped._game_env  # a copy, not a replay's fresh engine
    moves = [info["admissible_actions"][-1], "look", "inventory"]
    # the fork plays all its moves first: the original then gives the same results only if they share nothing
    assert [fork.step(m)[:2] for m in moves] == [env.step(m)[:2] for m in moves]
    fork.close()
    env.close()
