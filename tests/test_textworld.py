"""TextWorld families: real generated games, the on-disk cache, state keys from facts, oracles, bad input.

Game generation takes seconds, so the games are made once per session in a temporary cache
(`tw_cache`) and the tests that need them are marked slow.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import envgym
from envgym.envs.textworld.env import clean_feedback

pytest.importorskip("textworld")

FAMILIES = ["textworld/CoinCollector-v0", "textworld/TreasureHunter-v0", "textworld/Cooking-v0",
            "textworld/Simple-v0", "textworld/Custom-v0"]


@pytest.fixture(scope="session")
def tw_cache(tmp_path_factory):
    """A cache folder shared by the session's TextWorld tests (ENVGYM_CACHE points at it)."""
    folder = tmp_path_factory.mktemp("envgym-cache")
    saved = os.environ.get("ENVGYM_CACHE")
    os.environ["ENVGYM_CACHE"] = str(folder)
    yield folder
    if saved is None:
        os.environ.pop("ENVGYM_CACHE", None)
    else:
        os.environ["ENVGYM_CACHE"] = saved


@pytest.fixture(scope="session")
def coin(tw_cache):
    env = envgym.make("textworld/CoinCollector-v0")
    env.reset(options={"split": "test", "task": 0})
    return env


def test_clean_feedback_strips_the_banner_status_bar_and_menu():
    raw = ("\n\n\n      ________  ________ \n     |        \\|        \\\n      \\$$$$$$$$| $$$$$$$$\n\n"
           "Welcome to TextWorld! Find the coin.\n\n-= Attic =-\nYou've entered an attic.\n\n\n\n"
           "There is an exit to the south.\n\n>          -= Attic =-0/1\n")
    assert clean_feedback(raw) == ("Welcome to TextWorld! Find the coin.\n\n-= Attic =-\nYou've entered an attic."
                                   "\n\nThere is an exit to the south.")
    end = ("You pick up the coin.\n\n            *** The End ***\n\nYou scored 1 out of a possible 1, in 2 turns."
           "\n\n\nWould you like to RESTART, RESTORE a saved game, QUIT or UNDO the last command?\n>    ")
    assert clean_feedback(end).endswith("*** The End ***\n\nYou scored 1 out of a possible 1, in 2 turns.")


def test_importing_without_textworld_works_and_making_names_the_extra():
    code = textwrap.dedent("""
        import sys
        sys.modules["textworld"] = None  # as if it were not installed
        import envgym
        assert "textworld/Cooking-v0" in envgym.list_envs()
        try:
            envgym.make("textworld/Cooking-v0")
        except ImportError as exc:
            assert "envgym[textworld]" in str(exc), exc
            print("clear error")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "clear error" in out.stdout


def test_task_keys_are_disjoint_and_cheap():
    env = envgym.make("textworld/Cooking-v0").unwrapped
    train = {env.task_key("train", k) for k in range(5000)}
    test = {env.task_key("test", k) for k in range(5000)}
    assert len(train) == len(test) == 5000 and not train & test


@pytest.mark.slow
@pytest.mark.parametrize("env_id", FAMILIES)
def test_oracle_wins_a_test_game_of_every_family(tw_cache, env_id):
    env = envgym.make(env_id)
    obs, info = env.reset(options={"split": "test", "task": 0})
    assert "$$$$" not in obs and obs.strip()
    assert info["walkthrough"] and info["max_score"] >= 1 and info["score"] == 0
    total, terminated, truncated = 0.0, False, False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(env.unwrapped.oracle_action())
        total += reward
    assert info["won"] and terminated and not info["lost"]
    assert total == pytest.approx(info["max_score"] + 1.0)  # every point, then the win bonus
    assert "RESTART" not in obs


@pytest.mark.slow
def test_oracle_recovers_after_a_detour(coin):
    obs, info = coin.reset(options={"split": "test", "task": 0})
    first = info["walkthrough"][0]
    back = {"go south": "go north", "go north": "go south", "go east": "go west", "go west": "go east"}[first]
    coin.step(first)
    coin.step(back)  # off the walkthrough: the oracle must plan from here
    for _ in range(len(info["walkthrough"]) + 2):
        _, _, terminated, _, step_info = coin.step(coin.unwrapped.oracle_action())
        if terminated:
            break
    assert step_info["won"]


@pytest.mark.slow
def test_state_key_comes_from_the_world_not_the_text(coin):
    _, start = coin.reset(options={"split": "test", "task": 0})
    move = start["walkthrough"][0]
    back = {"go south": "go north", "go north": "go south", "go east": "go west", "go west": "go east"}[move]
    there = coin.step(move)[4]["state_key"]
    obs_back, _, _, _, info_back = coin.step(back)
    looked_obs, _, _, _, looked = coin.step("inventory")
    assert there != start["state_key"]
    assert info_back["state_key"] == start["state_key"] == looked["state_key"]
    assert obs_back != looked_obs  # two different texts, one world state
    assert len(start["state_key"]) == 24


@pytest.mark.slow
def test_bad_commands_get_the_games_refusal(coin):
    _, info0 = coin.reset(options={"split": "test", "task": 0})
    for bad in ("xyzzy", "take unicorn", "go up", "\x00\xff\x1b[31m" * 64, "go north " * 100_000):
        obs, reward, terminated, truncated, info = coin.step(bad)
        assert info["invalid_action"] and reward == 0.0 and not terminated
        assert obs and info["state_key"] == info0["state_key"]
    assert "not a verb" in coin.step("xyzzy")[0]
    assert coin.step("")[4]["invalid_action"]
    with pytest.raises(TypeError):
        coin.step(b"go north")


@pytest.mark.slow
def test_sparse_rewards_give_only_the_outcome(tw_cache):
    env = envgym.make("textworld/Simple-v0", sparse=True)
    _, info = env.reset(options={"split": "test", "task": 0})
    rewards = [env.step(c)[1] for c in info["walkthrough"]]
    assert rewards[:-1] == [0.0] * (len(rewards) - 1) and rewards[-1] == 1.0


@pytest.mark.slow
def test_cache_is_reused_and_keeps_inform7_files_out_of_home(tw_cache, tmp_path):
    """Two processes make the same new game at once: it is generated once, and HOME stays clean."""
    home = tmp_path / "home"
    home.mkdir()
    log = tmp_path / "made.log"
    code = textwrap.dedent(f"""
        from envgym.envs.textworld import games
        def make(options):
            with open({str(log)!r}, "a") as f:
                f.write("made\\n")
            return games.custom(2, 2, 2)(options)
        print(games.game_file("race", {{"n": 1}}, 7, make))
    """)
    env = {**os.environ, "ENVGYM_CACHE": str(tmp_path / "cache"), "HOME": str(home)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    paths = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert paths[0] == paths[1] and Path(paths[0]).exists() and Path(paths[0]).with_suffix(".json").exists()
    assert log.read_text().count("made") == 1
    folder = Path(paths[0]).parent
    assert sorted(p.suffix for p in folder.iterdir()) == [".json", ".lock", ".z8"]  # no temp folders left
    assert list(home.iterdir()) == []
