"""Hand-computed advantages for every estimator, each expected number written from its equation.

Every case runs on the vectorised ("torch") and the plain-loop ("reference") backends.
"""

import dataclasses
import math

import pytest
import torch

from envgym.trainers.advantages import Segments, TurnBatch, anchor_buckets, compute_advantages, similar_state_keys

EPS = 1e-6
BACKENDS = ["torch", "reference"]


def check(batch, estimator, expected, **options):
    for backend in BACKENDS:
        got = compute_advantages(batch, estimator, backend=backend, **options)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32), atol=1e-6, rtol=1e-6,
                                   msg=lambda m: f"{estimator} {backend} {options}: {m}")


# Group 7: episode A rewards [1, 2] (R=3), B [0] (R=0), C [0, 0] (R=0); group 9: D [5] alone.
OUTCOME = TurnBatch.from_episodes([[1, 2], [0], [0, 0], [5]], group=[7, 7, 7, 9])


def test_grpo_normalises_episode_returns_within_the_group():
    # R = [3, 0, 0]: mean 1, population var ((3-1)^2 + 1 + 1) / 3 = 2.
    a, b = 2 / (math.sqrt(2) + EPS), -1 / (math.sqrt(2) + EPS)
    check(OUTCOME, "grpo", [a, a, b, b, b, 0.0])  # D is alone in group 9: 0


def test_grpo_sample_std_and_raw_singletons():
    # Bessel: var = (4 + 1 + 1) / (3 - 1) = 3; a lone episode keeps R / (1 + eps) (verl's mean 0, std 1).
    a, b = 2 / (math.sqrt(3) + EPS), -1 / (math.sqrt(3) + EPS)
    check(OUTCOME, "grpo", [a, a, b, b, b, 5 / (1 + EPS)], std="sample", singleton="raw")


def test_grpo_turn_row_statistics_weight_episodes_by_length():
    # episode_stats="turns": rows [3, 3, 0, 0, 0]: mean 6/5 = 1.2,
    # var = (2 * 1.8^2 + 3 * 1.2^2) / 5 = (6.48 + 4.32) / 5 = 2.16.
    sd = math.sqrt(2.16)
    a, b = 1.8 / (sd + EPS), -1.2 / (sd + EPS)
    check(OUTCOME, "grpo", [a, a, b, b, b, 0.0], episode_stats="turns")


def test_drgrpo_and_grpo_without_scale_only_centre():
    # R - mean = [3 - 1, 0 - 1, 0 - 1].
    expected = [2.0, 2.0, -1.0, -1.0, -1.0, 0.0]
    check(OUTCOME, "drgrpo", expected)
    check(OUTCOME, "grpo", expected, scale="none")


def test_rloo_subtracts_the_mean_of_the_other_episodes():
    # A = 3 - (0 + 0) / 2 = 3; B = 0 - (3 + 0) / 2 = -1.5; C likewise; D has no others.
    check(OUTCOME, "rloo", [3.0, 3.0, -1.5, -1.5, -1.5, 0.0])
    check(OUTCOME, "rloo", [3.0, 3.0, -1.5, -1.5, -1.5, 5.0], singleton="raw")


def test_reinforce_pp_centres_in_the_group_then_whitens_over_episodes():
    # Centred: [2, -1, -1] and 0 for lone D. Over the 4 episodes: mean 0, var (4 + 1 + 1 + 0) / 4 = 1.5.
    sd = math.sqrt(1.5)
    check(OUTCOME, "reinforce_pp", [2 / (sd + EPS)] * 2 + [-1 / (sd + EPS)] * 3 + [0.0])


