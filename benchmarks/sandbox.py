"""Overhead of a sandboxed `print(1)` per backend, against a bare `python -c` measured in the same run.

    .venv/bin/python benchmarks/sandbox.py [--runs 30]

Goals: under 50 ms of overhead per call with bubblewrap; under 5 ms per call
in a warm Python session.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
import warnings

from envgym.tools import PythonSession, make_sandbox
from envgym.tools.docker_sandbox import docker_problem
from envgym.tools.sandbox import PYTHON_FLAGS, bwrap_usable

BWRAP_GOAL_MS, SESSION_GOAL_MS = 50.0, 5.0


def median_ms(fn, runs: int) -> float:
    fn()  # warm caches (interpreter pages, bwrap probe) before timing
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def bare_ms(python: str, runs: int) -> float:
    return median_ms(lambda: subprocess.run([python, *PYTHON_FLAGS, "-c", "print(1)"], capture_output=True,
                                            check=True), runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed calls per backend (median reported)")
    args = parser.parse_args()
    kinds = [k for k, problem in (("bwrap", bwrap_usable()), ("docker", docker_problem()), ("subprocess", None))
             if problem is None]
    skipped = {"bwrap": bwrap_usable(), "docker": docker_problem()}
    print(f"{'backend':<22}{'median ms':>10}{'bare ms':>10}{'overhead ms':>13}{'ratio':>8}  goal")
    baselines: dict[str, float] = {}
    for kind in kinds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sandbox = make_sandbox(kind)
        baseline = baselines.get(sandbox.python) or baselines.setdefault(sandbox.python, bare_ms(sandbox.python,
                                                                                                args.runs))
        sandboxed = median_ms(lambda: sandbox.run(code="print(1)", timeout=30), args.runs)
        overhead = sandboxed - baseline
        goal = (f"< {BWRAP_GOAL_MS:g} ms overhead: {'met' if overhead < BWRAP_GOAL_MS else 'NOT met'}"
                if kind == "bwrap" else "")
        print(f"{kind:<22}{sandboxed:>10.1f}{baseline:>10.1f}{overhead:>13.1f}{sandboxed / baseline:>8.2f}  {goal}")
        if kind != "docker":
            with PythonSession(sandbox, timeout=30) as session:
                session.start()
                per_call = median_ms(lambda: session.run("print(1)"), args.runs * 10)
            goal = f"< {SESSION_GOAL_MS:g} ms per call: {'met' if per_call < SESSION_GOAL_MS else 'NOT met'}"
            print(f"{kind + ' warm session':<22}{per_call:>10.2f}{baseline:>10.1f}{'':>13}"
                  f"{per_call / baseline:>8.3f}  {goal}")
        sandbox.close()
    for kind, problem in skipped.items():
        if problem:
            print(f"{kind}: skipped ({problem})")


if __name__ == "__main__":
    main()
