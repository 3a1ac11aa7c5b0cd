"""Adapter prefixes (`envgym.make("PREFIX:NAME")`) and the adapters of reasoning-gym, GEM and TextArena.

Every adapter runs against the real package; a test of an adapter whose package
is absent skips, naming the extra that installs it.
"""

import importlib.util

import gymnasium
import pytest

import envgym
from envgym import registration
from envgym.cli import main
from envgym.registration import MissingExtra, source_of

EXTRAS = {"reasoning_gym": ("reasoning_gym", "reasoning-gym"), "gem": ("gem", "gem"),
          "textarena": ("textarena", "textarena")}


def needs(prefix):
    """Skip unless the package of adapter `prefix` is installed."""
    module, extra = EXTRAS[prefix]
    return pytest.mark.skipif(importlib.util.find_spec(module) is None,
                              reason=f"{module} is not installed (pip install 'envgym[{extra}]')")


#: One id per adapter family checked in full (the offline lists are each made and reset below).
CHECKED_IDS = [
    pytest.param("reasoning_gym:leg_counting", marks=needs("reasoning_gym")),
    pytest.param("gem:game:GuessTheNumber-v0-easy", marks=needs("gem")),
    pytest.param("gem:game:Sudoku-v0-easy", marks=needs("gem")),
    pytest.param("textarena:GuessTheNumber-v0", marks=needs("textarena")),
    pytest.param("textarena:TowerOfHanoi-v0", marks=needs("textarena")),
]


@pytest.fixture
def scratch_prefix():
    """A prefix a test registers, removed after it."""
    yield "scratch"
    registration._prefixes.pop("scratch", None)


# ------------------------------------------------------------------------------------------- the prefix mechanism

def test_an_unknown_prefix_lists_the_known_ones():
    with pytest.raises(KeyError) as caught:
        envgym.make("nosuch:Thing-v0")
    message = caught.value.args[0]
    assert "unknown adapter prefix 'nosuch:'" in message
    for prefix in ("gem", "reasoning_gym", "textarena"):
        assert f"{prefix}: " in message


def test_a_missing_package_names_the_extra_to_install(scratch_prefix, capsys):
    envgym.register_prefix(scratch_prefix, "envgym.envs.games.guess:GuessNumber", argument="high",
                           source="a package that is not installed", extra="scratch",
                           requires=("envgym_no_such_module",))
    with pytest.raises(MissingExtra, match=r"pip install 'envgym\[scratch\]'"):
        envgym.spec("scratch:10")
    assert main(["check", "scratch:10"]) == 2  # one line, no traceback
    err = capsys.readouterr().out
    assert "envgym_no_such_module" in err and "Traceback" not in err


def guess_up_to(high: str, **kwargs):
    """GuessNumber up to `high`: the part of the id after the prefix arrives as a str."""
    from envgym.envs.games.guess import GuessNumber

    return GuessNumber(high=int(high), **kwargs)


def test_a_prefix_passes_the_name_and_kwargs_to_its_entry_point(scratch_prefix):
    envgym.register_prefix(scratch_prefix, guess_up_to, argument="high", source="envgym's own GuessNumber",
                           max_turns=3)
    env = envgym.make("scratch:40", low=5)
    assert env.unwrapped.high == 40 and env.unwrapped.low == 5 and env.max_turns == 3
    assert source_of("scratch:40") == "adapter scratch: envgym's own GuessNumber"
    assert gymnasium.make(env.unwrapped.spec).unwrapped.high == 40  # how prefixed ids reach Gymnasium
    with pytest.raises(KeyError, match="names no env after 'scratch:'"):
        envgym.spec("scratch:")
    with pytest.raises(ValueError, match="must be a word"):
        envgym.register_prefix("no spaces", "x:y", argument="a", source="s")


@needs("reasoning_gym")
def test_a_prefix_registered_at_run_time_reaches_pool_workers(scratch_prefix):
    """A worker process knows only the built-in prefixes; the pool hands it the spec of the others."""
    from envgym.pool import EnvPool

    envgym.register_prefix(scratch_prefix, "envgym.envs.adapters.reasoning_gym:ReasoningGymEnv",
                           argument="dataset", source="reasoning-gym under another name")
    options = {"split": "test", "task": 2}
    pool = EnvPool("scratch:leg_counting", 1, backend="process")
    try:
        result = pool.reset({0: (0, options)})[0]
    finally:
        pool.close()
    assert result.error is None
    assert result.observation == envgym.make("scratch:leg_counting").reset(seed=0, options=options)[0]


def test_list_source_says_where_each_id_comes_from(capsys, monkeypatch):
    from envgym import cli

    monkeypatch.setattr(cli.console, "width", 300)  # one row per line
    assert main(["list", "--source"]) == 0
    out = capsys.readouterr().out
    assert any("games/Maze-v0" in line and "built-in" in line for line in out.splitlines())
    assert "built-in" in out and "gem:NAME" in out and "adapter reasoning_gym" in out
    assert "envgym[textarena]" in out  # the extra of each adapter