def test_reinforce_pp_whitens_over_turn_rows_or_tokens():
    # Per turn rows: [2, 2, -1, -1, -1, 0]: mean 1/6, var = (2 * (11/6)^2 + 3 * (7/6)^2 + (1/6)^2) / 6.
    mean = 1 / 6
    sd = math.sqrt((2 * (2 - mean) ** 2 + 3 * (-1 - mean) ** 2 + mean**2) / 6)
    expected = [(v - mean) / (sd + EPS) for v in [2, 2, -1, -1, -1, 0]]
    check(OUTCOME, "reinforce_pp", expected, whiten_over="turns")
    # Tokens: turn rows 0 and 2 have 3 and 1 loss-masked tokens, the others none (row 5's token is masked off).
    tokens = TurnBatch.from_lists(group=OUTCOME.group, episode=OUTCOME.episode, reward=OUTCOME.reward,
                                  token_turn=[0, 0, 0, 2, 5], loss_mask=[1, 1, 1, 1, 0])
    # Token values [2, 2, 2, -1]: mean 5/4, var = (3 * 0.75^2 + 2.25^2) / 4 = 27/16.
    mean, sd = 1.25, math.sqrt(27 / 16)
    expected = [(v - mean) / (sd + EPS) for v in [2, 2, -1, -1, -1, 0]]
    check(tokens, "reinforce_pp", expected, whiten_over="tokens")


# Group 0: episode 0 rewards [0, 1], episode 1 rewards [1].
TURNS = TurnBatch.from_episodes([[0, 1], [1]], group=[0, 0])


def test_turn_grpo_normalises_turn_rewards_then_discounts():
    # Pooled turn rewards [0, 1, 1]: mean 2/3, var (4/9 + 1/9 + 1/9) / 3 = 2/9, std sqrt(2)/3.
    sd = math.sqrt(2) / 3 + EPS
    lo, hi = (-2 / 3) / sd, (1 / 3) / sd
    # A_{0,1} = hi; A_{0,0} = lo + 0.5 * hi; A_{1,0} = hi.
    check(TURNS, "turn_grpo", [lo + 0.5 * hi, hi, hi], gamma=0.5)
    check(TURNS, "turn_grpo", [lo + hi, hi, hi])  # gamma defaults to 1
    check(TURNS, "turn_grpo", [lo, hi, hi], gamma=0.0)


def test_turn_grpo_discount_then_normalise():
    # G with gamma 0.5: [0.5, 1, 1]: mean 5/6, var (1/9 + 1/36 + 1/36) / 3 = 1/18.
    sd = math.sqrt(1 / 18) + EPS
    check(TURNS, "turn_grpo", [(0.5 - 5 / 6) / sd, (1 / 6) / sd, (1 / 6) / sd], gamma=0.5,
          order="discount_then_normalize")


# Group 0. Episode 0: states [1, 2], rewards [0, 1] (R=1). Episode 1: states [1, 3, 1] (a loop back to 1),
# rewards [0, 0, 0] (R=0). Third turn of episode 1 is invalid where marked.
GIGPO_EPISODES = dict(rewards=[[0, 1], [0, 0, 0]], group=[0, 0], states=[[1, 2], [1, 3, 1]])


def test_gigpo_anchor_buckets_pool_turns_across_and_within_episodes():
    batch = TurnBatch.from_episodes(**GIGPO_EPISODES)
    # A^E: R = [1, 0], mean 0.5, std 0.5 -> +-0.5 / (0.5 + eps).
    ae = 0.5 / (0.5 + EPS)
    # G (gamma 0.5): episode 0 [0.5, 1], episode 1 [0, 0, 0].
    # Bucket (0, state 1) = {0.5, 0, 0}: mean 1/6, var ((1/3)^2 + 2 (1/6)^2) / 3 = 1/18.
    sd = math.sqrt(1 / 18) + EPS
    hi, lo = (0.5 - 1 / 6) / sd, (0 - 1 / 6) / sd
    # States 2 and 3 are singleton buckets: A^S = 0.
    check(batch, "gigpo", [ae + hi, ae, -ae + lo, -ae, -ae + lo], gamma=0.5)
    check(batch, "gigpo", [ae + 2 * hi, ae, -ae + 2 * lo, -ae, -ae + 2 * lo], gamma=0.5, omega=2.0)
    # mean_norm: A^E = R - 0.5, A^S = G - 1/6.
    check(batch, "gigpo", [0.5 + 1 / 3, 0.5, -0.5 - 1 / 6, -0.5, -0.5 - 1 / 6], gamma=0.5, mode="mean_norm")


