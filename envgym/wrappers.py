"""Wrappers that add behaviour to any envgym env without flags on the base class."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import gymnasium

from envgym.core import fork_env

StepResult = tuple[str, float, bool, bool, dict[str, Any]]


class ForkingWrapper(gymnasium.Wrapper):
    """A wrapper whose `fork()` copies itself (its own state deeply) around a fork of the env it wraps."""

    def fork(self) -> gymnasium.Env:
        return fork_env(self)


class TurnLimit(ForkingWrapper):
    """Truncate an episode after `max_turns` steps; sets `info["turn_limit_reached"]` when it does."""

    def __init__(self, env: gymnasium.Env, max_turns: int):
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        super().__init__(env)
        self.max_turns = max_turns
        self.turns = 0

    def reset(self, **kwargs: Any) -> tuple[str, dict[str, Any]]:
        self.turns = 0
        return self.env.reset(**kwargs)

    def step(self, action: str) -> StepResult:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.turns += 1
        if self.turns >= self.max_turns and not terminated:
            truncated = True
            info["turn_limit_reached"] = True
        return obs, reward, terminated, truncated, info


class InvalidActionPolicy(ForkingWrapper):
    """What happens when the env flags `info["invalid_action"]`.

    - ``"penalize"``: subtract `penalty` from the reward and go on;
    - ``"terminate"``: subtract `penalty` and end the episode (`terminated=True`);
    - ``"pass"``: change nothing.
    The flag stays in `info` in every mode, and `info["invalid_action_count"]`
    counts the episode's invalid turns so far.
    """

    def __init__(
        self,
        env: gymnasium.Env,
        mode: Literal["penalize", "terminate", "pass"] = "penalize",
        penalty: float = 0.1,
    ):
        if mode not in ("penalize", "terminate", "pass"):
            raise ValueError(f"mode must be 'penalize', 'terminate' or 'pass', got {mode!r}")
        super().__init__(env)
        self.mode, self.penalty = mode, float(penalty)
        self.invalid_count = 0

    def reset(self, **kwargs: Any) -> tuple[str, dict[str, Any]]:
        self.invalid_count = 0
        return self.env.reset(**kwargs)

    def step(self, action: str) -> StepResult:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if info.get("invalid_action", False):
            self.invalid_count += 1
            if self.mode != "pass":
                reward -= self.penalty
            if self.mode == "terminate":
                terminated = True
        info["invalid_action_count"] = self.invalid_count
        return obs, reward, terminated, truncated, info


class ObservationFormat(ForkingWrapper):
    """Append the admissible actions to each observation (or strip nothing when hidden).

    With `show_admissible=True` an observation that has `info["admissible_actions"]`
    ends with a line ``Valid actions: a, b, c``; at most `max_listed` are shown.
    """

    def __init__(self, env: gymnasium.Env, show_admissible: bool = True, max_listed: int = 50):
        super().__init__(env)
        self.show_admissible, self.max_listed = show_admissible, max_listed

    def _format(self, obs: str, info: dict[str, Any]) -> str:
        actions = info.get("admissible_actions")
        if not self.show_admissible or not actions:
            return obs
        listed = ", ".join(list(actions)[: self.max_listed])
        more = f" (+{len(actions) - self.max_listed} more)" if len(actions) > self.max_listed else ""
        return f"{obs}\nValid actions: {listed}{more}"

    def reset(self, **kwargs: Any) -> tuple[str, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        return self._format(obs, info), info

    def step(self, action: str) -> StepResult:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._format(obs, info), reward, terminated, truncated, info


class ActionExtraction(ForkingWrapper):
    """Find the action inside a free-form reply before the env sees it (for models that talk around it).

    - ``"tag"``: the content of the last ``<tag>...</tag>`` in the reply (verl-agent's
      ``<action>`` convention);
    - ``"admissible"``: the one admissible action (``info["admissible_actions"]`` of the
      current state) that the reply names as a whole phrase, e.g. "so go north." -> ``go north``.
    A reply in which nothing, or (``"admissible"``) more than one action, is found goes to the
    env unchanged, which judges it (usually invalid). `info["extracted_action"]` holds what the
    env received; the reply itself, not the extraction, is what a policy is trained on.
    """

    def __init__(self, env: gymnasium.Env, mode: Literal["tag", "admissible"] = "admissible", tag: str = "action"):
        if mode not in ("tag", "admissible"):
            raise ValueError(f"mode must be 'tag' or 'admissible', got {mode!r}")
        super().__init__(env)
        self.mode = mode
        self._tag = re.compile(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", re.DOTALL | re.IGNORECASE)
        self._phrases: dict[str, str] = {}  # admissible action, lower-cased with single spaces -> as the env wrote it

    def extract(self, reply: str) -> str:
        """The action `reply` names (see the class docstring), or `reply` itself when none or several."""
        if self.mode == "tag":
            found = self._tag.findall(reply)
            return found[-1].strip() if found else reply
        text = _normalize(reply)
        named = [p for p in self._phrases if re.search(rf"(?<!\w){re.escape(p)}(?!\w)", text)]
        # "take the key" also names "take the key from the box": keep only maximal phrases
        named = [p for p in named if not any(p != q and p in q for q in named)]
        return self._phrases[named[0]] if len(named) == 1 else reply

    def _remember(self, info: dict[str, Any]) -> None:
        self._phrases = {_normalize(a): a for a in info.get("admissible_actions") or []}

    def reset(self, **kwargs: Any) -> tuple[str, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._remember(info)
        return obs, info

    def step(self, action: str) -> StepResult:
        extracted = self.extract(action) if isinstance(action, str) else action
        obs, reward, terminated, truncated, info = self.env.step(extracted)
        info["extracted_action"] = extracted
        self._remember(info)
        return obs, reward, terminated, truncated, info


def _normalize(text: str) -> str:
    """`text` lower-cased, with runs of whitespace as single spaces."""
    return " ".join(text.lower().split())


def _jsonable(value: Any) -> Any:
    """`value` with numpy scalars and tuples made JSON-friendly; unknown objects become their repr."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return repr(value)


