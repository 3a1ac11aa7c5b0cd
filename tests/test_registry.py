"""register / make / spec / list_envs, Gymnasium interop, and entry-point plugins."""

import os
import subprocess
import sys
import textwrap

import gymnasium
import pytest

import envgym
from envgym import registration
from envgym.envs.games.guess import GuessNumber
from envgym.wrappers import TurnLimit


@pytest.fixture(autouse=True)
def forget_test_registrations():
    """Ids registered by a test disappear after it, so other tests see only real envs."""
    before = set(registration._registry)
    yield
    for env_id in set(registration._registry) - before:
        del registration._registry[env_id]
        gymnasium.registry.pop(env_id, None)


def test_builtin_ids_are_listed_and_versioned():
    ids = envgym.list_envs()
    assert {"games/GuessNumber-v0", "games/Maze-v0"} <= set(ids)
    assert ids == sorted(ids)


def test_make_applies_turn_limit_and_kwargs():
    env = envgym.make("games/GuessNumber-v0", high=1000)
    assert isinstance(env, TurnLimit) and env.max_turns == 10
    assert env.unwrapped.high == 1000
    assert env.spec.id == "games/GuessNumber-v0" and env.spec.kwargs["high"] == 1000
    assert not isinstance(envgym.make("games/GuessNumber-v0", wrap=False), TurnLimit)


def test_gymnasium_make_builds_the_same_env():
    env = gymnasium.make("games/Maze-v0")
    assert isinstance(env.unwrapped, envgym.Env)
    obs, info = env.reset(seed=4, options={"split": "test", "task": 2})
    ours, our_info = envgym.make("games/Maze-v0").reset(seed=4, options={"split": "test", "task": 2})
    assert obs == ours and info == our_info


def test_unknown_id_names_the_closest_ids():
    with pytest.raises(KeyError, match=r"unknown env id 'games/Maze-v9'; did you mean 'games/Maze-v0'"):
        envgym.make("games/Maze-v9")
    with pytest.raises(KeyError, match="envgym list"):
        envgym.make("zzz/Nothing-v0")


def test_register_validates_ids_and_warns_on_replacement():
    with pytest.raises(ValueError, match="namespace/Name-v0"):
        envgym.register("NoVersion", GuessNumber)
    envgym.register("tests/Guess-v0", GuessNumber, max_turns=3, kwargs={"high": 8})
    with pytest.warns(UserWarning, match="registered already"):
        envgym.register("tests/Guess-v0", GuessNumber, max_turns=4, kwargs={"high": 8})
    env = envgym.make("tests/Guess-v0")
    assert env.max_turns == 4 and env.unwrapped.high == 8


def test_make_rejects_entry_points_that_are_not_envgym_envs():
    envgym.register("tests/NotAnEnv-v0", lambda: object())
    with pytest.raises(TypeError, match="not an envgym.Env"):
        envgym.make("tests/NotAnEnv-v0")


PLUGIN_SETUP = """
from setuptools import setup
setup(name="{name}", version="0.1", py_modules=["{name}"],
      entry_points={{"envgym.envs": ["{name} = {name}:register_envs"]}})
"""


def _write_plugin(root, name, body):
    src = root / f"src_{name}"
    src.mkdir()
    (src / "setup.py").write_text(PLUGIN_SETUP.format(name=name))
    (src / f"{name}.py").write_text(textwrap.dedent(body))
    return src


@pytest.mark.slow
def test_plugin_packages_register_through_the_entry_point_group(tmp_path):
    good = _write_plugin(tmp_path, "envgym_plugin_good", """
        import envgym
        from envgym.envs.games.guess import GuessNumber

        def guess_up_to(high):
            return GuessNumber(high=int(high))

        def register_envs():
            envgym.register("plugin/TinyGuess-v0", GuessNumber, max_turns=5, kwargs={"high": 16})
            envgym.register_prefix("guessupto", "envgym_plugin_good:guess_up_to", argument="high",
                                   source="a test plugin")
    """)
    bad = _write_plugin(tmp_path, "envgym_plugin_bad", """
        def register_envs():
            raise RuntimeError("boom")
    """)
    target = tmp_path / "site"
    for src in (good, bad):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(src)], check=True, capture_output=True)
    code = textwrap.dedent("""
        import warnings, envgym
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ids = envgym.list_envs()
        env = envgym.make("plugin/TinyGuess-v0")
        print("plugin/TinyGuess-v0" in ids, "games/Maze-v0" in ids, env.unwrapped.high,
              envgym.make("guessupto:40").unwrapped.high)
        from envgym.registration import source_of
        print(" | ".join(source_of(i) for i in ("plugin/TinyGuess-v0", "games/Maze-v0", "guessupto:40")))
        print(" | ".join(str(w.message) for w in caught))
    """)
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    found, sources, warned = out.strip().splitlines()
    assert found == "True True 16 40"
    assert sources == ("plugin envgym_plugin_good (envgym_plugin_good:register_envs) | built-in | "
                       "adapter guessupto: a test plugin")
    assert "envgym_plugin_bad" in warned and "RuntimeError: boom" in warned
