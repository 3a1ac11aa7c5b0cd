"""Trajectory types: packing into TurnBatch and token rows, and lossless JSONL / Parquet round trips."""

import dataclasses

import pytest
import torch

from envgym.core import stable_hash
from envgym.trajectory import (Episode, EpisodeEnd, FinishReason, Group, Turn, load_groups, save_groups,
                               to_token_rows, to_turn_batch)

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


def test_token_rows_mask_only_sampled_tokens():
    rows = to_token_rows(groups(), pad_token_id=0)
    assert len(rows) == 4  # one row for the full-history episode, two for the per-turn one, one for the last
    assert rows.input_ids[0] == (1, 2, 3, 7, 8, 4, 9)
    assert rows.loss_mask[0] == (False, False, False, True, True, False, True)
    assert rows.token_turn[0] == (-1, -1, -1, 0, 0, -1, 1)
    assert rows.old_logprobs[0][3:5] == tuple(AWKWARD[:2])
    assert rows.input_ids[2] == (1, 2, 3, 7, 5, 6, 6, 6, 6, 6) and rows.token_turn[2] == (-1,) * 5 + (3,) * 5


def test_batches_respect_the_token_budget():
    rows = to_token_rows(groups(), pad_token_id=0)
    batches = list(rows.batches(max_tokens=14))
    assert [b.rows for b in batches] == [(0, 1), (2,), (3,)]
    b = batches[0]
    assert b.input_ids.shape == (2, 7) and b.input_ids[1, 4:].tolist() == [0, 0, 0]
    assert b.attention_mask[1].tolist() == [1, 1, 1, 1, 0, 0, 0]
    assert b.loss_mask[1].tolist() == [False, False, False, True, False, False, False]
    assert b.token_turn[1, 3].item() == 2 and b.token_turn[1, 4].item() == -1
    assert b.old_logprobs.dtype == torch.float32
    assert [b.rows for b in rows.batches(max_tokens=1)] == [(0,), (1,), (2,), (3,)]


def test_turn_batch_packs_turns_in_token_row_order():
    batch = to_turn_batch(groups())
    assert batch.group.tolist() == [0, 0, 0, 0, 1]
    assert batch.episode.tolist() == [0, 0, 1, 1, 2]
    assert batch.turn.tolist() == [0, 1, 0, 1, 0]
    assert batch.reward.tolist() == [0.0, 1.0, 0.0, 0.5, 0.0]
    assert batch.state.tolist() == [stable_hash(k) for k in ("s", "t", "s", "u", "s")]
    assert batch.invalid.tolist() == [False, False, False, True, False]
    rows = to_token_rows(groups())
    flat_mask = [m for row in rows.loss_mask for m in row]
    flat_owner = [t for row in rows.token_turn for t in row]
    assert batch.loss_mask.tolist() == flat_mask
    assert [t for t, m in zip(batch.token_turn.tolist(), flat_mask) if m] == [t for t in flat_owner if t >= 0]
    assert batch.token_turn[:3].tolist() == [0, 0, 0]  # prompt tokens belong to the turn that added them


def test_text_policy_episodes_cannot_become_token_rows():
    text_only = Episode("games/Maze-v0", "test", 0, 0, (Turn("o", "north", 0.0, "s", False),), EpisodeEnd.TERMINATED)
    with pytest.raises(ValueError, match="no sampled token ids"):
        to_token_rows([Group("games/Maze-v0", "test", 0, 0, (text_only,))])
    assert to_turn_batch([Group("games/Maze-v0", "test", 0, 0, (text_only,))]).num_turns == 1


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
