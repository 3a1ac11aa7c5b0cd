"""envgym: multi-turn text and tool environments for LLM agents, with turn-level RL.

    import envgym
    env = envgym.make("games/Maze-v0")
    obs, info = env.reset(seed=0, options={"split": "test", "task": 3})
    obs, reward, terminated, truncated, info = env.step("north")
"""

from envgym.core import Env, TextSpace, split_of, stable_hash, task_seed
from envgym.registration import EnvSpec, list_envs, make, prefixes, register, register_prefix, spec

__version__ = "0.1.0"

__all__ = ["Env", "EnvSpec", "TextSpace", "check_env", "list_envs", "make", "prefixes", "register",
           "register_prefix", "spec", "split_of",
           "stable_hash", "task_seed"]


def check_env(env_or_id, **kwargs):
    """Run Gymnasium's checker and the text-env checks; see `envgym.checker.check_env`."""
    from envgym.checker import check_env as _check_env

    return _check_env(env_or_id, **kwargs)
