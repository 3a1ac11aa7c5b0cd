"""Wordle: NYT feedback rules, the shipped word list, refusals, state keys, and the solver oracle."""

import pytest

import envgym
from envgym.envs.games.wordle import Wordle, feedback, load_words


@pytest.mark.parametrize("guess, answer, marks", [
    ("crane", "crane", "GGGGG"),
    ("speed", "abide", "__Y_Y"),   # one 'e' in the answer: the first e takes it, the second is grey
    ("eerie", "there", "Y_Y_G"),   # the green e uses one of the two e's
    ("llama", "hello", "YY___"),   # two 'l's in both, neither in place
    ("allee", "eagle", "YY_YG"),
])
def test_feedback_follows_the_nyt_rules(guess, answer, marks):
    assert feedback(guess, answer) == marks


def test_word_list_ships_with_the_package():
    words = load_words()
    assert 2000 < len(words) < 10_000
    assert all(len(w) == 5 and w.isascii() and w.isalpha() and w.islower() for w in words)
    assert len(set(words)) == len(words)
    assert {"about", "world", "house"} <= set(words)


def test_oracle_wins_test_tasks_within_six_guesses():
    env = envgym.make("games/Wordle-v0")
    for task in range(0, 500, 50):
        obs, info = env.reset(options={"split": "test", "task": task})
        answer = info["answer"]
        for _ in range(6):
            obs, reward, terminated, truncated, info = env.step(env.unwrapped.oracle_action())
            if terminated:
                break
        assert info["won"] and reward == 1.0, (answer, obs)
        assert answer.upper() in obs


def test_refusals_cost_no_guess_and_keep_the_board():
    env = Wordle(max_guesses=2)
    env.reset(options={"split": "train", "task": 5})
    _, _, _, _, info = env.step("about")
    board = env._board()
    for bad in ("", "qzqzq", "toolong", "ab cd", "\x00" * 5):
        obs, reward, terminated, _, bad_info = env.step(bad)
        assert bad_info["invalid_action"] and not terminated and reward == 0.0
        assert board in obs and bad_info["state_key"] == info["state_key"]
    assert "not in the word list" in env.step("qzqzq")[0]
    assert "not a five-letter word" in env.step("hello world")[0]
    wrong = next(w for w in load_words() if w not in (env.answer, "about"))
    obs, _, terminated, _, info = env.step(wrong)
    assert terminated and not info["won"] and env.answer.upper() in obs


def test_state_key_ignores_guess_order():
    env = Wordle()
    env.reset(options={"split": "train", "task": 0})
    first = [env.step(w)[4]["state_key"] for w in ("crane", "moist")][-1]
    env.reset(options={"split": "train", "task": 0})
    second = [env.step(w)[4]["state_key"] for w in ("moist", "crane")][-1]
    assert first == second
    assert first != env.reset(options={"split": "train", "task": 0})[1]["state_key"]


def test_splits_are_disjoint_answers():
    env = Wordle()
    train = {env.task_key("train", k) for k in range(env.num_tasks["train"])}
    test = {env.task_key("test", k) for k in range(env.num_tasks["test"])}
    assert not train & test and len(train) + len(test) == len(load_words())
