"""RolloutBatch: the one type between rollout and update, its alignment, and its one packing rule."""

import pytest
import torch

from envgym.core import stable_hash
from envgym.trainers.batch import RolloutBatch, pack
from envgym.trajectory import Episode, EpisodeEnd, Group, Turn
from test_trajectory import AWKWARD, groups


def test_token_rows_mask_only_sampled_tokens():
    batch = RolloutBatch.from_groups(groups())
    assert batch.num_rows == 4  # one row for the full-history episode, two for the per-turn one, one for the last
    assert batch.input_ids[0] == (1, 2, 3, 7, 8, 4, 9)
    assert batch.loss_mask[0] == (False, False, False, True, True, False, True)
    assert batch.token_turn[0] == (0, 0, 0, 0, 0, 1, 1)  # prompt tokens belong to the turn that added them
    assert batch.old_logprobs[0][3:5] == tuple(AWKWARD[:2]) and batch.old_logprobs[0][:3] == (0.0,) * 3
    assert batch.input_ids[2] == (1, 2, 3, 7, 5, 6, 6, 6, 6, 6) and batch.token_turn[2] == (3,) * 10
    assert batch.row_episode == (0, 1, 1, 2)


def test_turn_table_is_aligned_with_the_token_rows():
    batch = RolloutBatch.from_groups(groups())
    turns = batch.turns
    assert turns.group.tolist() == [0, 0, 0, 0, 1]
    assert turns.episode.tolist() == [0, 0, 1, 1, 2]
    assert turns.turn.tolist() == [0, 1, 0, 1, 0]
    assert turns.reward.tolist() == [0.0, 1.0, 0.0, 0.5, 0.0]
    assert turns.state.tolist() == [stable_hash(k) for k in ("s", "t", "s", "u", "s")]
    assert turns.invalid.tolist() == [False, False, False, True, False]
    assert turns.state_text == ("obs s", "obs t", "obs s", "obs u", "obs s")
    assert turns.loss_mask.tolist() == [m for row in batch.loss_mask for m in row]
    assert turns.token_turn.tolist() == [t for row in batch.token_turn for t in row]
    # every sampled token's turn holds the action those tokens are: walk the episodes and compare
    for row, (ids, mask, owner) in enumerate(zip(batch.input_ids, batch.loss_mask, batch.token_turn)):
        episode = batch.episodes[batch.row_episode[row]]
        first_turn = int((turns.episode == batch.row_episode[row]).nonzero()[0])
        sampled = [(t - first_turn, i) for i, m, t in zip(ids, mask, owner) if m]
        for t in {t for t, _ in sampled}:
            assert [i for tt, i in sampled if tt == t] == list(episode.turns[t].action_ids)


def test_with_intrinsic_fills_the_turn_table_only():
    batch = RolloutBatch.from_groups(groups())
    scored = batch.with_intrinsic([0.5, 0.0, -1.0, 0.25, 0.0])
    assert scored.turns.intrinsic.tolist() == [0.5, 0.0, -1.0, 0.25, 0.0] and batch.turns.intrinsic is None
    assert scored.input_ids is batch.input_ids
    with pytest.raises(ValueError, match="different lengths"):
        batch.with_intrinsic([0.0])


def test_micro_batches_respect_the_token_budget():
    batch = RolloutBatch.from_groups(groups(), pad_token_id=0)
    micro = list(batch.micro_batches(max_tokens=14))
    assert [b.rows for b in micro] == [(0, 1), (2,), (3,)]
    b = micro[0]
    assert b.input_ids.shape == (2, 7) and b.input_ids[1, 4:].tolist() == [0, 0, 0]
    assert b.attention_mask[1].tolist() == [1, 1, 1, 1, 0, 0, 0]
    assert b.loss_mask[1].tolist() == [False, False, False, True, False, False, False]
    assert b.token_turn[1, 3].item() == 2 and b.token_turn[1, 4].item() == -1  # padding belongs to no turn
    assert b.sampled_turns.tolist() == [0, 0, 1, 2]
    assert b.old_logprobs.dtype == torch.float32
    assert [b.rows for b in batch.micro_batches(max_tokens=1)] == [(0,), (1,), (2,), (3,)]
    assert [b.rows for b in batch.micro_batches([3, 0], max_tokens=14)] == [(3, 0)]


def test_pack_is_the_budget_rule():
    assert pack([3, 3, 3, 10], 9) == [[0, 1, 2], [3]]
    assert pack([2, 5, 1], 10) == [[0, 1], [2]]  # 2 rows x 5 fits 10; a third would make 15
    assert pack([], 4) == []
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        pack([1], 0)


def test_text_policy_episodes_cannot_be_trained_on():
    text_only = Episode("games/Maze-v0", "test", 0, 0, (Turn("o", "north", 0.0, "s", False),), EpisodeEnd.TERMINATED)
    with pytest.raises(ValueError, match="no sampled token ids"):
        RolloutBatch.from_groups([Group("games/Maze-v0", "test", 0, 0, (text_only,))])
