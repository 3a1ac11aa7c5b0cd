"""TurnBatch validation and constructors, the registry's errors and extension, scans, token broadcast."""

import importlib.util
import math
import os

import numpy as np
import pytest
import torch

import envgym.trainers.advantages as adv
from envgym.trainers.advantages import (
    ESTIMATORS,
    TurnBatch,
    broadcast_to_tokens,
    compute_advantages,
    discounted_returns,
    min_returns,
    register_estimator,
    standardize,
)
from envgym.trainers.advantages import reference


def tensors(**fields):
    base = dict(group=[0, 0, 0], episode=[4, 4, 9], turn=[0, 1, 0], reward=[0.0, 1.0, 1.0], state=[1, 2, 1])
    base.update(fields)
    dtypes = dict(group=torch.int64, episode=torch.int64, turn=torch.int64, reward=torch.float32,
                  state=torch.int64, parent=torch.int64, branch_turn=torch.int64)
    return {k: torch.tensor(v, dtype=dtypes[k]) for k, v in base.items()}


def test_constructor_accepts_a_well_formed_layout():
    batch = TurnBatch(**tensors())
    assert batch.num_turns == 3


@pytest.mark.parametrize("fields, message", [
    (dict(turn=[0, 2, 0]), "turns out of order at row 1: episode 4 has turn 2 after turn 0"),
    (dict(turn=[1, 2, 0]), "turns out of order at row 0"),
    (dict(episode=[4, 9, 4], turn=[0, 0, 0]), "episode 4 is not contiguous"),
    (dict(group=[0, 1, 1]), "episode 4 changes group at row 1"),
    (dict(reward=[0.0, float("nan"), 1.0]), r"reward has NaN or infinite values at rows \[1\]"),
    (dict(reward=[0.0, 1.0]), "per-turn fields have different lengths"),
    (dict(parent=[-1, -1, 4]), "parent and branch_turn come together"),
    (dict(parent=[-1, -1, 4], branch_turn=[-1, 0, 1]), "branch_turn changes within episode 4 at row 1"),
    (dict(parent=[-1, -1, 4], branch_turn=[-1, -1, 2]), "branches at turn 2 of episode 4, which has turns 0..1"),
    (dict(parent=[9, 9, -1], branch_turn=[0, 0, -1]), "branches from episode 9, which is not an earlier episode"),
    (dict(parent=[-1, -1, -1], branch_turn=[0, 0, -1]), "episode 4 has no parent but branch_turn 0"),
    (dict(group=[0, 0, 1], parent=[-1, -1, 4], branch_turn=[-1, -1, 0]), "in group 1 but its parent 4 is in group 0"),
])
def test_validation_names_what_is_wrong(fields, message):
    with pytest.raises(ValueError, match=message):
        TurnBatch(**tensors(**fields))


def test_validation_checks_dtypes_tokens_and_intrinsic():
    with pytest.raises(ValueError, match="TurnBatch.reward must be torch.float32, got torch.float64"):
        TurnBatch(**{**tensors(), "reward": torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)})
    with pytest.raises(ValueError, match="TurnBatch.group must be a torch.Tensor"):
        TurnBatch(**{**tensors(), "group": [0, 0, 0]})
    with pytest.raises(ValueError, match="intrinsic has NaN"):
        TurnBatch(**tensors(), intrinsic=torch.tensor([0.0, float("inf"), 0.0]))
    with pytest.raises(ValueError, match="token_turn and loss_mask come together"):
        TurnBatch(**tensors(), token_turn=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"token_turn\[1\] = 3 is not a turn row"):
        TurnBatch(**tensors(), token_turn=torch.tensor([0, 3]), loss_mask=torch.tensor([True, True]))


def test_batch_is_frozen():
    batch = TurnBatch(**tensors())
    with pytest.raises(AttributeError):
        batch.reward = torch.zeros(3)


def test_from_lists_converts_and_derives_turns():
    batch = TurnBatch.from_lists(group=np.array([3, 3, 3]), episode=[7, 7, 2], reward=[0, 1, 1],
                                 token_turn=[0, 2])
    assert batch.turn.tolist() == [0, 1, 0]
    assert batch.reward.dtype == torch.float32
    assert batch.state.tolist() == [0, 1, 2]  # no state given: no two turns share one
    assert batch.loss_mask.tolist() == [True, True]


