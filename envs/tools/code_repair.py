"""Code repair: a small Python function with one injected bug; fix it so its unit tests pass.

Tasks are mutants of correct functions (`FUNCTIONS`), made by one mutation
operator applied at one site of the syntax tree: off-by-one constants, a
wrong arithmetic operator, a wrong comparison, a flipped boolean operator,
swapped call arguments. Only mutants that fail at least one test are tasks;
that is decided by running every mutant's tests in the sandbox when the env
is first built. Expected outputs come from the original function, which is
also the oracle's answer. The agent sees the buggy function and a few of the
tests; a submission (a fenced ```python block or a `submit` call) runs all
tests in the sandbox, and the reward is the fraction that pass.

Outputs are compared on the host, never inside the sandbox, so submitted code
cannot fake a pass by printing one.
"""

from __future__ import annotations

import ast
import functools
import json
from dataclasses import dataclass
from typing import Any

from envgym.core import partition_tasks
from envgym.envs.tools.base import ToolEnv
from envgym.tools import Limits, Sandbox, Tool, ToolSet, make_sandbox

#: Correct functions and the inputs of their tests (expected outputs come from running them).
FUNCTIONS: dict[str, tuple[str, list[tuple]]] = {
    "clamp": ("def clamp(x, lo, hi):\n    if x < lo:\n        return lo\n    if x > hi:\n        return hi\n"
              "    return x\n", [(5, 0, 10), (-3, 0, 10), (12, 0, 10), (0, 0, 10), (10, 0, 10), (7, 7, 7)]),
    "running_sum": ("def running_sum(xs):\n    out = []\n    total = 0\n    for i in range(len(xs)):\n"
                    "        total = total + xs[i]\n        out.append(total)\n    return out\n",
                    [([1, 2, 3],), ([],), ([5],), ([3, -1, 4, -1, 5],), ([0, 0, 2],)]),
    "binary_search": ("def binary_search(xs, target):\n    lo, hi = 0, len(xs) - 1\n    while lo <= hi:\n"
                      "        mid = (lo + hi) // 2\n        if xs[mid] == target:\n            return mid\n"
                      "        if xs[mid] < target:\n            lo = mid + 1\n"
                      "        else:\n            hi = mid - 1\n"
                      "    return -1\n", [([1, 3, 5, 7, 9], 7), ([1, 3, 5, 7, 9], 1), ([1, 3, 5, 7, 9], 9),
                                         ([1, 3, 5, 7, 9], 4), ([], 3), ([2], 2), ([2, 4], 4)]),
    "fizzbuzz": ("def fizzbuzz(n):\n    if n % 15 == 0:\n        return 'FizzBuzz'\n    if n % 3 == 0:\n"
                 "        return 'Fizz'\n    if n % 5 == 0:\n        return 'Buzz'\n    return str(n)\n",
                 [(1,), (3,), (5,), (15,), (30,), (7,), (9,), (10,)]),
    "count_vowels": ("def count_vowels(s):\n    count = 0\n    for ch in s.lower():\n        if ch in 'aeiou':\n"
                     "            count = count + 1\n    return count\n", [("hello",), ("",), ("AEIOU",), ("rhythm",),
                                                                        ("Banana",)]),
    "max_subarray": ("def max_subarray(xs):\n    best = xs[0]\n    current = 0\n    for x in xs:\n"
                     "        current = max(x, current + x)\n        best = max(best, current)\n    return best\n",
                     [([1, -2, 3, 4, -1],), ([-3, -1, -2],), ([5],), ([2, -1, 2, -1, 2],),
                      ([-2, 1, -3, 4, -1, 2, 1],)]),
    "gcd": ("def gcd(a, b):\n    while b != 0:\n        a, b = b, a % b\n    return a\n",
            [(12, 18), (7, 5), (0, 9), (100, 10), (17, 17), (48, 180)]),
    "chunk": ("def chunk(xs, size):\n    return [xs[i:i + size] for i in range(0, len(xs), size)]\n",
              [([1, 2, 3, 4, 5], 2), ([1, 2, 3], 3), ([], 4), ([1, 2, 3, 4], 1), ([1, 2, 3, 4, 5, 6, 7], 3)]),
    "rotate_right": ("def rotate_right(xs, k):\n    if not xs:\n        return []\n    k = k % len(xs)\n"
                     "    return xs[len(xs) - k:] + xs[:len(xs) - k]\n",
                     [([1, 2, 3, 4, 5], 2), ([1, 2, 3], 0), ([], 3), ([1, 2, 3], 4), ([7, 8], 1)]),
    "is_palindrome": ("def is_palindrome(s):\n    chars = [c.lower() for c in s if c.isalnum()]\n"
                      "    return chars == chars[::-1]\n",
                      [("Racecar",), ("hello",), ("A man, a plan, a canal: Panama",), ("",), ("ab",)]),
    "second_largest": ("def second_largest(xs):\n    distinct = sorted(set(xs))\n    if len(distinct) < 2:\n"
                       "        return None\n    return distinct[-2]\n",
                       [([3, 1, 4, 1, 5],), ([2, 2],), ([9],), ([5, 9, 9, 7],), ([-1, -5, -3],)]),
    "merge_sorted": ("def merge_sorted(a, b):\n    out = []\n    i = j = 0\n    while i < len(a) and j < len(b):\n"
                     "        if a[i] <= b[j]:\n            out.append(a[i])\n            i = i + 1\n        else:\n"
                     "            out.append(b[j])\n            j = j + 1\n    return out + a[i:] + b[j:]\n",
                     [([1, 4, 9], [2, 3, 10]), ([], [1, 2]), ([1, 2], []), ([1, 1], [1, 2]), ([5], [1, 6])]),
    "digit_sum": ("def digit_sum(n):\n    n = abs(n)\n    total = 0\n    while n > 0:\n        total = total + n % 10\n"
                  "        n = n // 10\n    return total\n", [(0,), (7,), (1234,), (-56,), (1000,), (99999,)]),
    "count_inversions": ("def count_inversions(xs):\n    count = 0\n    for i in range(len(xs)):\n"
                         "        for j in range(i + 1, len(xs)):\n            if xs[i] > xs[j]:\n"
                         "                count = count + 1\n    return count\n",
                         [([1, 2, 3],), ([3, 2, 1],), ([2, 4, 1, 3, 5],), ([],), ([1, 1, 1],)]),
    "power_set_size": ("def power_set_size(items, max_size):\n    from math import comb\n"
                       "    return sum(comb(len(items), k) for k in range(0, min(max_size, len(items)) + 1))\n",
                       [([1, 2, 3], 3), ([1, 2, 3], 1), ([], 2), ([1, 2, 3, 4], 2)]),
}