class EpisodeRecorder(ForkingWrapper):
    """Append each finished episode to a JSONL file, one line per episode.

    A line holds the env id, the reset seed and options, the first observation and
    every turn's action, observation, reward, terminated/truncated and info. The
    line is written and flushed when the episode ends, so a crash loses at most
    the episode in progress.
    """

    def __init__(self, env: gymnasium.Env, path: str | os.PathLike[str]):
        super().__init__(env)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._episode: dict[str, Any] | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        env_id = self.env.spec.id if self.env.spec is not None else type(self.env.unwrapped).__name__
        self._episode = {"env_id": env_id, "seed": seed, "options": options, "observation": obs,
                         "info": info, "turns": []}
        return obs, info

    def step(self, action: str) -> StepResult:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._episode is not None:
            self._episode["turns"].append({"action": action, "observation": obs, "reward": float(reward),
                                           "terminated": terminated, "truncated": truncated, "info": info})
            if terminated or truncated:
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(_jsonable(self._episode), ensure_ascii=False) + "\n")
                self._episode = None
        return obs, reward, terminated, truncated, info


@dataclass(frozen=True)
class EnvMaker:
    """A picklable zero-argument factory of one env: `envgym.make(env_id, **kwargs)` and the rollout wrappers.

    `extract_action` ("none", "tag" or "admissible") adds `ActionExtraction`;
    `show_admissible` adds `ObservationFormat`. Training and evaluation build
    their envs through one of these, so the same config gives the same env in
    both, in this process or in a pool's worker.
    """

    env_id: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    extract_action: Literal["none", "tag", "admissible"] = "none"
    show_admissible: bool = False

    def __call__(self) -> gymnasium.Env:
        from envgym.registration import make

        env = make(self.env_id, **self.kwargs)
        if self.extract_action != "none":
            env = ActionExtraction(env, mode=self.extract_action)
        return ObservationFormat(env) if self.show_admissible else env
