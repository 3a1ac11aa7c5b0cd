"""Round trip of one step over OpenEnv on localhost, against the same env in process.

Starts `envgym serve ENV` on 127.0.0.1 (a free port), then plays the same action sequence
(the first admissible action, resetting with seed k when an episode ends) for `--steps` steps:
in process (`envgym.make(ENV)`), through `envgym.make("openenv:URL")` (one kept-open WebSocket),
and through OpenEnv's own `GenericEnvClient(...).sync()`. Prints the mean time per step
and the round trip each adds, with the ratios to in-process, all from this one run.

    .venv/bin/python benchmarks/openenv_round_trip.py [--env games/Maze-v0] [--steps 3000]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections.abc import Callable

import envgym


def play(reset: Callable[[int], dict], step: Callable[[str], tuple[bool, dict]], steps: int) -> float:
    """Seconds per step over `steps` steps (resets excluded from the clock)."""
    episode, info = 0, reset(0)
    elapsed = 0.0
    for _ in range(steps):
        action = (info.get("admissible_actions") or ["look"])[0]
        start = time.perf_counter()
        done, info = step(action)
        elapsed += time.perf_counter() - start
        if done:
            episode += 1
            info = reset(episode)
    return elapsed / steps


def gym_player(env) -> tuple[Callable, Callable]:
    def reset(seed):
        return env.reset(seed=seed)[1]

    def step(action):
        _, _, terminated, truncated, info = env.step(action)
        return terminated or truncated, info

    return reset, step


def openenv_player(client) -> tuple[Callable, Callable]:
    def reset(seed):
        return client.reset(seed=seed).observation["info"]

    def step(action):
        result = client.step({"message": action})
        return result.done, result.observation["info"]

    return reset, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="games/Maze-v0")
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-m", "envgym", "serve", args.env, "--port", "0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        url = re.search(r"on (http://\S+)", line).group(1)
        local = envgym.make(args.env)
        remote = envgym.make(f"openenv:{url}")
        from openenv.core import GenericEnvClient

        client = GenericEnvClient(base_url=url).sync()
        client.connect()
        for player in (gym_player(local), gym_player(remote), openenv_player(client)):  # warm-up
            play(*player, steps=100)
        in_process = play(*gym_player(local), steps=args.steps)
        over_ws = play(*gym_player(remote), steps=args.steps)
        over_openenv_client = play(*openenv_player(client), steps=args.steps)
        client.close()
        remote.close()
    finally:
        server.terminate()
        server.wait()
    print(f"{args.env}, {args.steps} steps each, server and client on 127.0.0.1 (this machine)")
    print(f"  in process:                          {in_process * 1e6:8.1f} us/step")
    for name, seconds in (("openenv:URL (RemoteEnv, one WebSocket)", over_ws),
                          ("OpenEnv's GenericEnvClient.sync()", over_openenv_client)):
        print(f"  {name:<37}{seconds * 1e6:8.1f} us/step = {seconds / in_process:6.1f}x in-process; "
              f"round trip {(seconds - in_process) * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
