"""Env throughput: reset latency (cold and cached) and median step latency per family.

Baselines are measured in the same run: Gymnasium's own FrozenLake stepped with its
ANSI text rendering (for the puzzle and toy-text envs), and for TextWorld the raw
game driven through `textworld.start` with the same requested information.
Goals: puzzle envs >= 30,000 steps/s; envgym's TextWorld step <= 1.2x and reset
<= 1.5x the raw game's (cached game). Run single-threaded:

    OMP_NUM_THREADS=1 python benchmarks/env_throughput.py [--textworld-family CoinCollector]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import gymnasium

import envgym

PUZZLES = ["games/Sokoban-v0", "games/Wordle-v0", "games/Maze-v0", "games/GuessNumber-v0", "toytext/FrozenLake-v0",
           "toytext/Taxi-v0", "toytext/CliffWalking-v0", "toytext/Blackjack-v0"]
STEP_GOAL = 30_000


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def verdict(ok: bool) -> str:
    return "goal met" if ok else "GOAL MISSED"


def step_samples(reset: Callable[[], list[str]], step: Callable[[str], bool], n: int) -> list[float]:
    """Per-step times over `n` steps, cycling through the actions `reset` returns and resetting when done."""
    samples: list[float] = []
    while len(samples) < n:
        actions = reset()
        for i in range(10 * len(actions)):
            t = time.perf_counter()
            done = step(actions[i % len(actions)])
            samples.append(time.perf_counter() - t)
            if done or len(samples) >= n:
                break
    return samples


def bench_puzzle(env_id: str, n: int) -> None:
    env = envgym.make(env_id, wrap=False)
    cold = timed(lambda: env.reset(options={"split": "test", "task": 3}))
    cached = [timed(lambda: env.reset(options={"split": "test", "task": 3})) for _ in range(50)]
    base = env.unwrapped
    names = {"games/Wordle-v0": ["crane", "moist", "about", "world", "house", "qzqzq"],
             "games/GuessNumber-v0": ["50", "25", "75", "12", "88", "hello"]}.get(env_id)

    def reset() -> list[str]:
        _, info = env.reset(options={"split": "train", "task": 7})
        return names or list(getattr(base, "action_names", None) or ["north", "east", "south", "west", "fly"])

    samples = step_samples(reset, lambda a: env.step(a)[2], n)
    rate = 1e6 / median_us(samples)
    print(f"{env_id:28s} reset cold {cold * 1e3:8.2f} ms  cached {median_us(cached):8.1f} us  "
          f"step {median_us(samples):6.1f} us = {rate:9,.0f} steps/s ({rate / STEP_GOAL:4.2f}x goal: "
          f"{verdict(rate >= STEP_GOAL)})")


def bench_gymnasium_frozenlake(n: int) -> None:
    env = gymnasium.make("FrozenLake-v1", render_mode="ansi", is_slippery=False).unwrapped

    def reset() -> list[str]:
        env.reset(seed=0)
        return ["0", "1", "2", "3"]

    def step(a: str) -> bool:
        out = env.step(int(a))
        env.render()
        return out[2]

    samples = step_samples(reset, step, n)
    print(f"{'baseline gymnasium FrozenLake':28s} (ansi render)  step {median_us(samples):6.1f} us = "
          f"{1e6 / median_us(samples):9,.0f} steps/s")


def bench_textworld(family: str, n: int) -> None:
    import textworld

    with tempfile.TemporaryDirectory() as cache:
        os.environ["ENVGYM_CACHE"] = cache
        env = envgym.make(f"textworld/{family}-v0", wrap=False)
        cold = timed(lambda: env.reset(options={"split": "test", "task": 0}))
        base = env.unwrapped
        path = base.game_path("test", 0)
        env.reset(options={"split": "train", "task": 0})  # another game: the next reset must switch back
        switch = timed(lambda: env.reset(options={"split": "test", "task": 0}))

        raw = textworld.start(path, base._requested)
        raw.reset()
        raw_reset = [timed(raw.reset) for _ in range(30)]
        ours_reset = [timed(lambda: env.reset(options={"split": "test", "task": 0})) for _ in range(30)]

        def raw_walk() -> list[str]:
            return list(raw.reset()["game"].walkthrough) + ["look", "xyzzy"]

        def ours_walk() -> list[str]:
            return env.reset(options={"split": "test", "task": 0})[1]["walkthrough"] + ["look", "xyzzy"]

        raw_steps = step_samples(raw_walk, lambda a: raw.step(a)[2], n)
        our_steps = step_samples(ours_walk, lambda a: env.step(a)[2], n)
        env.reset(options={"split": "test", "task": 0})
        key_us = median_us([timed(base._state_key) for _ in range(2000)])
        raw.close()
        env.close()
    step_ratio = median_us(our_steps) / median_us(raw_steps)
    reset_ratio = median_us(ours_reset) / median_us(raw_reset)
    print(f"textworld/{family}-v0: reset cold (generate + compile) {cold:6.2f} s, switch to a cached game "
          f"{switch * 1e3:6.1f} ms, facts in state key: {len(base._state['_facts'])}")
    print(f"  reset  raw textworld.start env {median_us(raw_reset) / 1e3:6.2f} ms  "
          f"envgym {median_us(ours_reset) / 1e3:6.2f} ms"
          f"  ratio {reset_ratio:4.2f} (goal <= 1.5: {verdict(reset_ratio <= 1.5)})")
    print(f"  step   raw textworld.start env {median_us(raw_steps) / 1e3:6.2f} ms  "
          f"envgym {median_us(our_steps) / 1e3:6.2f} ms"
          f"  ratio {step_ratio:4.2f} (goal <= 1.2: {verdict(step_ratio <= 1.2)})")
    print(f"  state key from facts {key_us:5.1f} us per state (goal ~5-10 us)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000, help="steps timed per puzzle env")
    parser.add_argument("--textworld-steps", type=int, default=300)
    parser.add_argument("--textworld-family", action="append",
                        help="TextWorld families to time (default: CoinCollector, Simple)")
    args = parser.parse_args()
    bench_gymnasium_frozenlake(args.steps)
    for env_id in PUZZLES:
        bench_puzzle(env_id, args.steps)
    try:
        import textworld  # noqa: F401
    except ImportError:
        print("textworld is not installed: pip install 'envgym[textworld]' to time it")
        return
    for family in args.textworld_family or ["CoinCollector", "Simple"]:
        bench_textworld(family, args.textworld_steps)


if __name__ == "__main__":
    main()