_SWAP_OPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv}
_SWAP_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
             ast.NotEq: ast.Eq}
_SWAP_BOOL = {ast.And: ast.Or, ast.Or: ast.And}


def _mutations(node: ast.AST) -> list[tuple[str, Any]]:
    """The (operator name, apply) pairs a single node admits; `apply()` mutates it in place."""
    out = []
    if isinstance(node, ast.Constant) and type(node.value) is int:
        out += [("off_by_one", lambda n=node, d=d: setattr(n, "value", n.value + d)) for d in (1, -1)]
    if isinstance(node, ast.BinOp) and type(node.op) in _SWAP_OPS:
        out.append(("wrong_operator", lambda n=node: setattr(n, "op", _SWAP_OPS[type(n.op)]())))
    if isinstance(node, ast.Compare) and type(node.ops[0]) in _SWAP_CMP:
        out.append(("wrong_comparison", lambda n=node: n.ops.__setitem__(0, _SWAP_CMP[type(n.ops[0])]())))
    if isinstance(node, ast.BoolOp):
        out.append(("wrong_boolean", lambda n=node: setattr(n, "op", _SWAP_BOOL[type(n.op)]())))
    if isinstance(node, ast.Call) and len(node.args) >= 2:
        out.append(("swapped_args", lambda n=node: n.args.__setitem__(slice(0, 2), [n.args[1], n.args[0]])))
    return out


def mutants(source: str) -> list[tuple[str, str]]:
    """Every single-site mutant of `source` as (operator name, mutated source), distinct and != source."""
    canonical = ast.unparse(ast.parse(source))
    seen, out = {canonical}, []
    count = sum(len(_mutations(n)) for n in ast.walk(ast.parse(source)))
    for k in range(count):
        tree = ast.parse(source)
        name, apply = [m for n in ast.walk(tree) for m in _mutations(n)][k]
        apply()
        code = ast.unparse(tree)
        if code not in seen:
            seen.add(code)
            out.append((name, code + "\n"))
    return out


