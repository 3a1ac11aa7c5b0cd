"""Branched collection: branch episodes from forked states, their place in groups and batches, KV sharing, refusals."""

import pytest

import envgym
from envgym.branching import BranchingRefused, BranchOptions
from envgym.policies import HFPolicy, SamplingParams, load_policy
from envgym.policies.openai_chat import OpenAIChatPolicy
from envgym.rollout import BranchingFailed, collect_groups
from envgym.trainers.advantages import compute_advantages
from envgym.trainers.batch import RolloutBatch
from envgym.models import load_tokenizer, tiny_model
from envgym.trajectory import load_groups, save_groups

envgym.register("branching/ReplaysDifferently-v0", "broken_envs:ReplaysDifferently", max_turns=10)


def test_branch_options_pick_turns():
    every = BranchOptions(k=2, every=3)
    assert [t for t in range(10) if every.branches_before(t, 0)] == [3, 6, 9]
    listed = BranchOptions(k=1, turns=[0, 4])
    assert [t for t in range(10) if listed.branches_before(t, 0)] == [0, 4]
    assert not BranchOptions(k=1, budget=2).branches_before(5, 2) and BranchOptions(k=1, budget=2).branches_before(5, 1)
    assert not BranchOptions(k=0).branches_before(1, 0)
    with pytest.raises(ValueError, match="turn indices >= 0"):
        BranchOptions(k=1, turns=[-1]).check()


def test_branches_continue_their_roots_state():
    progress = []
    result = collect_groups("games/Maze-v0", load_policy("random"), n_groups=2, group_size=2, seed=3, max_turns=9,
                            branch=BranchOptions(k=2, every=3, budget=2), on_episode=lambda d, t: progress.append(d))
    assert progress[-1] == 4 and max(progress) == 4  # progress counts the sampled episodes, not their branches
    for group in result.groups:
        roots, branches = group.episodes[:2], group.episodes[2:]
        assert all(e.parent is None for e in roots)
        assert sorted((b.parent, b.branch_turn) for b in branches) == sorted(
            (r, t) for r, root in enumerate(roots) for t in (3, 6) if t < len(root.turns) for _ in range(2))
        for b in branches:
            root = roots[b.parent]
            assert b.turns[0].observation == root.turns[b.branch_turn].observation
            assert b.turns[0].state_key == root.turns[b.branch_turn].state_key
            assert b.branch_turn + len(b.turns) <= 9  # max_turns counts the root's turns before the branch
    assert result.metrics["branches"] == sum(len(g.episodes) - 2 for g in result.groups) > 0


def test_branched_groups_round_trip_through_storage(tmp_path):
    groups = collect_groups("games/Maze-v0", load_policy("scripted"), n_groups=1, group_size=2, seed=1,
                            branch=BranchOptions(k=1, turns=[1])).groups
    for suffix in (".jsonl", ".parquet"):
        if suffix == ".parquet":
            pytest.importorskip("pyarrow")
        loaded = load_groups(save_groups(tmp_path / f"groups{suffix}", groups))
        assert [(e.parent, e.branch_turn) for e in loaded[0].episodes] == [(None, None), (None, None), (0, 1), (1, 1)]


@pytest.fixture(scope="module")
def tiny():
    tokenizer = load_tokenizer("tiny-maze")
    return tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, max_positions=2048), tokenizer


class NoCacheCopy(HFPolicy):
    """An HFPolicy whose branches start with no cache (the baseline of the KV-copy measurement)."""

    def copy_cache(self, source, target):
        pass


def test_branches_of_a_token_policy_train_and_share_their_roots_kv_cache(tiny):
    model, tokenizer = tiny
    params = SamplingParams(temperature=1.0, max_new_tokens=3)
    branch = BranchOptions(k=2, turns=[1])
    prefilled = {}
    for name, policy in (("copy", HFPolicy(model, tokenizer)), ("fresh", NoCacheCopy(model, tokenizer))):
        result = collect_groups("games/Maze-v0", policy, n_groups=1, group_size=2, seed=5, sampling=params,
                                max_turns=3, branch=branch)
        prefilled[name] = result.metrics["prompt_tokens"] - result.metrics["cached_prompt_tokens"]
        if name == "copy":
            groups = result.groups
    assert prefilled["copy"] < prefilled["fresh"]
    for group in groups:
        for b in group.episodes[2:]:
            root = group.episodes[b.parent]
            assert list(b.turns[0].obs_ids) == root.row_ids(0, upto_turn=b.branch_turn)  # the root's context
    batch = RolloutBatch.from_groups(groups, pad_token_id=tokenizer.pad_token_id)
    branch_rows = batch.turns.parent >= 0
    assert bool(branch_rows.any())
    advantages = compute_advantages(batch.turns, "vineppo")
    assert bool((advantages[branch_rows] == 0).all())


def test_branching_refuses_an_endpoint_policy():
    endpoint = OpenAIChatPolicy("http://127.0.0.1:9/v1", "some-model")
    with pytest.raises(BranchingRefused, match=r"openai: endpoint http://127.0.0.1:9/v1 \(some-model\)"):
        collect_groups("games/Maze-v0", endpoint, n_groups=1, group_size=2, branch=BranchOptions(k=2))


def test_branching_an_env_that_replays_differently_names_it_and_the_step():
    with pytest.raises(BranchingFailed, match=r"branching branching/ReplaysDifferently-v0 before turn 1: fork: cannot "
                                              r"fork branching/ReplaysDifferently-v0: .*diverged at step 0"):
        collect_groups("branching/ReplaysDifferently-v0", load_policy("random"), n_groups=1, group_size=2,
                       branch=BranchOptions(k=2))
