"""Overhead of a sandboxed `print(1)` per backend, against a bare `python -c` measured in the same run.

    .venv/bin/python benchmarks/sandbox.py [--runs 30]

Rows per backend: a fresh sandbox per call (for Docker: create, start, attach, remove a
container), for Docker also a call served from a warm pool of two started containers (calls
back to back, and 1 s apart so the pool refills between them, as between an agent's turns),
and a call in a warm Python session. Docker runs on a private engine started for the run where that is
possible (root with docker.io; images cached per machine), else on the engine at $DOCKER_HOST.

Goals: under 50 ms of overhead per call with bubblewrap; under 5 ms per call in a warm Python
session, with bubblewrap and with Docker. A fresh Docker container has no goal: its cost is
reported as measured.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import time
import warnings

from envgym.tools import PythonSession, make_sandbox
from envgym.tools.bwrap_sandbox import bwrap_usable
from envgym.tools.docker_engine import PrivateDockerd, private_dockerd_problem
from envgym.tools.docker_sandbox import DockerSandbox, docker_problem
from envgym.tools.sandbox import PYTHON_FLAGS, default_python

BWRAP_GOAL_MS, SESSION_GOAL_MS = 50.0, 5.0


def median_ms(fn, runs: int, gap: float = 0.0) -> float:
    """Median wall time of `fn()` over `runs` calls, `gap` seconds apart (idle, not timed)."""
    fn()  # warm caches (interpreter pages, bwrap probe, the engine's image) before timing
    times = []
    for _ in range(runs):
        time.sleep(gap)
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def bare_ms(python: str, runs: int) -> float:
    return median_ms(lambda: subprocess.run([python, *PYTHON_FLAGS, "-c", "print(1)"], capture_output=True,
                                            check=True), runs)


def goal(value: float, limit: float, what: str) -> str:
    return f"< {limit:g} ms {what}: {'met' if value < limit else 'NOT met'}"


@contextlib.contextmanager
def docker_engine():
    """DOCKER_HOST of a private engine for the run where one can start, else the environment's; yields
    None, or why Docker is skipped."""
    if private_dockerd_problem() is not None:
        yield docker_problem()
        return
    saved = os.environ.get("DOCKER_HOST")
    with PrivateDockerd() as engine:
        os.environ["DOCKER_HOST"] = engine.host
        try:
            yield docker_problem(engine.host)
        finally:
            if saved is None:
                os.environ.pop("DOCKER_HOST")
            else:
                os.environ["DOCKER_HOST"] = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed calls per row (median reported; x10 in sessions)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    baselines: dict[str, float] = {}

    def baseline(python: str) -> float:
        return baselines.get(python) or baselines.setdefault(python, bare_ms(python, args.runs))

    def row(name: str, per_call: float, base: float, target: str = "", overhead: bool = True) -> None:
        extra = f"{per_call - base:>13.1f}" if overhead else f"{'':>13}"
        print(f"{name:<24}{per_call:>10.2f}{base:>10.1f}{extra}{per_call / base:>8.3f}  {target}", flush=True)

    print(f"{'backend':<24}{'median ms':>10}{'bare ms':>10}{'overhead ms':>13}{'ratio':>8}  goal")
    skipped = {}
    with docker_engine() as docker_skip:
        for kind, problem in (("bwrap", bwrap_usable()), ("docker", docker_skip), ("subprocess", None)):
            if problem:
                skipped[kind] = problem
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sandbox = make_sandbox(kind)
            with sandbox:
                # a container's python3 is Debian's, the build of the host's /usr/bin/python3
                base = baseline(default_python() if kind == "docker" else sandbox.python)
                per_call = median_ms(lambda: sandbox.run(code="print(1)", timeout=30), args.runs)
                target = goal(per_call - base, BWRAP_GOAL_MS, "overhead") if kind == "bwrap" else ""
                row(f"{kind} fresh container" if kind == "docker" else kind, per_call, base, target)
                if kind == "docker":
                    with DockerSandbox(warm_pool=2) as pooled:
                        for gap, name in ((0.0, "back to back"), (1.0, "1 s apart")):
                            per_call = median_ms(lambda: pooled.run(code="print(1)", timeout=30), args.runs, gap)
                            row(f"docker pool, {name}", per_call, base)
                with PythonSession(sandbox, timeout=30) as session:
                    session.start()
                    per_call = median_ms(lambda: session.run("print(1)"), args.runs * 10)
                row(f"{kind} warm session", per_call, base, goal(per_call, SESSION_GOAL_MS, "per call"), False)
    for kind, problem in skipped.items():
        print(f"{kind}: skipped ({problem})")


if __name__ == "__main__":
    main()
