"""The vectorised, Triton and plain-loop backends agree to 1e-5 on randomised batches.

Triton runs on CUDA, or on CPU under Triton's interpreter, which Triton only selects when
TRITON_INTERPRET=1 is set before triton is imported; `test_interpreted_triton_matches_reference`
runs this module's `test_triton_*` tests in a child pytest with that variable set,
leaving this process's Triton untouched.
"""

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envgym.trainers.advantages import ESTIMATORS, Segments, TurnBatch, broadcast_to_tokens, compute_advantages
from envgym.trainers.advantages import reference
from envgym.trainers.advantages.segment import positions_in_runs

BUILTINS = ["drgrpo", "gigpo", "grpo", "igpo", "prime", "reinforce_pp", "rloo", "turn_grpo"]
BRANCHING = ["spo_tree", "vineppo"]
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
TRITON_DEVICE = "cpu" if INTERPRETING else "cuda" if torch.cuda.is_available() else None
needs_triton = pytest.mark.skipif(TRITON_DEVICE is None, reason="Triton needs CUDA, or TRITON_INTERPRET=1 on CPU "
                                  "(test_interpreted_triton_matches_reference runs these in a child process)")

REWARDS = [-1.0, -0.5, 0.0, 0.0, 0.5, 1.0, 2.0]
STATES = [0, 1, 2, 3, -(2**63), 2**63 - 1]
TEXTS = ["You are in the kitchen.", "You are in the kitchen!", "You see a door.", "A long hallway here.",
         "You see a door!", "You are in the kitchen"]
NUMERIC = {"gamma": [0.0, 0.95, 1.0, 0.5], "omega": [1.0, 0.5], "alpha": [1.0, 2.0],
           "invalid_penalty": [0.1, 0.0, 1.0], "similarity_threshold": [0.95, 0.5]}


@st.composite
def turn_batches(draw, max_episodes=10, max_len=6):
    """Episodes of 1..max_len turns (sometimes one of up to 40), groups interleaved, ids with gaps, tokens shuffled."""
    num = draw(st.integers(0, max_episodes))
    lengths = draw(st.lists(st.integers(1, max_len), min_size=num, max_size=num))
    if lengths and draw(st.booleans()):
        lengths[0] = draw(st.integers(1, 40))
    n = sum(lengths)
    groups = draw(st.lists(st.sampled_from([-3, 0, 5, 2**40]), min_size=num, max_size=num))
    ids = draw(st.permutations(range(num)))
    per_turn = lambda elements: draw(st.lists(elements, min_size=n, max_size=n))  # noqa: E731
    intrinsic = per_turn(st.sampled_from(REWARDS)) if draw(st.booleans()) else [0.0] * n
    invalid = per_turn(st.booleans()) if draw(st.booleans()) else None
    token_turn = [row for row in range(n) for _ in range(draw(st.integers(0, 3)))]
    token_turn = draw(st.permutations(token_turn))
    states = per_turn(st.sampled_from(STATES))
    return TurnBatch.from_lists(group=[g for g, k in zip(groups, lengths) for _ in range(k)],
                                episode=[7 * i - 3 for i, k in zip(ids, lengths) for _ in range(k)],
                                reward=per_turn(st.sampled_from(REWARDS)), state=states,
                                state_text=[TEXTS[s % len(TEXTS)] for s in states],
                                intrinsic=intrinsic, invalid=invalid, token_turn=token_turn,
                                loss_mask=[draw(st.booleans()) for _ in token_turn])


@st.composite
def branched_batches(draw, max_roots=6, max_branches=10, max_len=5):
    """Groups of root episodes, then branches of earlier episodes (branches of branches, turn-0 branches
    included) at random turns, groups interleaved, episode ids with gaps."""
    roots = draw(st.integers(0, max_roots))
    episodes = [(draw(st.sampled_from([-3, 0, 2**40])), draw(st.integers(1, max_len)), None) for _ in range(roots)]
    for _ in range(draw(st.integers(0, max_branches)) if roots else 0):
        parent = draw(st.integers(0, len(episodes) - 1))
        group, length, _ = episodes[parent]
        episodes.append((group, draw(st.integers(1, max_len)), (parent, draw(st.integers(0, length - 1)))))
    ids = [11 * i + 5 for i in range(len(episodes))]
    rows = [(e, g, b) for e, (g, k, b) in enumerate(episodes) for _ in range(k)]
    return TurnBatch.from_lists(group=[g for _, g, _ in rows], episode=[ids[e] for e, _, _ in rows],
                                reward=draw(st.lists(st.sampled_from(REWARDS), min_size=len(rows), max_size=len(rows))),
                                parent=[-1 if b is None else ids[b[0]] for _, _, b in rows],
                                branch_turn=[-1 if b is None else b[1] for _, _, b in rows])


def draw_options(draw, name, batch):
    """Random values for every choice and numeric option of the estimator."""
    spec = ESTIMATORS[name]
    options = {k: draw(st.sampled_from(spec.choices[k])) for k in spec.choices}
    options.update({k: draw(st.sampled_from(NUMERIC[k])) for k in spec.defaults if k in NUMERIC})
    if options.get("penalty_scope") == "step_and_outcome":
        options["episode_stats"] = "turns"  # the only statistics it is defined with
    if options.get("normalize") == "separate":
        options["order"] = "normalize_then_discount"
    return options


