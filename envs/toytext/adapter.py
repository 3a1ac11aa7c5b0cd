"""One adapter that turns a Gymnasium toy-text env (discrete actions) into an envgym text env.

A game subclass names its Gymnasium id and its action names, and says how to
describe an observation in words; the adapter does the rest:

- actions are read by name (case and trailing punctuation ignored; a game may
  add aliases); anything else is refused with the list of names, and nothing moves;
- `info["state_key"]` is the underlying discrete observation;
- tasks: toy-text envs have no tasks, so task k of a split is a reset seed
  (plus whatever a game draws from it, e.g. a FrozenLake map). Seeds are drawn
  with `task_seed` until the task's first observation text (its content) hashes
  into the split (`split_of`), so train and test never share a start;
- the oracle is the optimal policy of the game's MDP by value iteration over the
  env's transition table `P` (a game without one overrides `optimal_action`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import gymnasium
import numpy as np

from envgym.core import Env, draw_task


def value_iteration(P: Mapping[int, Mapping[int, list]], gamma: float = 0.99, tol: float = 1e-9) -> np.ndarray:
    """The greedy policy (action per state) of the optimal Q of a tabular MDP.

    `P[s][a]` is Gymnasium's transition list of `(probability, next_state, reward, terminated)`.
    """
    n_states, n_actions = len(P), len(P[0])
    sa, prob, nxt, reward, alive = [], [], [], [], []
    for s, by_action in P.items():
        for a, outcomes in by_action.items():
            for p, s2, r, done in outcomes:
                sa.append(s * n_actions + a)
                prob.append(p)
                nxt.append(s2)
                reward.append(r)
                alive.append(0.0 if done else 1.0)
    sa_, prob_, nxt_ = np.array(sa), np.array(prob), np.array(nxt)
    reward_, alive_ = np.array(reward, dtype=float), np.array(alive)
    value = np.zeros(n_states)
    while True:
        backup = prob_ * (reward_ + gamma * alive_ * value[nxt_])
        q = np.bincount(sa_, weights=backup, minlength=n_states * n_actions).reshape(n_states, n_actions)
        new_value = q.max(axis=1)
        if np.abs(new_value - value).max() < tol:
            return q.argmax(axis=1)
        value = new_value


class ToyText(Env):
    """Base of the toy-text games; subclasses set the class attributes and `describe`."""

    #: The Gymnasium id the game wraps, e.g. "FrozenLake-v1".
    gym_id: ClassVar[str]
    #: Name of each discrete action, in the env's action order.
    action_names: ClassVar[tuple[str, ...]]
    #: Other words accepted for an action name, e.g. {"stand": "stick"}.
    aliases: ClassVar[Mapping[str, str]] = {}
    #: Share of task contents that belong to the test split.
    test_fraction: ClassVar[float] = 0.1
    #: Discount of the value iteration behind the oracle (< 1 prefers shorter wins).
    gamma: ClassVar[float] = 0.99

    def __init__(self, **gym_kwargs: Any):
        self.gym_kwargs = gym_kwargs
        for knob, value in gym_kwargs.items():  # knob values read as attributes (`envgym info` shows them)
            setattr(self, knob, value)
        self.num_tasks = {"train": 10_000, "test": 1_000}
        self.action_format = f"one action name: {', '.join(self.action_names)}"
        self._actions = {name: i for i, name in enumerate(self.action_names)}
        self._actions.update({alias: self._actions[name] for alias, name in self.aliases.items()})
        self._seeds: dict[tuple[str, int], int] = {}
        self._shared_env: gymnasium.Env | None = None
        self._policy: tuple[gymnasium.Env, np.ndarray] | None = None  # (the env it was computed for, policy)
        self.gym_env = self.make_gym_env(0)
        self.obs: Any = None

    # --- game hooks -------------------------------------------------------------------------------------------------
    def make_gym_env(self, seed: int) -> gymnasium.Env:
        """The unwrapped Gymnasium env that plays the task of `seed` (default: one env shared by every task)."""
        if self._shared_env is None:
            self._shared_env = gymnasium.make(self.gym_id, **self.gym_kwargs).unwrapped
        return self._shared_env

    def start(self, seed: int) -> Any:
        """Reset `self.gym_env` for the task of `seed`; returns the first observation."""
        return self.gym_env.reset(seed=seed)[0]

    def describe(self, obs: Any, terminated: bool) -> str:
        """The observation in words (the map, the hand...), as the agent reads it."""
        raise NotImplementedError

    def is_won(self, reward: float, terminated: bool) -> bool:
        """Whether the step that gave `reward` and `terminated` won the game (default: ended with reward > 0)."""
        return terminated and reward > 0

    def optimal_action(self, obs: Any) -> int:
        """The oracle's action index (default: value iteration over the env's `P`, kept until the env changes)."""
        if self._policy is None or self._policy[0] is not self.gym_env:
            self._policy = (self.gym_env, value_iteration(self.gym_env.P, self.gamma))
        return int(self._policy[1][obs])

    # --- the envgym contract ----------------------------------------------------------------------------------------
    def _start_task(self, seed: int) -> str:
        self.gym_env = self.make_gym_env(seed)
        self.obs = self.start(seed)
        return self.describe(self.obs, False)

    def _task_seed(self, split: str, index: int) -> int:
        """The reset seed of task `index` of `split`: the first candidate whose start hashes into `split`."""
        key = (split, index)
        if key not in self._seeds:
            self._seeds[key] = draw_task(
                f"toytext-{type(self).__name__}-{sorted(self.gym_kwargs.items())}", split, index,
                lambda seed: seed % 2**31, lambda seed: self._content_key(self._start_task(seed)),
                test_fraction=self.test_fraction)
        return self._seeds[key]

    def _content_key(self, first_text: str) -> str:
        return f"toytext|{type(self).__name__}|{first_text}"

    def task_key(self, split: str, index: int) -> str:
        return self._content_key(self._start_task(self._task_seed(split, index)))

    def _info(self, **extra: Any) -> dict[str, Any]:
        return {"state_key": str(self.obs), "admissible_actions": list(self.action_names), **extra}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        split, task = self.select_task(seed, options)
        self.won = False
        text = self._start_task(self._task_seed(split, task))
        return text, self._info(won=False)

    def step(self, action: str):
        action = self.check_action(action)
        name = action.strip().strip(".!'\"").lower()
        if name not in self._actions:
            obs = (f"Unknown action {action[:40]!r}. Reply with one of: {', '.join(self.action_names)}.\n"
                   f"{self.describe(self.obs, False)}")
            return obs, 0.0, False, False, self._info(won=False, invalid_action=True)
        self.obs, reward, terminated, truncated, _ = self.gym_env.step(self._actions[name])
        self.won = self.is_won(float(reward), terminated)
        text = self.describe(self.obs, terminated)
        if terminated:
            text += "\nYou won!" if self.won else "\nGame over: you did not win."
        return text, float(reward), terminated, truncated, self._info(won=self.won, invalid_action=False)

    def oracle_action(self) -> str:
        return self.action_names[self.optimal_action(self.obs)]

    def close(self) -> None:
        self.gym_env.close()