def test_from_episodes_lays_out_nested_lists():
    batch = TurnBatch.from_episodes([[0, 1], [2]], group=[5, 6], states=[[1, 2], [3]], invalid=[[0, 1], [0]])
    assert batch.episode.tolist() == [0, 0, 1]
    assert batch.group.tolist() == [5, 5, 6]
    assert batch.invalid.tolist() == [False, True, False]
    with pytest.raises(ValueError, match="states must have the same episode lengths"):
        TurnBatch.from_episodes([[0, 1]], group=[0], states=[[1]])


def test_unknown_estimator_option_choice_and_backend_are_named():
    batch = TurnBatch.from_episodes([[1.0], [0.0]], group=[0, 0])
    with pytest.raises(ValueError, match=r"unknown estimator 'gipo'; valid estimators: \['drgrpo', 'gigpo'"):
        compute_advantages(batch, "gipo")
    with pytest.raises(ValueError,
                       match=r"unknown option 'gama' for estimator 'gigpo'; did you mean 'gamma'\? valid options"):
        compute_advantages(batch, "gigpo", gama=0.9)
    with pytest.raises(ValueError, match=r"gigpo: mode='std' is not one of \['mean_std_norm', 'mean_norm'\]"):
        compute_advantages(batch, "gigpo", mode="std")
    with pytest.raises(ValueError, match=r"unknown backend 'cuda'; valid backends: \['torch', 'triton', 'reference'\]"):
        compute_advantages(batch, "grpo", backend="cuda")
    with pytest.raises(ValueError, match=r"gamma=1.5 must be a number in \[0, 1\]"):
        compute_advantages(batch, "turn_grpo", gamma=1.5)
    with pytest.raises(ValueError, match="igpo: normalize='separate'"):
        compute_advantages(TurnBatch.from_episodes([[1.0]], group=[0], intrinsic=[[0.0]]), "igpo",
                           normalize="separate", order="discount_then_normalize")
    with pytest.raises(ValueError, match=r"grouping='similarity' needs batch.state_text"):
        compute_advantages(batch, "gigpo", grouping="similarity")


@pytest.mark.parametrize("weighted", [False, True])
def test_standardize_episode_hint_gives_the_same_statistics(weighted):
    # interleaved groups of whole episodes: the hint sums per episode first, the plain path per row
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 41, (60,), generator=gen).tolist()
    groups = torch.randint(0, 25, (60,), generator=gen).tolist()
    batch = TurnBatch.from_episodes([torch.randn(k, generator=gen).tolist() for k in lengths], group=groups)
    seg = adv.Segments.of(batch)
    x = batch.reward.double()
    weight = torch.rand(batch.num_turns, generator=gen, dtype=torch.float64) * 3 if weighted else None
    options = dict(weight=weight, std="sample", singleton="raw")
    plain = standardize(adv.ops.TORCH_OPS, x, seg.group_of_turn, seg.num_groups, **options)
    hinted = standardize(adv.ops.TORCH_OPS, x, seg.group_of_turn, seg.num_groups, episodes=seg, **options)
    torch.testing.assert_close(hinted, plain, rtol=1e-12, atol=1e-12)


def test_every_builtin_estimator_has_a_reference_with_the_same_options():
    assert set(ESTIMATORS) == {"grpo", "drgrpo", "rloo", "reinforce_pp", "turn_grpo", "gigpo", "igpo", "prime",
                               "vineppo", "spo_tree"}
    for spec in ESTIMATORS.values():
        assert spec.reference is not None


def test_register_estimator_adds_a_user_estimator_on_every_backend():
    @register_estimator("test_scaled_grpo")
    def scaled_grpo(batch, ops, *, factor: float = 2.0):
        """factor * Dr. GRPO: a user estimator built on the shared primitives."""
        seg = adv.Segments.of(batch)
        returns = ops.segment_sum(batch.reward.double(), seg.episode_of_turn, seg.num_episodes)
        centred = standardize(ops, returns, seg.episode_group, seg.num_groups, scale=False)
        return factor * seg.per_turn(centred)

    try:
        batch = TurnBatch.from_episodes([[1.0, 1.0], [0.0]], group=[0, 0])
        assert compute_advantages(batch, "test_scaled_grpo", factor=3.0).tolist() == [3.0, 3.0, -3.0]
        with pytest.raises(ValueError, match="has no reference implementation"):
            compute_advantages(batch, "test_scaled_grpo", backend="reference")
        with pytest.raises(ValueError, match="already registered"):
            register_estimator("test_scaled_grpo")(scaled_grpo)
    finally:
        del ESTIMATORS["test_scaled_grpo"]


