"""Math with Python: arithmetic and word problems whose answers are integers, with a sandboxed Python tool.

Each task is generated from its task seed as a question plus the Python
program that solves it; the gold answer is what that program computes, so
every answer is verified by running it. Several problem kinds (digit sums of
large powers, prime counts, modular powers) are impractical without the tool.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from envgym.core import draw_task
from envgym.envs.tools.base import ToolEnv, answer_tag
from envgym.tools import PythonExecutor, PythonSession, ToolSet, make_sandbox, python_tool

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True)
class MathTask:
    question: str
    code: str  # sets `answer`

    def solve(self) -> int:
        """Run the solution program (our own trusted code) and return its integer answer."""
        scope: dict[str, Any] = {}
        exec(self.code, scope)
        return int(scope["answer"])


def _expression(rng: np.random.Generator, depth: int) -> str:
    if depth == 0:
        return str(int(rng.integers(2, 1000)))
    op = ["+", "-", "*"][int(rng.integers(3))]
    return f"({_expression(rng, depth - 1)} {op} {_expression(rng, depth - 1)})"


def _arithmetic(rng):
    expr = _expression(rng, int(rng.integers(2, 4)))[1:-1]
    return MathTask(f"Compute {expr}.", f"answer = {expr}")


def _digit_sum(rng):
    a, b = int(rng.integers(2, 20)), int(rng.integers(30, 200))
    return MathTask(f"What is the sum of the decimal digits of {a}^{b}?",
                    f"answer = sum(int(d) for d in str({a} ** {b}))")


def _multiples(rng):
    p, q = sorted(int(x) for x in rng.choice(np.arange(2, 12), size=2, replace=False))
    n = int(rng.integers(100, 100_000))
    return MathTask(f"What is the sum of all positive integers below {n} that are multiples of {p} or {q}?",
                    f"answer = sum(k for k in range(1, {n}) if k % {p} == 0 or k % {q} == 0)")


def _primes(rng):
    n = int(rng.integers(100, 50_000))
    return MathTask(f"How many prime numbers are less than {n}?",
                    f"sieve = [True] * {n}\nsieve[:2] = [False] * min(2, {n})\n"
                    f"for i in range(2, int({n} ** 0.5) + 1):\n"
                    f"    if sieve[i]:\n        sieve[i * i::i] = [False] * len(sieve[i * i::i])\n"
                    f"answer = sum(sieve)")


def _modpow(rng):
    a, b, m = int(rng.integers(2, 1000)), int(rng.integers(100, 10**6)), int(rng.integers(7, 10_000))
    return MathTask(f"What is the remainder when {a}^{b} is divided by {m}?", f"answer = pow({a}, {b}, {m})")


def _change(rng):
    p, q = int(rng.integers(35, 400)), int(rng.integers(20, 300))
    a, b = int(rng.integers(2, 15)), int(rng.integers(2, 15))
    note = 10 * math.ceil((a * p + b * q) / 1000 + 0.5)
    return MathTask(f"A bakery sells muffins for {p} cents each and cookies for {q} cents each. Mia buys {a} "
                    f"muffins and {b} cookies and pays with a {note}-dollar note. How many cents of change does "
                    f"she get?", f"answer = {note} * 100 - ({a} * {p} + {b} * {q})")


def _tank(rng):
    fill, leak = int(rng.integers(6, 40)), int(rng.integers(1, 6))
    volume = int(rng.integers(200, 5000))
    return MathTask(f"An empty tank holds {volume} litres. A pump fills it at {fill} litres per minute while "
                    f"it leaks {leak} litres per minute. After how many whole minutes is it full for the first "
                    f"time?", f"import math\nanswer = math.ceil({volume} / ({fill} - {leak}))")


KINDS: dict[str, Callable[[np.random.Generator], MathTask]] = {
    "arithmetic": _arithmetic, "digit_sum": _digit_sum, "multiples": _multiples, "primes": _primes,
    "modpow": _modpow, "change": _change, "tank": _tank,
}


def parse_number(text: str) -> float | None:
    """The last number in `text` ("1,234" and "1234.0" read as 1234), or None."""
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


class MathPython(ToolEnv):
    """Solve a math problem; a sandboxed `python` tool may be called any number of turns before answering."""

    knobs = {
        "kinds": "problem kinds to draw from (default all): " + ", ".join(KINDS),
        "persistent": "True: one Python session per episode keeps variables across calls; "
                      "False (default): a fresh process per call",
        "sandbox": "sandbox kind for the python tool: auto, bwrap, docker or subprocess",
        "timeout": "seconds per python call (default 10)",
    }

    def __init__(self, kinds: tuple[str, ...] | None = None, persistent: bool = False, sandbox: str = "auto",
                 timeout: float = 10.0):
        kinds = tuple(kinds or KINDS)
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or not kinds:
            raise ValueError(f"unknown problem kinds {unknown}; choose from {list(KINDS)}")
        self.kinds = kinds
        self.num_tasks = {"train": 100_000, "test": 1_000}
        box = make_sandbox(sandbox)
        self._runner = PythonSession(box, timeout=timeout) if persistent else PythonExecutor(box, timeout=timeout)
        self.tools = ToolSet([python_tool(self._runner)], code_tool="python")
        self.instructions = (
            "Solve the math problem. You may run Python as often as you like before answering:\n"
            f"{self.tools.describe()}\n"
            "A fenced ```python block also runs as a python call. When you know the answer, reply with "
            "<answer>INTEGER</answer>; that ends the episode."
        )
        self.action_format = ('a python tool call (<tool_call>{"name": "python", "arguments": {"code": "..."}}'
                              "</tool_call> or a ```python block), or <answer>42</answer>")

    def _task(self, split: str, index: int) -> MathTask:
        def make(seed: int) -> MathTask:
            rng = np.random.default_rng(seed)
            return KINDS[self.kinds[int(rng.integers(len(self.kinds)))]](rng)

        return draw_task("tools/math-python", split, index, make, lambda t: t.question)

    def task_key(self, split: str, index: int) -> str:
        return self._task(split, index).question

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        split, index = self.select_task(seed, options)
        self.problem = self._task(split, index)
        if isinstance(self._runner, PythonSession):
            self._runner.close()  # a fresh interpreter per episode: no state carries over
        self.start_episode(self.problem.question, str(self.problem.solve()))
        return self.problem.question, self.info()

    def score(self, answer: str) -> float:
        value = parse_number(answer)
        return float(value is not None and value == int(self.gold))

    def oracle_action(self) -> str:
        if not self.calls:
            return f"```python\n{self.problem.code}\nprint(answer)\n```"
        return answer_tag(self.gold)

    def close(self) -> None:
        self._runner.close()
        self._runner.sandbox.close()