@dataclass(frozen=True)
class RepairTask:
    function: str  # its name
    operator: str  # the mutation that made the bug
    buggy: str
    original: str
    cases: tuple  # argument tuples
    expected: tuple  # JSON-normalised outputs of the original


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value))


_HARNESS = '''
import json, signal, sys
job = json.load(open("job.json"))
def too_slow(*_):
    raise TimeoutError(f"test took longer than {job['seconds_per_test']} s")
signal.signal(signal.SIGALRM, too_slow)

def line_budget(limit):
    """A tracer that stops a test after `limit` executed lines: a cost that does not depend on machine load."""
    count = [0]
    def tracer(frame, event, arg):
        if event == "line":
            count[0] += 1
            if count[0] > limit:
                raise TimeoutError(f"test ran more than {limit} lines")
        return tracer
    return tracer

def run_source(name, source, cases):
    namespace, outputs, timed_out = {}, [], False
    try:
        exec(compile(source, "solution.py", "exec"), namespace)
        func = namespace[name]
    except BaseException as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    for args in cases:
        if timed_out:
            outputs.append({"error": "not run: an earlier test timed out"})
            continue
        signal.setitimer(signal.ITIMER_REAL, job["seconds_per_test"])
        if job["max_lines"]:
            sys.settrace(line_budget(job["max_lines"]))
        try:
            outputs.append({"value": json.loads(json.dumps(func(*args)))})
        except TimeoutError as exc:
            outputs.append({"error": str(exc)})
            timed_out = True
        except BaseException as exc:
            outputs.append({"error": f"{type(exc).__name__}: {exc}"[:300]})
        finally:
            sys.settrace(None)
            signal.setitimer(signal.ITIMER_REAL, 0)
    return {"outputs": outputs}

report = [[run_source(s["name"], source, s["cases"]) for source in s["sources"]] for s in job["suites"]]
sys.stdout.write("\\n@@REPORT@@" + json.dumps(report) + "\\n")
'''


@dataclass(frozen=True)
class Suite:
    """Test inputs for the function `name`, run against each of `sources`."""

    name: str
    sources: tuple[str, ...]
    cases: tuple


def run_tests(sandbox: Sandbox, suites: list[Suite], timeout: float,
              seconds_per_test: float = 1.0, max_lines: int | None = None) -> list[list[dict]] | str:
    """For each suite, for each source: {"outputs": [{"value"} or {"error"} per case]} or {"error"} (the
    source did not define the function). Runs in one sandbox call; a str says why the run failed.

    A test slower than `seconds_per_test`, or running more than `max_lines` lines, fails, and so do that
    source's later tests (not run)."""
    job = json.dumps({"seconds_per_test": seconds_per_test, "max_lines": max_lines,
                      "suites": [{"name": s.name, "sources": list(s.sources), "cases": [list(c) for c in s.cases]}
                                 for s in suites]})
    result = sandbox.run(code=_HARNESS, files={"job.json": job}, timeout=timeout,
                         limits=Limits(max_output_bytes=4 << 20))
    marker = result.stdout.rfind("\n@@REPORT@@")
    if marker < 0:
        return result.render(1000)
    try:
        report = json.loads(result.stdout[marker + len("\n@@REPORT@@"):].splitlines()[0])
    except (ValueError, IndexError):
        return "the test run's report was unreadable"
    shape_ok = isinstance(report, list) and [len(r) for r in report] == [len(s.sources) for s in suites]
    return report if shape_ok else "the test run's report was cut"


def _passed(entry: dict, expected: tuple) -> list[bool]:
    outputs = entry.get("outputs") or [{}] * len(expected)
    return [("value" in o and o["value"] == e) for o, e in zip(outputs, expected)]


