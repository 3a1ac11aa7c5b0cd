"""Turn-reward models: IGPO's information gain arithmetic and PRIME's online implicit PRM."""

import math

import pytest
import torch

from envgym.models import tiny_model, word_level_tokenizer
from envgym.trainers.config import TurnRewardOptions
from envgym.trainers.rewards import ImplicitPRM, InfoGainReward
from envgym.trainers.batch import RolloutBatch
from envgym.trajectory import Episode, EpisodeEnd, Group, Turn


def episode(actions, won, answer="7", obs=(5, 6), row_starts=(0,)):
    turns = tuple(Turn(f"obs{t}", "x", float(won and t == len(actions) - 1), f"s{t}", False,
                       obs_ids=obs if t in row_starts else obs[:1], action_ids=tuple(a), logprobs=(-1.0,) * len(a))
                  for t, a in enumerate(actions))
    return Episode("test/Env-v0", "train", 0, 0, turns, EpisodeEnd.TERMINATED, won, row_starts, answer)


class LengthScoringPolicy:
    """score = -len(prompt)/100 for every continuation token: log p_t is a known function of the context."""

    tokenizer = word_level_tokenizer(["7"])

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
    eos = policy.tokenizer.eos_token_id
    assert all(c == (policy.tokenizer.convert_tokens_to_ids("7"), eos) for c in continuations)
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
    groups = [Group("test/Env-v0", "train", 0, 0, (episode([(a,), (a,)], won=True), episode([(b,), (b,)], won=False)))
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
    state = prm.state_dict()
    fresh = ImplicitPRM(model, TurnRewardOptions(kind="implicit_prm", prm_loss=loss))
    fresh.load_state_dict(state)
    assert all(torch.equal(p, q) for p, q in zip(fresh.prm.parameters(), prm.prm.parameters()))