def edge_batches():
    """Singleton groups and buckets, one-turn episodes, zero intrinsic rewards, one long episode, an empty batch."""
    return {
        "singleton_groups": TurnBatch.from_episodes([[1.0, 0.0], [0.5], [2.0, 1.0, 0.0]], group=[1, 2, 3],
                                                    intrinsic=[[0.0, 0.0], [0.0], [0.0, 0.0, 0.0]]),
        "one_turn_episodes": TurnBatch.from_episodes([[1.0], [0.0], [1.0], [0.5]], group=[0, 0, 1, 1],
                                                     states=[[4], [4], [5], [6]], intrinsic=[[0.3]] * 4),
        "long_episode": TurnBatch.from_episodes([[0.0] * 69 + [1.0], [0.5] * 3], group=[0, 0],
                                                states=[[t % 7 for t in range(70)], [0, 1, 2]],
                                                intrinsic=[[0.1] * 70, [0.2] * 3]),
        "empty": TurnBatch.from_lists(group=[], episode=[], reward=[], intrinsic=[]),
    }


def assert_agree(batch, name, options, backend, device="cpu"):
    expected = compute_advantages(batch, name, backend="reference", **options)
    got = compute_advantages(batch.to(device), name, backend=backend, **options).cpu()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name} {options}: {m}")
    if batch.token_turn is not None:
        torch.testing.assert_close(broadcast_to_tokens(got.to(device), batch.to(device), backend=backend).cpu(),
                                   broadcast_to_tokens(got, batch, backend="reference"))


@pytest.mark.parametrize("name", BUILTINS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_torch_matches_reference(name, data):
    batch = data.draw(turn_batches())
    assert_agree(batch, name, draw_options(data.draw, name, batch), "torch")


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("gamma", [0.0, 0.95, 1.0])
def test_torch_matches_reference_on_edge_batches(name, gamma):
    options = {"gamma": gamma} if "gamma" in ESTIMATORS[name].defaults else {}
    for batch in edge_batches().values():
        assert_agree(batch, name, options, "torch")


@pytest.mark.parametrize("name", BRANCHING)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_branching_torch_matches_reference(name, data):
    batch = data.draw(branched_batches())
    options = {"gamma": data.draw(st.sampled_from(NUMERIC["gamma"])), "train_branches": data.draw(st.booleans()),
               "scale": data.draw(st.sampled_from(["none", "batch_rms"])),
               "credit": data.draw(st.sampled_from(["segment", "turn"]))}
    assert_agree(batch, name, options, "torch")


@needs_triton
@pytest.mark.parametrize("name", BRANCHING)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_branching_triton_matches_reference(name, data):
    pytest.importorskip("triton")
    assert_agree(data.draw(branched_batches()), name, {"gamma": data.draw(st.sampled_from([0.95, 1.0]))}, "triton",
                 TRITON_DEVICE)


@needs_triton
@pytest.mark.parametrize("name", BUILTINS)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_triton_matches_reference(name, data):
    pytest.importorskip("triton")
    batch = data.draw(turn_batches(max_episodes=6, max_len=5))
    assert_agree(batch, name, draw_options(data.draw, name, batch), "triton", TRITON_DEVICE)


@needs_triton
@pytest.mark.parametrize("gamma", [0.0, 0.95, 1.0])
def test_triton_matches_reference_on_edge_batches(gamma):
    pytest.importorskip("triton")
    for name in BUILTINS:
        options = {"gamma": gamma} if "gamma" in ESTIMATORS[name].defaults else {}
        for batch in edge_batches().values():
            assert_agree(batch, name, options, "triton", TRITON_DEVICE)


@needs_triton
def test_triton_min_scan_matches_reference():
    pytest.importorskip("triton")
    from envgym.trainers.advantages.triton_kernels import TRITON_OPS

    generator = torch.Generator().manual_seed(0)
    episode = torch.sort(torch.randint(0, 30, (300,), generator=generator)).values
    values = torch.randn(300, dtype=torch.float64, generator=generator)
    segments = Segments(positions_in_runs(episode).to(TRITON_DEVICE))
    got = TRITON_OPS.reverse_scan(values.to(TRITON_DEVICE), segments, 1.0, "min")
    torch.testing.assert_close(got.cpu(), reference.min_returns(values, episode))


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETING, reason="compiled Triton only")
def test_compiled_triton_on_cuda_matches_torch_on_a_large_batch():
    pytest.importorskip("triton")
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 51, (800,), generator=generator)
    episode = torch.repeat_interleave(torch.arange(800), lengths)
    n = episode.numel()
    batch = TurnBatch.from_lists(group=episode // 8, episode=episode,
                                 reward=torch.randint(0, 2, (n,), generator=generator),
                                 state=torch.randint(0, n // 3, (n,), generator=generator),
                                 intrinsic=torch.randn(n, generator=generator),
                                 invalid=torch.rand(n, generator=generator) < 0.1,
                                 token_turn=torch.arange(n).repeat_interleave(3))
    for name in BUILTINS:
        expected = compute_advantages(batch, name)
        got = compute_advantages(batch.to("cuda"), name, backend="triton")
        torch.testing.assert_close(got.cpu(), expected, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.skipif(INTERPRETING, reason="this process already runs Triton under its interpreter")
def test_interpreted_triton_matches_reference():
    pytest.importorskip("triton")
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "test_triton_",
                            __file__], env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True,
                           timeout=540)
    assert child.returncode == 0, child.stdout[-6000:] + child.stderr[-2000:]
    assert " passed" in child.stdout and "skipped" not in child.stdout.splitlines()[-1], child.stdout[-2000:]
