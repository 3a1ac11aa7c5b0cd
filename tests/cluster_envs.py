"""An env that says where it runs, for the Ray cluster tests (importable by Ray workers on every node).

`WhereAmI` is GuessNumber whose step observations end with the Ray node, process
and env instance that produced them (the first observation must not: a group's
episodes start from one observation), and whose steps take 0.3 s, so a test can
see where each episode ran and remove a node while episodes are in flight.
"""

import os
import time

import envgym
from envgym.envs.games.guess import GuessNumber


def location(env) -> str:
    try:
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    except ImportError:
        node = "local"
    return f"[node {node} pid {os.getpid()} env {id(env)}]"


class WhereAmI(GuessNumber):
    def step(self, action):
        time.sleep(0.3)
        obs, reward, terminated, truncated, info = super().step(action)
        return f"{obs} {location(self)}", reward, terminated, truncated, info


envgym.register("cluster/WhereAmI-v0", "cluster_envs:WhereAmI", max_turns=4)