@functools.lru_cache(maxsize=2)
def build_tasks(sandbox_kind: str) -> tuple[RepairTask, ...]:
    """All mutants of `FUNCTIONS` that fail at least one test (decided by running them in a sandbox)."""
    suites, expected, operators = [], {}, {}
    for name, (original, cases) in FUNCTIONS.items():
        scope: dict[str, Any] = {}
        exec(original, scope)  # our own trusted code: the expected outputs
        expected[name] = tuple(_json(scope[name](*c)) for c in cases)
        operators[name], sources = zip(*mutants(original))
        suites.append(Suite(name, sources, tuple(cases)))
    with make_sandbox(sandbox_kind) as sandbox:
        # A line budget, not a wall-clock one, decides which mutants loop, so the task list never depends on load.
        report = run_tests(sandbox, suites, timeout=120, seconds_per_test=30.0, max_lines=100_000)
    if isinstance(report, str):
        raise RuntimeError(f"could not test the code-repair mutants: {report}")
    tasks = []
    for suite, entries in zip(suites, report):
        original = ast.unparse(ast.parse(FUNCTIONS[suite.name][0])) + "\n"
        for operator, code, entry in zip(operators[suite.name], suite.sources, entries):
            if not all(_passed(entry, expected[suite.name])):
                tasks.append(RepairTask(suite.name, operator, code, original, suite.cases, expected[suite.name]))
    return tuple(tasks)


_VISIBLE_TESTS = 3


class CodeRepair(ToolEnv):
    """Fix the bug in a small function; submissions run its unit tests in a sandbox."""

    knobs = {
        "attempts": "submissions allowed per episode (default 2); the episode ends early when all tests pass",
        "sandbox": "sandbox kind for running tests: auto, bwrap, docker or subprocess",
        "timeout": "seconds for one test run (default 20)",
    }
    accepts_answer = False

    def __init__(self, attempts: int = 2, sandbox: str = "auto", timeout: float = 20.0):
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        self.attempts, self.timeout = int(attempts), float(timeout)
        self.sandbox = make_sandbox(sandbox)
        tasks = build_tasks(sandbox)
        self._tasks = partition_tasks(tasks, lambda t: t.buggy, 0.2)
        self.num_tasks = {s: len(ts) for s, ts in self._tasks.items()}
        self.tools = ToolSet([Tool(
            "submit", "Submit the complete fixed function; all its unit tests run and you see the results.",
            {"type": "object", "properties": {"code": {"type": "string", "description": "the fixed function"}},
             "required": ["code"]}, self._submit)], code_tool="submit")
        self.instructions = (
            "The Python function below has one bug. Reply with the complete fixed function in a fenced "
            f"```python block (or a submit call). All its unit tests then run; you have {self.attempts} "
            "submission(s), and your reward is the fraction of tests your last submission passes."
        )
        self.action_format = "the fixed function in a ```python ... ``` block"

    def task_key(self, split: str, index: int) -> str:
        return self._tasks[split][index].buggy

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        split, index = self.select_task(seed, options)
        self.repair = self._tasks[split][index]
        self.submissions, self.last_fraction = 0, 0.0
        self.start_episode(self.repair.buggy, self.repair.original)
        examples = "\n".join(f"{self.repair.function}{_call_args(c)} == {e!r}"
                             for c, e in zip(self.repair.cases[:_VISIBLE_TESTS], self.repair.expected))
        obs = (f"Fix the bug in this function:\n```python\n{self.repair.buggy}```\n"
               f"Some of its tests (there are {len(self.repair.cases)} in all):\n{examples}")
        return obs, self.info()

    def _submit(self, code: str) -> str:
        self.submissions += 1
        report = run_tests(self.sandbox, [Suite(self.repair.function, (code,), self.repair.cases)], self.timeout)
        if isinstance(report, str):
            self.last_fraction = 0.0
            return f"the tests could not run: {report}"
        entry = report[0][0]
        if "error" in entry:
            self.last_fraction = 0.0
            return f"your code did not define {self.repair.function}(): {entry['error']}"
        passed = _passed(entry, self.repair.expected)
        self.last_fraction = sum(passed) / len(passed)
        self.won = all(passed)
        lines = [f"{sum(passed)}/{len(passed)} tests passed."]
        for ok, args, output, want in zip(passed, self.repair.cases, entry["outputs"], self.repair.expected):
            if not ok:
                got = repr(output["value"]) if "value" in output else output["error"]
                lines.append(f"FAILED {self.repair.function}{_call_args(args)}: got {got}, expected {want!r}")
        return "\n".join(lines[:6])

    def end_of_turn(self) -> tuple[float, bool]:
        if self.won or self.submissions >= self.attempts:
            return self.last_fraction, True
        return 0.0, False

    def oracle_action(self) -> str:
        return f"```python\n{self.repair.original}```"

    def close(self) -> None:
        self.sandbox.close()


def _call_args(args: tuple) -> str:
    return "(" + ", ".join(repr(a) for a in args) + ")"
