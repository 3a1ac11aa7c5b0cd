"""Turn-reward models: IGPO's information gain arithmetic and PRIME's online implicit PRM."""

import logging
import math

import numpy as np
import pytest
import torch

from envgym.models import tiny_model, word_level_tokenizer
from envgym.trainers.config import TurnRewardOptions
from envgym.trainers.rewards import ImplicitPRM, InfoGainReward
from envgym.trainers.batch import RolloutBatch
from envgym.trainers.rewards.health import FailureStreak
from envgym.trainers.rewards.implicit_prm import _pair_accuracy
from envgym.trainers.rewards.info_gain import info_gain_profile
from envgym.trajectory import Episode, EpisodeEnd, Group, Turn


def episode(actions, won, answer="7", obs=(5, 6), row_starts=(0,), states=None, invalid=()):
    states = states or [f"s{t}" for t in range(len(actions))]
    turns = tuple(Turn(f"obs{t}", "x", float(won and t == len(actions) - 1), states[t], t in invalid,
                       obs_ids=obs if t in row_starts else obs[:1], action_ids=tuple(a), logprobs=(-1.0,) * len(a))
                  for t, a in enumerate(actions))
    return Episode("test/Env-v0", "train", 0, 0, turns, EpisodeEnd.TERMINATED, won, row_starts, answer)


class LengthScoringPolicy:
    """score = -len(prompt)/100 for every continuation token: log p_t is a known function of the context."""

    tokenizer = word_level_tokenizer(["7", "it", "is", "."])

    def __init__(self):
        self.calls = []

    def score(self, prompts, continuations):
        self.calls.append((prompts, continuations))
        return [[-len(p) / 100] * len(c) for p, c in zip(prompts, continuations)]


@pytest.mark.parametrize("kind", ["log_prob_diff", "prob_diff"])
def test_info_gain_is_the_change_of_answer_probability_between_turns(kind):
    policy = LengthScoringPolicy()
    e = episode([(1, 2), (3,), (4,)], won=True)
    reward = InfoGainReward(policy, TurnRewardOptions(kind="info_gain", info_gain=kind))
    intrinsic, metrics = reward.turn_rewards(RolloutBatch.from_groups([Group("test/Env-v0", "train", 0, 0, (e,))]))
    (prompts, continuations), = policy.calls
    # the context before action t: every earlier obs and action of the row, then obs_t
    assert prompts == [[5, 6], [5, 6, 1, 2, 5], [5, 6, 1, 2, 5, 3, 5]]
    assert all(c == [policy.tokenizer.convert_tokens_to_ids("7")] for c in continuations)  # the answer's tokens only
    logp = [-len(p) / 100 for p in prompts]
    value = logp if kind == "log_prob_diff" else [math.exp(x) for x in logp]
    assert intrinsic == pytest.approx([value[1] - value[0], value[2] - value[1], 0.0])
    assert metrics["info_gain/answer_prob_first"] == pytest.approx(math.exp(logp[0]))


def test_info_gain_with_one_row_per_turn_uses_each_rows_own_prompt():
    policy = LengthScoringPolicy()
    e = episode([(1,), (2,)], won=False, row_starts=(0, 1))
    InfoGainReward(policy, TurnRewardOptions(kind="info_gain")).turn_rewards(
        RolloutBatch.from_groups([Group("test/Env-v0", "train", 0, 0, (e,))]))
    assert policy.calls[0][0] == [[5, 6], [5, 6]]


def test_info_gain_needs_a_gold_answer():
    e = episode([(1,)], won=False, answer=None)
    with pytest.raises(ValueError, match=r"info\['answer'\]"):
        InfoGainReward(LengthScoringPolicy(), TurnRewardOptions(kind="info_gain")).turn_rewards(
            RolloutBatch.from_groups([Group("test/Env-v0", "train", 0, 0, (e,))]))


@pytest.mark.parametrize("loss", ["ce", "dpo"])
def test_implicit_prm_learns_to_reward_the_winning_turns(loss):
    tokenizer = word_level_tokenizer(["a", "b", "c"])
    a, b = tokenizer.convert_tokens_to_ids(["a", "b"])
    model = tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2)
    groups = [Group("test/Env-v0", "train", 0, 0, (episode([(a,), (a,)], won=True),
                                                   episode([(b,), (b,)], won=False, invalid=(1,))))
              for _ in range(2)]
    batch = RolloutBatch.from_groups(groups)
    prm = ImplicitPRM(model, TurnRewardOptions(kind="implicit_prm", prm_loss=loss, prm_lr=1e-2, prm_beta=0.5))
    first, _ = prm.turn_rewards(batch)  # scored before the first update: PRM == reference
    assert first == pytest.approx([0.0] * 8, abs=1e-6)
    for _ in range(10):
        rewards, metrics = prm.turn_rewards(batch)
    won, lost = rewards[0] + rewards[1], rewards[2] + rewards[3]
    assert won > lost
    if loss == "ce":
        assert metrics["prm/accuracy"] == 1.0  # sign of each episode's summed reward matches its outcome
    assert metrics["prm/pair_accuracy"] == 1.0 and metrics["prm/below_chance_streak"] == 0.0
    assert metrics["prm/reward_invalid_minus_valid"] < 0  # the losers' invalid turns earn less than the rest
    state = prm.state_dict()
    fresh = ImplicitPRM(model, TurnRewardOptions(kind="implicit_prm", prm_loss=loss))
    fresh.load_state_dict(state)
    assert all(torch.equal(p, q) for p, q in zip(fresh.prm.parameters(), prm.prm.parameters()))