# ------------------------------------------------------------------------------------------------------ adapters

@pytest.mark.parametrize("env_id", CHECKED_IDS)
def test_adapted_envs_pass_the_checker(env_id):
    report = envgym.check_env(env_id)
    assert report.ok, report.render()


@needs("gem")
def test_gem_offline_games_start_and_others_say_why_not():
    from envgym.envs.adapters.gem import OFFLINE_GAMES

    for game in OFFLINE_GAMES:
        if game == "game:Sokoban-v0":  # -hard and -random take seconds per reset; -easy is the one listed first
            continue
        obs, info = envgym.make(f"gem:{game}-easy").reset(seed=0)
        assert obs and info["state_key"].startswith(f"gem:{game}-easy|")
    with pytest.raises(ValueError, match="could not start .*LookupError.*games that run offline"):
        envgym.make("gem:game:Wordle-v0-easy")  # nltk.download: no network
    with pytest.raises(ValueError, match="did you mean game:Sudoku-v0-easy"):
        envgym.make("gem:game:Sudoku-v0-eas")


@needs("textarena")
def test_textarena_offline_games_start_and_others_say_why_not():
    from envgym.envs.adapters.textarena import OFFLINE_GAMES

    for game in OFFLINE_GAMES:
        obs, info = envgym.make(f"textarena:{game}").reset(seed=0)
        assert obs and info["state_key"].startswith(f"textarena:{game}|")
    with pytest.raises(ValueError, match="needs opponents"):
        envgym.make("textarena:QuantumTicTacToe-v0")
    with pytest.raises(ValueError, match="could not start .*LookupError"):
        envgym.make("textarena:Hangman-v0")


@needs("gem")
def test_interleaved_gem_envs_replay_as_if_alone():
    """GEM seeds the global RNGs; each adapted env draws from streams of its own, so neighbours do not matter."""
    def episode(env, seed, others=()):
        obs, _ = env.reset(seed=seed)
        texts = [obs]
        for _ in range(4):
            for other in others:  # a neighbour in the same process moves between our steps
                other.reset(seed=99)
                other.step("\\boxed{up}")
            texts.append(env.step("\\boxed{left}")[0])
        return texts

    alone = episode(envgym.make("gem:game:Game2048-v0-easy"), 3)
    together = episode(envgym.make("gem:game:Game2048-v0-easy"), 3, [envgym.make("gem:game:Game2048-v0-easy")])
    assert alone == together


@needs("textarena")
def test_textarena_rewards_and_invalid_moves():
    env = envgym.make("textarena:GuessTheNumber-v0")
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step("no brackets here")
    assert info["invalid_action"] and not terminated and reward == 0.0
    secret = env.unwrapped.game.state.game_state["game_number"]
    obs, reward, terminated, _, info = env.step(f"[{secret}]")
    assert terminated and reward == 1.0 and info["won"] and "Game over" in obs


@needs("reasoning_gym")
def test_reasoning_gym_feedback_turn_with_attempts():
    env = envgym.make("reasoning_gym:leg_counting", attempts=2)
    question, info = env.reset(seed=0)
    obs, reward, terminated, _, info = env.step("<answer>-1</answer>")
    assert not terminated and reward == 0.0 and "Try again" in obs and question in obs
    obs, reward, terminated, _, info = env.step(env.unwrapped.oracle_action())
    assert terminated and reward == 1.0 and info["won"]
    arithmetic = envgym.make("reasoning_gym:basic_arithmetic").unwrapped  # some of its seeds divide by zero
    assert len({arithmetic.task_key("test", k) for k in range(100)}) > 90
    with pytest.raises(ValueError, match="did you mean leg_counting"):
        envgym.make("reasoning_gym:leg_countin")
    with pytest.raises(ValueError, match="config"):
        envgym.make("reasoning_gym:leg_counting", config={"min_animals": 0})


# --------------------------------------------------------------------------------------- one training iteration

@pytest.mark.slow
@pytest.mark.parametrize("env_id", [
    pytest.param("reasoning_gym:leg_counting", marks=needs("reasoning_gym")),
    pytest.param("gem:game:GuessTheNumber-v0-easy", marks=needs("gem")),
    pytest.param("textarena:GuessTheNumber-v0", marks=needs("textarena")),
])
def test_one_training_iteration_on_an_adapted_env(tmp_path, env_id):
    from envgym.trainers import Trainer, config_from_dict

    config = config_from_dict({
        "iterations": 1, "threads": 1, "out_dir": str(tmp_path / "run"),
        "env": {"id": env_id, "max_turns": 2},
        "rollout": {"n_groups": 2, "group_size": 2, "max_new_tokens": 4, "context": "window", "window": 0},
        "optim": {"epochs": 1, "micro_batch_tokens": 4096}, "eval": {"every": 100},
        "checkpoint": {"every": 100}})
    metrics = Trainer(config).train_iteration()
    assert metrics["train/episodes"] == 4 and metrics["train/turns"] >= 1