def test_register_estimator_requires_defaults_and_matching_reference():
    with pytest.raises(ValueError, match="every option needs a default"):
        register_estimator("test_bad")(lambda batch, ops, *, gamma: None)
    with pytest.raises(ValueError, match="same options"):
        register_estimator("test_bad", reference=lambda batch, *, gamma=0.5: None)(
            lambda batch, ops, *, gamma=1.0: None)
    assert "test_bad" not in ESTIMATORS


def test_discounted_and_min_returns_by_hand():
    values = torch.tensor([1.0, 2.0, 4.0, 3.0, -1.0])
    episode = torch.tensor([8, 8, 8, 2, 2])
    # gamma 0.5: episode 8: G2 = 4, G1 = 2 + 0.5 * 4 = 4, G0 = 1 + 0.5 * 4 = 3; episode 2: G1 = -1, G0 = 3 - 0.5.
    assert discounted_returns(values, episode, 0.5).tolist() == [3.0, 4.0, 4.0, 2.5, -1.0]
    assert discounted_returns(values, episode, 0.0).tolist() == values.tolist()
    assert discounted_returns(values, episode, 1.0).tolist() == [7.0, 6.0, 4.0, 2.0, -1.0]
    # min over the rest of the episode: [min(1,2,4), min(2,4), 4 | min(3,-1), -1].
    assert min_returns(values, episode).tolist() == [1.0, 2.0, 4.0, -1.0, -1.0]
    assert discounted_returns(values, episode, 0.5).dtype == torch.float32


def test_discounted_returns_stay_exact_on_long_episodes():
    # One reward of 1 at the end of a 3000-turn episode: G_t = gamma^(2999 - t), no overflow or 0/0.
    values = torch.zeros(3000, dtype=torch.float64)
    values[-1] = 1.0
    episode = torch.zeros(3000, dtype=torch.int64)
    for gamma in (0.5, 0.95):
        got = discounted_returns(values, episode, gamma)
        expected = torch.tensor([gamma ** (2999 - t) for t in range(3000)], dtype=torch.float64)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=0.0)
    assert math.isfinite(float(discounted_returns(values, episode, 0.0).sum()))


def test_scans_match_the_reference_on_random_episodes():
    generator = torch.Generator().manual_seed(0)
    episode = torch.sort(torch.randint(0, 40, (500,), generator=generator)).values
    values = torch.randn(500, dtype=torch.float64, generator=generator)
    for gamma in (0.0, 0.3, 0.95, 1.0):
        torch.testing.assert_close(discounted_returns(values, episode, gamma),
                                   reference.discounted_returns(values, episode, gamma), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(min_returns(values, episode), reference.min_returns(values, episode))


def test_broadcast_to_tokens_gathers_and_masks():
    batch = TurnBatch.from_lists(group=[0, 0], episode=[0, 1], reward=[1, 0], token_turn=[0, 0, 1, 1],
                                 loss_mask=[True, False, True, True])
    advantages = torch.tensor([0.5, -2.0])
    for backend in ("torch", "reference"):
        assert broadcast_to_tokens(advantages, batch, backend=backend).tolist() == [0.5, 0.0, -2.0, -2.0]
    with pytest.raises(ValueError, match="expected \\(2,\\): one per turn"):
        broadcast_to_tokens(torch.zeros(3), batch)
    with pytest.raises(ValueError, match="needs the batch's token fields"):
        broadcast_to_tokens(advantages, TurnBatch.from_lists(group=[0], episode=[0], reward=[1]))


def test_triton_backend_errors_name_the_fix(monkeypatch):
    batch = TurnBatch.from_episodes([[1.0], [0.0]], group=[0, 0])
    if importlib.util.find_spec("triton") is not None and os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(RuntimeError, match="runs on CUDA tensors.*TRITON_INTERPRET=1"):
            compute_advantages(batch, "grpo", backend="triton")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else find_spec(name, *a))
    with pytest.raises(RuntimeError, match="needs the triton package"):
        compute_advantages(batch, "grpo", backend="triton")