def test_info_gain_profile_splits_turns_that_changed_the_state_from_valid_ones_that_did_not():
    # turn 0 changes the state, turn 1 repeats it, turn 2 is invalid and repeats it, turn 3 is the answer
    e = episode([(1,)] * 4, won=True, states=["a", "b", "b", "b"], invalid=(2,))
    lost = episode([(1,)] * 2, won=False, states=["a", "a"])
    profile = info_gain_profile([e, lost], [[0.5, 0.1, -0.2, 0.0], [0.05, 0.0]])
    assert profile["info_gain/informative"] == pytest.approx(0.5)
    assert profile["info_gain/redundant"] == pytest.approx((0.1 + 0.05) / 2)
    assert profile["info_gain/outcome_corr"] == pytest.approx(1.0)  # two episodes: the sign of the relation
    third = episode([(1,)] * 2, won=False, states=["a", "b"])
    profile = info_gain_profile([e, lost, third], [[0.5, 0.1, -0.2, 0.0], [0.05, 0.0], [0.6, 0.0]])
    assert profile["info_gain/outcome_corr"] == pytest.approx(np.corrcoef([0.4, 0.05, 0.6], [1, 0, 0])[0, 1])


def test_info_gain_profile_leaves_out_what_it_cannot_measure():
    one_turn = [episode([(1,)], won=True), episode([(1,)], won=True)]
    assert info_gain_profile(one_turn, [[0.0], [0.0]]) == {}


def test_pair_accuracy_ranks_winners_against_losers_of_their_own_group_only():
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0])
    group = torch.tensor([0, 0, 0, 1, 1])
    scores = torch.tensor([0.5, 0.2, 0.5, -3.0, 9.0])  # group 0: one win, one tie; group 1: one loss
    assert _pair_accuracy(scores, labels, group) == pytest.approx((1 + 0.5 + 0) / 3)
    assert _pair_accuracy(scores, torch.ones(5), group) is None


def test_a_failure_streak_warns_once_when_it_reaches_its_patience(caplog):
    streak = FailureStreak("prm/below_chance_streak", "its rewards point away from winning", patience=3)
    with caplog.at_level(logging.WARNING, logger="envgym.trainers.rewards.health"):
        counts = [streak.observe(f)["prm/below_chance_streak"] for f in (True, True, None, True, True, False, True)]
    assert counts == [1, 2, 2, 3, 4, 0, 1]
    (record,) = caplog.records
    assert record.getMessage() == "prm/below_chance_streak = 3: its rewards point away from winning"


def test_info_gain_warns_when_redundant_turns_earn_as_much_as_informative_ones(caplog):
    e = episode([(1,), (1,), (1,)], won=False, states=["a", "a", "a"])  # two repeated questions
    f = episode([(1,), (1,), (1,)], won=True, states=["a", "b", "c"])  # two informative ones
    # every turn adds the same tokens, so the length-scoring policy gives every turn the same IG
    reward = InfoGainReward(LengthScoringPolicy(), TurnRewardOptions(kind="info_gain", info_gain="log_prob_diff"))
    with caplog.at_level(logging.WARNING, logger="envgym.trainers.rewards.health"):
        streaks = [reward.turn_rewards(RolloutBatch.from_groups([Group("test/Env-v0", "train", 0, 0, (e, f))]))[1]
                   ["info_gain/redundant_streak"] for _ in range(5)]
    assert streaks == [1, 2, 3, 4, 5]
    assert caplog.records[0].getMessage().startswith("info_gain/redundant_streak = 5 (-0.020 against -0.020 now)")


def test_info_gain_scores_prefixes_in_any_order_and_returns_them_in_episode_order():
    policy = LengthScoringPolicy()
    long, short = episode([(1,), (2,)], won=True, obs=(5, 6, 7, 8)), episode([(1, 2, 3), (2,)], won=False, obs=(5,))
    intrinsic, _ = InfoGainReward(policy, TurnRewardOptions(kind="info_gain", info_gain="log_prob_diff")).turn_rewards(
        RolloutBatch.from_groups([Group("test/Env-v0", "train", 0, 0, (long, short))]))
    # log p_t = -len(context)/100; the long episode's contexts are 4 and 6 tokens, the short one's 1 and 5
    assert intrinsic == pytest.approx([-0.02, 0.0, -0.04, 0.0])
    assert [len(p) for p in policy.calls[0][0]] == sorted(len(p) for p in policy.calls[0][0])


def test_info_gain_forces_the_templates_prefix_and_scores_only_the_answer():
    policy = LengthScoringPolicy()
    e = episode([(1,), (2,)], won=True)
    InfoGainReward(policy, TurnRewardOptions(kind="info_gain", answer_template="it is {answer}.")).turn_rewards(
        RolloutBatch.from_groups([Group("test/Env-v0", "train", 0, 0, (e,))]))
    (prompts, continuations), = policy.calls
    it_is = policy.tokenizer.encode("it is ", add_special_tokens=False)
    assert prompts == [[5, 6, *it_is], [5, 6, 1, 5, *it_is]]  # the context, then "it is" forced
    assert continuations == [policy.tokenizer.encode("7", add_special_tokens=False)] * 2  # not " ." nor eos


def test_info_gain_template_without_placeholder_fails_with_a_message():
    with pytest.raises(ValueError, match=r"no '\{answer\}' placeholder"):
        reward = InfoGainReward(LengthScoringPolicy(), TurnRewardOptions(kind="info_gain", answer_template="it is"))
        group = Group("test/Env-v0", "train", 0, 0, (episode([(1,)], won=True),))
        reward.turn_rewards(RolloutBatch.from_groups([group]))