def test_gigpo_invalid_penalty_hits_the_turns_own_return_after_the_scan():
    batch = TurnBatch.from_episodes(**GIGPO_EPISODES, invalid=[[0, 0], [0, 0, 1]])
    ae = 0.5 / (0.5 + EPS)
    # G~ of bucket (0, 1): [0.5, 0, 0 - 0.1]; episode 1's earlier turns keep G = 0 (no discounting back).
    values = [0.5, 0.0, -0.1]
    mean = sum(values) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 3) + EPS
    a0, a1, a2 = ((v - mean) / sd for v in values)
    check(batch, "gigpo", [ae + a0, ae, -ae + a1, -ae, -ae + a2], gamma=0.5)
    # With penalty 0 the invalid flags change nothing.
    check(batch, "gigpo", compute_advantages(TurnBatch.from_episodes(**GIGPO_EPISODES), "gigpo").tolist(),
          invalid_penalty=0.0)


def test_gigpo_episode_stats_over_turn_rows():
    batch = TurnBatch.from_episodes(**GIGPO_EPISODES)
    # Rows carry R = [1, 1, 0, 0, 0]: mean 0.4, var (2 * 0.36 + 3 * 0.16) / 5 = 0.24.
    sd = math.sqrt(0.24) + EPS
    hi_e, lo_e = 0.6 / sd, -0.4 / sd
    sd_s = math.sqrt(1 / 18) + EPS
    hi, lo = (1 / 3) / sd_s, (-1 / 6) / sd_s
    check(batch, "gigpo", [hi_e + hi, hi_e, lo_e + lo, lo_e, lo_e + lo], gamma=0.5, episode_stats="turns")


def test_gigpo_similarity_grouping_merges_near_identical_texts():
    # Distinct int states, but "kitchen." and "kitchen!" have ratio 2 * 22 / 46 = 0.957 >= 0.95.
    texts = ["You are in the kitchen.", "You see a door.", "You are in the kitchen!", "A long hallway here.",
             "You are in the kitchen."]
    batch = dataclasses.replace(TurnBatch.from_episodes([[0, 1], [0, 0, 0]], group=[0, 0],
                                                        states=[[10, 20], [11, 30, 12]]), state_text=tuple(texts))
    exact = compute_advantages(TurnBatch.from_episodes(**GIGPO_EPISODES), "gigpo", gamma=0.5)
    check(batch, "gigpo", exact.tolist(), gamma=0.5, grouping="similarity")


def test_similar_state_keys_is_greedy_with_the_first_representative():
    # ratio("abcd", "abyz") = ratio("wxyz", "abyz") = 2 * 2 / 8 = 0.5: "abyz" joins the first bucket.
    keys = similar_state_keys(["abcd", "wxyz", "abyz", "abyz"], [0, 0, 0, 1], threshold=0.5)
    assert keys.tolist()[:3] == [0, 1, 0]
    assert keys[3] not in keys[:3]  # another group never shares a bucket


def dict_buckets(group, state):
    """Reference bucket ids: one per distinct (group, state), numbered in order of first appearance."""
    ids: dict[tuple[int, int], int] = {}
    return [ids.setdefault(key, len(ids)) for key in zip(group, state)], len(ids)


@pytest.mark.parametrize("case", ["random", "colliding", "empty"])
def test_anchor_buckets_partition_rows_by_group_and_state(case):
    generator = torch.Generator().manual_seed(3)
    n = {"random": 5000, "colliding": 600, "empty": 0}[case]
    group = torch.randint(-4, 60, (n,), generator=generator) * 2**40  # one-turn episodes, groups interleaved
    if case == "colliding":
        # (k << 32) | k folds to k << 32, whose low bits are 0: every key of a group hashes to the
        # group's one slot, so the rows of all keys but one per group take the sorted path.
        k = torch.randint(0, 40, (n,), generator=generator)
        state = (k << 32) | k
    else:
        pool = torch.randint(-(2**63), 2**63 - 1, (300,), generator=generator)
        state = pool[torch.randint(0, 300, (n,), generator=generator)]
    batch = TurnBatch.from_lists(group=group, episode=torch.arange(n), reward=torch.zeros(n), state=state)
    ids, num = anchor_buckets(Segments.of(batch), state)
    expected, expected_num = dict_buckets(group.tolist(), state.tolist())
    assert num == expected_num and sorted(set(ids.tolist())) == list(range(num))
    assert len(set(zip(ids.tolist(), expected))) == num  # the same partition, up to renaming the ids


