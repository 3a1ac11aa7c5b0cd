"""What the tool envs share: one turn = tool calls or a final answer.

An action is either a final answer, ``<answer>...</answer>`` (scored, ends the
episode), or one or more tool calls (`envgym.tools.calls` formats), whose
results are the next observation. Anything else is an invalid action whose
observation says what a valid one looks like. `info["tools"]` carries the
OpenAI-format schemas so a chat template can render them.
"""

from __future__ import annotations

import json
import re
from typing import Any


from envgym.core import Env, stable_hash
from envgym.tools import ToolCall, ToolSet

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


class ToolEnv(Env):
    """Base of the tool envs. Subclasses set `self.tools` (a ToolSet) and implement `task_key`,
    `reset` (calling `start_episode`), `score(answer) -> float` and `oracle_action`."""

    tools: ToolSet
    max_calls_per_turn: int = 4
    gold: str = ""
    #: False for envs where a tool ends the episode (its `end_of_turn` decides) instead of <answer>.
    accepts_answer: bool = True

    def start_episode(self, task_key: str, gold: str) -> None:
        """Reset the per-episode state: the task's key and gold answer, no calls made yet."""
        self._task_key, self.gold = task_key, gold
        self.calls: list[ToolCall] = []
        self.won = False

    def info(self, **extra: Any) -> dict[str, Any]:
        history = json.dumps([[c.name, c.arguments] for c in self.calls], sort_keys=True)
        return {"state_key": f"{self._task_key}|{stable_hash(history) & 0xFFFF_FFFF:08x}", "answer": self.gold,
                "won": self.won, "tools": self.tools.schemas(), **extra}

    def score(self, answer: str) -> float:
        """Reward of the final `answer` (already stripped of its tags)."""
        raise NotImplementedError

    def on_call(self, call: ToolCall) -> None:
        """Hook after a valid call ran (envs that track what the agent has seen override it)."""

    def end_of_turn(self) -> tuple[float, bool]:
        """(reward, terminated) after a turn of tool calls; envs whose tools end episodes override it."""
        return 0.0, False

    def step(self, action: str):
        action = self.check_action(action)
        answer = _ANSWER.search(action) if self.accepts_answer else None
        if answer is not None:
            reward = float(self.score(answer.group(1).strip()))
            self.won = reward >= 1.0
            verdict = "correct" if self.won else f"scored {reward:.2f}"
            return (f"Final answer received: {answer.group(1).strip()!r} ({verdict}).", reward, True, False,
                    self.info(invalid_action=False))
        calls = self.tools.parse(action)
        if not calls:
            code = self.tools.code_tool
            obs = (f"Invalid action: no tool call{' and no final answer' if self.accepts_answer else ''} found. "
                   f"Call a tool, e.g. {next(iter(self.tools.tools.values())).example()}"
                   + (f" (a fenced ```python block is a {code} call)" if code else "")
                   + (", or answer with <answer>...</answer>." if self.accepts_answer else "."))
            return obs, 0.0, False, False, self.info(invalid_action=True)
        parts = []
        for call in calls[: self.max_calls_per_turn]:
            result = self.tools.call(call)
            if isinstance(call, ToolCall):
                self.calls.append(call)
                self.on_call(call)
                parts.append(f"[{call.name}] {result}")
            else:
                parts.append(result)
        if len(calls) > self.max_calls_per_turn:
            parts.append(f"(only the first {self.max_calls_per_turn} tool calls of a turn run; "
                         f"{len(calls) - self.max_calls_per_turn} were skipped)")
        valid = any(isinstance(c, ToolCall) for c in calls)
        reward, terminated = self.end_of_turn()
        return "\n\n".join(parts), reward, terminated, False, self.info(invalid_action=not valid)


def answer_tag(answer: str) -> str:
    """The final-answer action for `answer`."""
    return f"<answer>{answer}</answer>"


def tool_call(name: str, **arguments: Any) -> str:
    """A Hermes-format tool-call action."""
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"
