"""TurnLimit, InvalidActionPolicy, ObservationFormat and EpisodeRecorder."""

import json

import pytest

import envgym
from envgym.wrappers import ActionExtraction, EpisodeRecorder, InvalidActionPolicy, ObservationFormat, TurnLimit


def guess(**kwargs):
    return envgym.make("games/GuessNumber-v0", wrap=False, **kwargs)


def test_turn_limit_truncates_and_resets_its_count():
    env = TurnLimit(guess(), max_turns=2)
    env.reset(seed=0, options={"split": "train", "task": 0})
    secret = int(env.unwrapped.secret)
    wrong = "1" if secret != 1 else "2"
    assert env.step(wrong)[3] is False
    obs, reward, terminated, truncated, info = env.step(wrong)
    assert truncated and not terminated and info["turn_limit_reached"]
    env.reset(seed=0)
    assert env.step(wrong)[3] is False
    with pytest.raises(ValueError):
        TurnLimit(guess(), 0)


@pytest.mark.parametrize("mode, reward, terminated", [("penalize", -0.25, False), ("terminate", -0.25, True),
                                                       ("pass", 0.0, False)])
def test_invalid_action_policy_modes(mode, reward, terminated):
    env = InvalidActionPolicy(guess(), mode=mode, penalty=0.25)
    env.reset(seed=0)
    obs, r, term, trunc, info = env.step("no number here")
    assert (r, term) == (reward, terminated)
    assert info["invalid_action"] and info["invalid_action_count"] == 1
    env.reset(seed=0)
    _, r, term, _, info = env.step(str(env.unwrapped.oracle_action()))
    assert info["invalid_action_count"] == 0 and r >= 0
    with pytest.raises(ValueError, match="mode must be"):
        InvalidActionPolicy(guess(), mode="ignore")


def test_observation_format_lists_admissible_actions_or_hides_them():
    shown = ObservationFormat(envgym.make("games/Maze-v0"), show_admissible=True)
    obs, info = shown.reset(seed=1)
    assert obs.endswith("Valid actions: " + ", ".join(info["admissible_actions"]))
    hidden = ObservationFormat(envgym.make("games/Maze-v0"), show_admissible=False)
    assert "Valid actions" not in hidden.reset(seed=1)[0]


def test_episode_recorder_writes_one_jsonl_line_per_finished_episode(tmp_path):
    path = tmp_path / "episodes.jsonl"
    env = EpisodeRecorder(envgym.make("games/GuessNumber-v0"), path)
    for seed in (0, 1):
        obs, info = env.reset(seed=seed)
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(env.unwrapped.oracle_action())
            done = terminated or truncated
    env.reset(seed=2)
    env.step("50")  # unfinished: not written
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["seed"] for line in lines] == [0, 1]
    assert lines[0]["env_id"] == "games/GuessNumber-v0"
    assert lines[0]["turns"][-1]["reward"] == 1.0 and lines[0]["turns"][-1]["terminated"]
    assert lines[0]["turns"][-1]["info"]["won"] is True


def test_action_extraction_finds_the_one_admissible_action_a_reply_names():
    env = ActionExtraction(envgym.make("textworld/CoinCollector-v0"))
    obs, info = env.reset(seed=0, options={"split": "test", "task": 0})
    move = env.unwrapped.oracle_action()  # e.g. "go east"
    other = next(a for a in info["admissible_actions"] if a != move)
    assert env.extract(f"Hmm. To reach the coin I would   {move.upper()}, I think.") == move
    assert env.extract(f"Either {move} or {other}?") == f"Either {move} or {other}?"  # ambiguous: unchanged
    assert env.extract(f"{move}ward") == f"{move}ward"  # a phrase, not a substring of a word
    _, _, _, _, info = env.step(f"I'll {move}.")
    assert not info["invalid_action"] and info["extracted_action"] == move
    _, _, _, _, info = env.step("Let me think about the room first.")
    assert info["invalid_action"] and info["extracted_action"] == "Let me think about the room first."


def test_action_extraction_by_tag_takes_the_last_tag():
    env = ActionExtraction(envgym.make("games/Maze-v0"), mode="tag")
    _, info = env.reset(seed=0, options={"split": "test", "task": 0})
    move = info["admissible_actions"][0]
    reply = f"<action>jump</action> no, better: <ACTION> {move} </ACTION>"
    _, _, _, _, info = env.step(reply)
    assert info["extracted_action"] == move and not info["invalid_action"]
    _, _, _, _, info = env.step(move)  # no tag: the reply goes to the env as it is
    assert info["extracted_action"] == move
    with pytest.raises(ValueError, match="mode must be 'tag' or 'admissible'"):
        ActionExtraction(envgym.make("games/Maze-v0"), mode="regex")