# Group 0. Episode 0: intrinsic [0.2, 0.3, 99] rewards [0, 0, 1]; episode 1: intrinsic [0.1, 99] rewards [0, 0].
# The last turn's intrinsic (99) is never read: the last turn gets alpha * R.
IGPO = TurnBatch.from_episodes([[0, 0, 1], [0, 0]], group=[0, 0], intrinsic=[[0.2, 0.3, 99], [0.1, 99]])


def test_igpo_joint_normalisation_then_undiscounted_sum():
    # r = [0.2, 0.3, 1 | 0.1, 0]: mean 0.32, var (0.12^2 + 0.02^2 + 0.68^2 + 0.22^2 + 0.32^2) / 5 = 0.1256.
    sd = math.sqrt(0.1256) + EPS
    z = [(v - 0.32) / sd for v in [0.2, 0.3, 1.0, 0.1, 0.0]]
    check(IGPO, "igpo", [z[0] + z[1] + z[2], z[1] + z[2], z[2], z[3] + z[4], z[4]])
    # alpha = 2: r = [0.2, 0.3, 2 | 0.1, 0]: mean 0.52.
    values = [0.2, 0.3, 2.0, 0.1, 0.0]
    sd2 = math.sqrt(sum((v - 0.52) ** 2 for v in values) / 5) + EPS
    z = [(v - 0.52) / sd2 for v in values]
    check(IGPO, "igpo", [z[0] + z[1] + z[2], z[1] + z[2], z[2], z[3] + z[4], z[4]], alpha=2.0)


def test_igpo_separate_normalisation():
    # Gains [0.2, 0.3, 0.1]: mean 0.2, var 0.02 / 3. Outcomes [1, 0]: +-0.5 / (0.5 + eps).
    sd = math.sqrt(0.02 / 3) + EPS
    g0, g1, g3 = 0.0, 0.1 / sd, -0.1 / sd
    o = 0.5 / (0.5 + EPS)
    # gamma 0.5: A_t = r~_t + 0.5 A_{t+1}.
    check(IGPO, "igpo", [g0 + 0.5 * (g1 + 0.5 * o), g1 + 0.5 * o, o, g3 + 0.5 * -o, -o], normalize="separate",
          gamma=0.5)


# Group 0, n = 3. q (intrinsic) and rewards:
# episode 0: q [0.1, 0.3], rewards [0, 1] (R=1, qbar 0.2); episode 1: q [0.2], [0] (R=0, qbar 0.2);
# episode 2: q [0.4, 0.0, 0.5], [0, 0, 1] (R=1, qbar 0.3). Group 5: one episode, alone.
PRIME = TurnBatch.from_episodes([[0, 1], [0], [0, 0, 1], [1]], group=[0, 0, 0, 5],
                                intrinsic=[[0.1, 0.3], [0.2], [0.4, 0.0, 0.5], [0.7]])


def whitened(values):
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return [(v - mean) / (sd + EPS) for v in values]


def test_prime_leave_one_out_for_outcome_and_process_then_return_to_go():
    # Outcome LOO: 1 - (0 + 1)/2 = 0.5; 0 - (1 + 1)/2 = -1; 1 - (1 + 0)/2 = 0.5.
    # Process baselines (mean of the other episodes' qbar): (0.2 + 0.3)/2 = 0.25, 0.25, (0.2 + 0.2)/2 = 0.2.
    # Turn advantages: ep0 [0.1 - 0.25, 0.3 - 0.25 + 0.5] = [-0.15, 0.55]; ep1 [0.2 - 0.25 - 1] = [-1.05];
    # ep2 [0.2, -0.2, 0.3 + 0.5]; lone group 5: 0. Return-to-go (gamma 1): [0.4, 0.55], [-1.05], [0.8, 0.6, 0.8], [0].
    check(PRIME, "prime", whitened([0.4, 0.55, -1.05, 0.8, 0.6, 0.8, 0.0]))


