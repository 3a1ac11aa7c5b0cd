"""envgym envs in TRL's `GRPOTrainer`, through its `environment_factory` (TRL >= 1.x).

    from trl import GRPOConfig, GRPOTrainer
    from envgym.trl import environment_factory, task_dataset

    trainer = GRPOTrainer(model=..., args=GRPOConfig(...),
                          train_dataset=task_dataset("games/GuessNumber-v0", tasks=256),
                          environment_factory=environment_factory("games/GuessNumber-v0"))

TRL builds one env object per rollout and calls `reset(**row)` with the dataset
row: the row's `split` and `task` pick the envgym task and seed the episode, so
the `num_generations` rollouts of one row (one GRPO group) play the same task.
`reset` returns the env's first observation, which TRL appends to the row's
prompt (the env's instructions). The model plays by calling the tool `act`
(TRL turns public methods into tools; the chat template must support tool
calls); `get_reward` is the episode's return, TRL's reward for the rollout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import envgym

#: What `act` answers once the episode is over.
EPISODE_OVER = "The episode is over; no more moves are taken."


class EnvgymEnvironment:
    """One envgym env as a TRL environment: `reset`, the tool `act`, and `get_reward`."""

    def __init__(self, env_id: str, env_kwargs: Mapping[str, Any] | None = None, split: str = "train"):
        self.env = envgym.make(env_id, **dict(env_kwargs or {}))
        self.default_split = split
        self.total_reward, self.done, self.turns = 0.0, True, 0

    def reset(self, task: int | None = None, split: str | None = None, seed: int | None = None,
              **row: Any) -> str:
        """Start the episode of `row` (its `split`, `task` and `seed` columns); returns the first observation."""
        options = {"split": split or self.default_split, **({"task": int(task)} if task is not None else {})}
        if seed is None and task is not None:  # one seed per task: a group's rollouts play identical episodes
            seed = int(task)
        observation, _ = self.env.reset(seed=seed, options=options)
        self.total_reward, self.done, self.turns = 0.0, False, 0
        return "\n\n" + observation

    def act(self, action: str) -> str:
        """Take one move in the environment and read what it answers.

        Args:
            action: The move, written as the instructions ask.

        Returns:
            The environment's answer to the move.
        """
        if self.done:
            return EPISODE_OVER
        observation, reward, terminated, truncated, _ = self.env.step(action)
        self.total_reward += float(reward)
        self.turns += 1
        self.done = bool(terminated or truncated)
        return observation + (f"\n{EPISODE_OVER}" if self.done else "")

    def get_reward(self) -> float:
        """The return of the episode so far (the sum of its rewards)."""
        return self.total_reward


def environment_factory(env_id: str, env_kwargs: Mapping[str, Any] | None = None,
                        split: str = "train") -> Callable[[], EnvgymEnvironment]:
    """The `environment_factory` of `GRPOTrainer` for env `env_id` (checked now: an unknown id fails here)."""
    envgym.spec(env_id)
    kwargs = dict(env_kwargs or {})
    return lambda: EnvgymEnvironment(env_id, kwargs, split)


def task_dataset(env_id: str, tasks: int, split: str = "train", env_kwargs: Mapping[str, Any] | None = None):
    """A `datasets.Dataset` of the first `tasks` tasks of `split`: columns `prompt` (the env's instructions
    as a user message), `split` and `task`."""
    from datasets import Dataset

    env = envgym.make(env_id, **dict(env_kwargs or {}))
    base = env.unwrapped
    available = base.num_tasks[split] if split in base.num_tasks else None
    if available is None:
        raise ValueError(f"{env_id} has no split {split!r}; its splits: {sorted(base.num_tasks)}")
    if not 1 <= tasks <= available:
        raise ValueError(f"tasks must be in [1, {available}] for the {split} split of {env_id}, got {tasks}")
    prompt = f"{base.instructions}\nAnswer format: {base.action_format}\nPlay by calling the tool act."
    env.close()
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": prompt}]] * tasks,
                              "split": [split] * tasks, "task": list(range(tasks))})
