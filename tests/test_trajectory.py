"""Trajectory types and their lossless JSONL / Parquet round trips."""

import dataclasses

import pytest

from envgym.trajectory import Episode, EpisodeEnd, FinishReason, Group, Turn, load_groups, save_groups

# float64 values that a lossy writer would change: many digits, subnormal, a float32 value, -0.0
AWKWARD = [-0.12345678901234568, -5e-324, -2.384185791015625e-07, -0.0, -1.0000000000000002]


def turn(obs_ids, action_ids, reward=0.0, state="s", invalid=False, finish=FinishReason.STOP):
    logprobs = tuple(AWKWARD[i % len(AWKWARD)] for i in range(len(action_ids)))
    return Turn(observation=f"obs {state}", action=f"act {action_ids}", reward=reward, state_key=state,
                invalid_action=invalid, finish=finish, obs_ids=tuple(obs_ids), action_ids=tuple(action_ids),
                logprobs=logprobs, env_time=0.001, model_time=0.1 / 3)


def groups():
    annotated = dataclasses.replace(turn([1, 2, 3], [7, 8]), annotations={
        "advantage": AWKWARD[0], "anchor_size": 3, "new_logprobs": AWKWARD[1:3], "tokens": ["go", " north"]})
    full = Episode("games/Maze-v0", "test", 3, 11, (annotated, turn([4], [9], 1.0, "t")),
                   EpisodeEnd.TERMINATED, won=True, row_starts=(0,), answer="42")
    per_turn = Episode("games/Maze-v0", "test", 3, 11, (turn([1, 2, 3], [7]), turn([1, 2, 3, 7, 5], [6] * 5, 0.5, "u",
                                                                                   True, FinishReason.LENGTH)),
                       EpisodeEnd.TRUNCATED, row_starts=(0, 1))
    other = Episode("games/Maze-v0", "test", 5, 12, (turn([1, 2], [3]),), EpisodeEnd.MAX_TURNS)
    return [Group("games/Maze-v0", "test", 3, 11, (full, per_turn)), Group("games/Maze-v0", "test", 5, 12, (other,))]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_save_and_load_round_trip_exactly(tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    original = groups()
    loaded = load_groups(save_groups(tmp_path / f"groups{suffix}", original))
    assert loaded == original
    logprobs = [lp for g in loaded for e in g.episodes for t in e.turns for lp in t.logprobs]
    assert any(str(lp) == "-0.0" for lp in logprobs) and -5e-324 in logprobs
    assert loaded[0].episodes[0].turns[0].annotations["new_logprobs"] == AWKWARD[1:3]


def test_invalid_values_are_refused_with_a_reason(tmp_path):
    with pytest.raises(ValueError, match="one logprob per sampled id"):
        Turn("o", "a", 0.0, "s", False, action_ids=(1, 2), logprobs=(0.0,))
    with pytest.raises(ValueError, match="row_starts"):
        Episode("x/Y-v0", "test", 0, 0, (Turn("o", "a", 0.0, "s", False),), EpisodeEnd.TERMINATED, row_starts=(1,))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"env_id": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: not a saved envgym group"):
        load_groups(bad)