def test_prime_released_process_baseline_leaves_out_the_turn_itself():
    # Baseline (sum_j qbar_j - q_t) / 2 with sum 0.7: ep0 (0.7-0.1)/2 = 0.3, (0.7-0.3)/2 = 0.2;
    # ep1 (0.7-0.2)/2 = 0.25; ep2 0.15, 0.35, 0.1. Process advantages: [-0.2, 0.1], [-0.05], [0.25, -0.35, 0.4].
    # Plus outcomes on last turns: [-0.2, 0.6], [-1.05], [0.25, -0.35, 0.9]; return-to-go:
    turn_returns = [0.4, 0.6, -1.05, 0.8, 0.55, 0.9, 0.0]
    check(PRIME, "prime", whitened(turn_returns), process_loo="released")


def test_prime_discount_and_raw_singletons():
    # gamma 0.5 on the turn advantages [-0.15, 0.55], [-1.05], [0.2, -0.2, 0.8]; the lone episode keeps q + R = 1.7.
    returns = [-0.15 + 0.5 * 0.55, 0.55, -1.05, 0.2 + 0.5 * (-0.2 + 0.5 * 0.8), -0.2 + 0.5 * 0.8, 0.8, 1.7]
    check(PRIME, "prime", whitened(returns), gamma=0.5, singleton="raw")


def test_intrinsic_estimators_need_intrinsic_rewards():
    for estimator in ("igpo", "prime"):
        for backend in BACKENDS:
            with pytest.raises(ValueError, match="batch.intrinsic"):
                compute_advantages(OUTCOME, estimator, backend=backend)


def test_empty_batch_gives_empty_advantages():
    empty = TurnBatch.from_lists(group=[], episode=[], reward=[], intrinsic=[], token_turn=[], loss_mask=[])
    for estimator in ("grpo", "drgrpo", "rloo", "reinforce_pp", "turn_grpo", "gigpo", "igpo", "prime"):
        for backend in BACKENDS:
            assert compute_advantages(empty, estimator, backend=backend).shape == (0,)


# Two 218-character observations whose difflib ratio depends on the argument order (autojunk drops the
# popular characters of the second string): ratio(A, B) = 0.991, ratio(B, A) = 0.479.
LONG_A = ("a here the key north an table table key north see north is north an table you closed the a open closed "
          "key closed is kitchen door is here open you kitchen here see closed here here key closed a key open "
          "closed is north")
LONG_B = LONG_A.replace("closed the a open", "closed the you open")


def test_similarity_compares_the_new_text_with_the_representative_as_verl_agent_does():
    import difflib

    assert difflib.SequenceMatcher(None, LONG_A, LONG_B).ratio() > 0.95 > difflib.SequenceMatcher(
        None, LONG_B, LONG_A).ratio()
    # LONG_A comes first and represents its bucket; verl-agent asks are_similar(LONG_B, LONG_A): ratio 0.479
    assert similar_state_keys([LONG_A, LONG_B], [0, 0]).tolist() == [0, 1]
    batch = dataclasses.replace(TurnBatch.from_episodes([[1.0], [0.0]], group=[0, 0]), state_text=(LONG_A, LONG_B))
    # separate singleton buckets: only the episode level remains (R = [1, 0], mean 0.5, std 0.5)
    check(batch, "gigpo", [0.5 / (0.5 + EPS), -0.5 / (0.5 + EPS)], grouping="similarity")


# Group 0: episode 0 rewards [0, 1] with an invalid first turn, episode 1 rewards [0, 0]; both start in state 1.
PENALTY = TurnBatch.from_episodes([[0.0, 1.0], [0.0, 0.0]], group=[0, 0], states=[[1, 2], [1, 3]],
                                  invalid=[[True, False], [False, False]])


