"""The toy-text adapter: actions by name, readable observations, state keys, splits, and the optimal oracles."""

import itertools

import numpy as np
import pytest

import envgym
from envgym.envs.toytext.games import (_CARD_PROBABILITIES, Blackjack, CliffWalking, FrozenLake, Taxi,
                                       blackjack_values)

IDS = ["toytext/FrozenLake-v0", "toytext/Taxi-v0", "toytext/CliffWalking-v0", "toytext/Blackjack-v0"]


def _play_oracle(env, options):
    obs, info = env.reset(options=options)
    total, terminated, truncated = 0.0, False, False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(env.unwrapped.oracle_action())
        total += reward
    return total, info, obs


@pytest.mark.parametrize("env_id", ["toytext/FrozenLake-v0", "toytext/Taxi-v0", "toytext/CliffWalking-v0"])
def test_oracle_wins_every_deterministic_test_task(env_id):
    env = envgym.make(env_id)
    for task in range(8):
        _, info, obs = _play_oracle(env, {"split": "test", "task": task})
        assert info["won"] and "You won!" in obs


def test_taxi_oracle_takes_the_shortest_route():
    env = envgym.make("toytext/Taxi-v0")
    total, info, _ = _play_oracle(env, {"split": "test", "task": 0})
    # 20 for the dropoff, -1 per step: the optimal return of Taxi's start states lies in [20 - 20, 20 - 7].
    assert info["won"] and 0 <= total <= 13 and total == int(total)


def test_slippery_frozenlake_oracle_wins_as_often_as_its_exact_win_probability():
    """Slippery ice cannot be won every time; the oracle's empirical win rate must match the policy's exact
    win probability (computed from the transition table) within 4 standard errors."""
    env = FrozenLake(is_slippery=True)
    env.reset(options={"split": "test", "task": 0})
    policy = [env.optimal_action(s) for s in range(env.size ** 2)]
    win = np.zeros(env.size ** 2)
    for _ in range(30):  # the turn limit of toytext/FrozenLake-v0
        win = np.array([sum(p * (r if done else win[s2]) for p, s2, r, done in env.gym_env.P[s][policy[s]])
                        for s in range(env.size ** 2)])
    expected = win[0]
    episodes, wins = 400, 0
    for episode in range(episodes):
        env.gym_env.reset(seed=episode)
        env.obs, terminated, turns = 0, False, 0
        while not terminated and turns < 30:
            _, _, terminated, _, info = env.step(env.oracle_action())
            turns += 1
        wins += info["won"]
    stderr = np.sqrt(expected * (1 - expected) / episodes)
    assert 0.05 < expected < 1.0
    assert abs(wins / episodes - expected) < 4 * stderr + 1e-9


def test_blackjack_oracle_earns_its_dynamic_programming_value():
    """No policy wins every hand; the oracle's mean return over test hands must match the DP's expected
    return of those hands, which for Gymnasium's rules is the known optimum of about -0.05 per hand."""
    env = envgym.make("toytext/Blackjack-v0")
    returns, expected = [], []
    for task in range(1000):
        _, info = env.reset(options={"split": "test", "task": task})
        total, dealer, ace = env.unwrapped.obs
        expected.append(max(blackjack_values(total, bool(ace), dealer)))
        returns.append(_play_oracle_from_here(env))
    returns = np.array(returns)
    assert abs(returns.mean() - np.mean(expected)) < 4 * returns.std() / np.sqrt(len(returns))
    overall = 0.0  # the expected return of a fresh deal under the optimal policy
    for (c1, p1), (c2, p2), (d, pd) in itertools.product(_CARD_PROBABILITIES.items(), repeat=3):
        usable = 1 in (c1, c2) and c1 + c2 + 10 <= 21
        overall += p1 * p2 * pd * max(blackjack_values(c1 + c2 + 10 * usable, usable, d))
    assert -0.06 < overall < -0.03


def _play_oracle_from_here(env):
    total, terminated = 0.0, False
    while not terminated:
        _, reward, terminated, truncated, _ = env.step(env.unwrapped.oracle_action())
        total += reward
        terminated = terminated or truncated
    return total


@pytest.mark.parametrize("env_id", IDS)
def test_actions_by_name_and_refusals(env_id):
    env = envgym.make(env_id)
    obs0, info0 = env.reset(options={"split": "train", "task": 1})
    names = env.unwrapped.action_names
    assert info0["admissible_actions"] == list(names)
    for bad in ("", "fly", "0", "\x00\xff"):
        obs, reward, terminated, _, info = env.step(bad)
        assert info["invalid_action"] and reward == 0.0 and not terminated
        assert info["state_key"] == info0["state_key"] and ", ".join(names) in obs
    obs, _, _, _, info = env.step(f"  {names[-1].upper()}. ")
    assert not info["invalid_action"]


def test_state_key_is_the_discrete_state():
    env = CliffWalking()
    _, start = env.reset(options={"split": "train", "task": 0})
    assert start["state_key"] == str(env.obs)
    row = int(start["state_key"]) // 12
    there, back = ("down", "up") if row < 2 else ("up", "down")
    away = env.step(there)[4]["state_key"]
    assert away != start["state_key"] and env.step(back)[4]["state_key"] == start["state_key"]


def test_observations_are_readable_text():
    taxi = Taxi()
    obs, _ = taxi.reset(options={"split": "test", "task": 0})
    assert "+---------+" in obs and "The taxi is at row" in obs and "wants to go to" in obs
    lake = FrozenLake()
    obs, _ = lake.reset(options={"split": "test", "task": 0})
    assert obs.splitlines()[0][0] == "P" and obs.count("G") == 1 and "\x1b" not in obs
    jack = Blackjack()
    obs, _ = jack.reset(options={"split": "test", "task": 0})
    assert obs.startswith("Your cards:") and "dealer shows" in obs


@pytest.mark.parametrize("env_id", IDS)
def test_splits_are_disjoint_by_content(env_id):
    env = envgym.make(env_id).unwrapped
    train = {env.task_key("train", k) for k in range(300)}
    test = {env.task_key("test", k) for k in range(100)}
    assert train and test and not train & test


def test_frozenlake_tasks_are_different_maps():
    env = FrozenLake()
    maps = {env.reset(options={"split": "train", "task": k})[0].split("\nYou")[0] for k in range(20)}
    assert len(maps) > 10