def test_gigpo_penalty_on_step_only_leaves_the_episode_scores_alone():
    # mean_norm, gamma 1, p = 0.1. Episode level: R = [1, 0] -> +-0.5. Step: G~ = [1 - 0.1, 1 | 0, 0];
    # bucket of state 1 = {0.9, 0}: +-0.45; the others are singletons (0).
    check(PENALTY, "gigpo", [0.5 + 0.45, 0.5, -0.5 - 0.45, -0.5], mode="mean_norm", gamma=1.0)


def test_gigpo_penalty_on_step_and_outcome_scores_every_turn_row():
    # verl-agent: row scores R_i - p * invalid_{i,t} = [0.9, 1.0 | 0, 0], centred on the group's row mean 0.475.
    check(PENALTY, "gigpo", [0.425 + 0.45, 0.525, -0.475 - 0.45, -0.475], mode="mean_norm", gamma=1.0,
          penalty_scope="step_and_outcome", episode_stats="turns")
    with pytest.raises(ValueError, match="needs episode_stats='turns'"):
        compute_advantages(PENALTY, "gigpo", penalty_scope="step_and_outcome")


def test_gigpo_verl_agent_preset():
    # the preset: mean_norm, gamma 0.95, p = 0.1 on step and outcome, row statistics. G~ of state 1 rows:
    # 0.95 * 1 - 0.1 = 0.85 and 0: +-0.425; episode level as above: [0.425, 0.525, -0.475, -0.475].
    check(PENALTY, "gigpo", [0.85, 0.525, -0.9, -0.475], preset="verl-agent")
    explicit = compute_advantages(PENALTY, "gigpo", mode="mean_norm", gamma=0.95, penalty_scope="step_and_outcome",
                                  episode_stats="turns", std="sample", episode_singleton="raw")
    torch.testing.assert_close(compute_advantages(PENALTY, "gigpo", preset="verl-agent"), explicit)
    # explicit options override the preset's
    check(PENALTY, "gigpo", [0.425 + 0.45, 0.525, -0.475 - 0.45, -0.475], preset="verl-agent", gamma=1.0)
    with pytest.raises(ValueError, match="unknown preset 'verl' for estimator 'gigpo'; its presets: verl-agent"):
        compute_advantages(PENALTY, "gigpo", preset="verl")


@pytest.mark.parametrize("episode_singleton, singleton, expected", [
    ("raw", "zero", [2.0, 2.0]),  # verl-agent: a lone episode keeps its score, a lone bucket scores 0
    ("zero", "raw", [1.0, 2.0]),  # G = [0.5 * 2, 2] kept raw at the step level
    ("zero", "zero", [0.0, 0.0]),
])
def test_gigpo_singleton_rules_are_separate_for_episodes_and_anchor_buckets(episode_singleton, singleton, expected):
    batch = TurnBatch.from_episodes([[0.0, 2.0]], group=[0])  # one episode, two distinct states: all singletons
    check(batch, "gigpo", expected, mode="mean_norm", gamma=0.5, episode_singleton=episode_singleton,
          singleton=singleton)


# A tree in one group: roots A [0, 0, 1] and B [0, 0]; C [0, 1] and D [0, 0] branch from A's state before its
# turn 1; E [1] branches from C's first state, which is that same state. Returns-to-go (gamma 1): A 1,1,1;
# B 0,0; C 1,1; D 0,0; E 1.
TREE = TurnBatch.from_episodes([[0, 0, 1], [0, 0], [0, 1], [0, 0], [1]], group=[0] * 5,
                               branches=[None, None, (0, 1), (0, 1), (2, 0)])


def test_vineppo_values_states_by_the_continuations_that_start_there():
    # V(first state) leaves the episode out: A sees B's 0, B sees A's 1. V(A's state before turn 1) = mean of
    # C, D, E = 2/3 (C itself sees D and E: 1/2). A turn from a state nobody else continued from has no
    # baseline (0); as a next state it is valued by the episode's own return-to-go (A's 1 after turn 1).
    a = [0 + 2 / 3 - 0, 0 + 1 - 2 / 3, 0.0]
    b = [0 + 0 - 1, 0.0]
    c = [0 + 1 - 1 / 2, 0.0]
    d, e = [0 + 0 - 1, 0.0], [1 + 0 - 1 / 2]
    check(TREE, "vineppo", a + b + c + d + e, train_branches=True, credit="turn")
    check(TREE, "vineppo", a + b + [0.0] * 5, credit="turn")  # the paper: branches only estimate values


def test_vineppo_segments_share_the_advantage_from_one_valued_state_to_the_next():
    # A's branch points are its first state and its state before turn 1 (C, D, E start there): turn 0 gets
    # (G_A - V(first)) - (G_A,1 - V(before turn 1)) = (1 - 0) - (1 - 2/3); turns 1 and 2 share 1 - 2/3. The
    # other episodes have no later branch point, so all their turns share G - V(where they start).
    a, b = [2 / 3, 1 / 3, 1 / 3], [-1.0, -1.0]
    c, d, e = [1 / 2, 1 / 2], [-1.0, -1.0], [1 / 2]
    check(TREE, "vineppo", a + b + c + d + e, train_branches=True)
    check(TREE, "vineppo", a + b + [0.0] * 5)
    g = 0.5  # A's returns-to-go 0.25, 0.5, 1; V(A's state before turn 1) = (0.5 + 0 + 1) / 3 = 0.5
    check(TREE, "vineppo", [(0.25 - 0) - g * (0.5 - 0.5), 0.0, 0.0, 0 - 0.25, 0 - 0.25] + [0.0] * 5, gamma=g)


def test_batch_rms_keeps_a_lone_informative_advantage_on_scale():
    # One root A [0, 1] and its branch C [0] before turn 1: only A's turn 1 has a baseline (C's 0), A = 1. The
    # std of one value is 0; dividing by it (the earlier batch_std) made that advantage 1e6 and wrecked runs.
    lone = TurnBatch.from_episodes([[0, 1], [0]], group=[0, 0], branches=[None, (0, 1)])
    check(lone, "vineppo", [0.0, 1 / (1 + EPS), 0.0], scale="batch_rms", credit="turn")


def test_vineppo_discounts_returns_and_values():
    g = 0.5  # A's returns-to-go 0.25, 0.5, 1; C 0.5, 1; V(A's state before turn 1) = (0.5 + 0 + 1) / 3
    check(TREE, "vineppo", [g * 0.5 - 0, g * 1 - 0.5, 0.0, 0 - 0.25, 0.0] + [0.0] * 5, gamma=g, credit="turn")


def test_spo_tree_values_a_node_by_every_episode_through_it():
    # V(first state) = mean of all 5 paths' returns (1, 0, 1, 0, 1) = 3/5. V(after A's turn 0) = A, C, D, E
    # = 3/4; V(after A's turn 1) = A's 1; V(after B's turn 0) = 0; V(after C's turn 0) = 1.
    a = [0 + 3 / 4 - 3 / 5, 0 + 1 - 3 / 4, 1 - 1]
    b = [0 + 0 - 3 / 5, 0 - 0]
    c, d, e = [0 + 1 - 3 / 4, 1 - 1], [0 + 0 - 3 / 4, 0 - 0], [1 - 3 / 4]
    check(TREE, "spo_tree", a + b + c + d + e, credit="turn")
    check(TREE, "spo_tree", a + b + [0.0] * 5, train_branches=False, credit="turn")
    trained = a + b  # batch_rms divides by the root mean square of the trained rows' nonzero advantages only
    nonzero = [x for x in trained if x != 0]
    rms = math.sqrt(sum(x * x for x in nonzero) / len(nonzero))
    check(TREE, "spo_tree", [x / (rms + EPS) for x in trained] + [0.0] * 5, train_branches=False, scale="batch_rms",
          credit="turn")
    # credit="segment": a turn no other path leaves (A's turn 2, B's, C's and D's turn 1) shares the advantage
    # of the stretch's first turn
    check(TREE, "spo_tree", [a[0], a[1], a[1], b[0], b[0], c[0], c[0], d[0], d[0], e[0]])


def test_branching_estimators_need_branch_episodes():
    for estimator in ("vineppo", "spo_tree"):
        for backend in BACKENDS:
            with pytest.raises(ValueError, match="reads branch episodes"):
                compute_advantages(OUTCOME, estimator, backend=backend)
