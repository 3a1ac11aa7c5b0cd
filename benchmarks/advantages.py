"""Benchmark the advantage estimators: verl-agent-style loops, the plain loop, the vectorised path, Triton.

    python benchmarks/advantages.py           # 1k, 16k and 256k turns (about a minute)
    python benchmarks/advantages.py --quick   # 1k and 4k turns

Batches: groups of 8 episodes of 1 to 50 turns, about a third of the turns revisiting a
state seen earlier in the group, the outcome (0 or 1) on the last turn, 10% invalid
turns, Gaussian intrinsic rewards. Single-threaded CPU (torch.set_num_threads(1)).
Times are minima over repeated runs: a ratio's two sides (plain loop and vectorised;
torch and Triton on GPU) run interleaved, the same number of timed calls each, one per
round, each right after an untimed warm-up call of the same function; so load from other
processes on a shared machine hits both sides alike, and the minimum (the least disturbed
run) of one side is compared with the minimum of the other. Peak memory of the vectorised
path is the peak of the CPU allocator's "Total Allocated" counter recorded by the torch
profiler during one
call (tensors only; the batch itself is allocated before and not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch

from envgym.trainers.advantages import TurnBatch, compute_advantages

ESTIMATORS = ("gigpo", "igpo", "prime")
GOAL_VS_VERL, GOAL_VS_LOOP, GOAL_GROWTH, GOAL_TRITON = 100.0, 25.0, 20.0, 3.0


def make_batch(num_turns: int, seed: int = 0) -> TurnBatch:
    """At least `num_turns` turns in groups of 8 episodes of 1..50 turns; ~1/3 of turns revisit a group state."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 51, size=2 * num_turns // 25 + 8)
    num_groups = int(np.searchsorted(np.cumsum(lengths), num_turns) // 8 + 1)
    lengths = lengths[: 8 * num_groups]
    n = int(lengths.sum())
    episode = np.repeat(np.arange(lengths.size), lengths)
    group = episode // 8
    first_of_group = np.r_[0, np.cumsum(lengths)][::8][group]
    revisit = (rng.random(n) < 1 / 3) & (np.arange(n) > first_of_group)
    # a revisit copies a uniformly chosen earlier row of its group; follow copies back to a fresh state
    source = np.where(revisit, first_of_group + (rng.random(n) * (np.arange(n) - first_of_group)).astype(np.int64),
                      np.arange(n))
    while revisit[source].any():
        source = np.where(revisit[source], source[source], source)
    state = rng.integers(0, 2**62, size=n)[source]
    turn = np.arange(n) - np.r_[0, np.cumsum(lengths)][:-1][episode]
    reward = np.where(turn == lengths[episode] - 1, rng.integers(0, 2, size=n), 0)
    return TurnBatch.from_lists(group=group, episode=episode, turn=turn, reward=reward, state=state,
                                intrinsic=rng.normal(size=n), invalid=rng.random(n) < 0.1)


def verl_agent_style_gigpo(batch: TurnBatch, gamma: float = 0.95, invalid_penalty: float = 0.1,
                           eps: float = 1e-6) -> torch.Tensor:
    """GiGPO the way verl-agent computes it (written from its description, not its code).

    Ids are uuid strings in object arrays, as in verl-agent's non-tensor batch. For each
    trajectory, scan the batch for its rows and run the return backwards; for each group,
    scan for its rows, bucket them by state in a dict, and build one small tensor and one
    mean and std per bucket (and per group for the episode level). Same conventions as
    compute_advantages(batch, "gigpo"): population std, singletons 0, penalty after the scan.
    """
    traj_uid = np.array([f"traj-{e:08x}" for e in batch.episode.tolist()], dtype=object)
    group_uid = np.array([f"uid-{g:08x}" for g in batch.group.tolist()], dtype=object)
    rewards, states = batch.reward.numpy(), batch.state.tolist()
    invalid = batch.invalid.numpy()
    n = rewards.shape[0]
    returns = np.zeros(n, dtype=np.float64)
    episode_return = np.zeros(n, dtype=np.float64)
    for uid in np.unique(traj_uid):
        rows = np.where(traj_uid == uid)[0]
        running = 0.0
        for r in rows[::-1]:
            running = float(rewards[r]) + gamma * running
            returns[r] = running
        episode_return[rows] = rewards[rows].sum()
    returns -= invalid_penalty * invalid
    advantages = torch.zeros(n, dtype=torch.float64)
    for uid in np.unique(group_uid):
        rows = np.where(group_uid == uid)[0]
        first_row = {}
        for r in rows:
            first_row.setdefault(traj_uid[r], r)
        scores = torch.tensor([episode_return[r] for r in first_row.values()], dtype=torch.float64)
        mean, std = scores.mean(), scores.std(unbiased=False)
        for r in rows:
            advantages[r] = 0.0 if len(scores) == 1 else (episode_return[r] - mean) / (std + eps)
        buckets = defaultdict(list)
        for r in rows:
            buckets[states[r]].append(r)
        for members in buckets.values():
            values = torch.tensor([returns[r] for r in members], dtype=torch.float64)
            mean, std = values.mean(), values.std(unbiased=False)
            for r in members:
                advantages[r] += 0.0 if len(members) == 1 else (returns[r] - mean) / (std + eps)
    return advantages.to(torch.float32)


def min_times(fns: dict[str, Callable[[], object]], budget_s: float = 2.0, min_rounds: int = 5,
              max_rounds: int = 50, sync: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Minimum wall time of each function over interleaved rounds (each function in turn, once per round).

    Each timed call follows an untimed call of the same function, so every side is timed warm
    (its caches and allocator as in repeated calls), not cooled by the other side's run just
    before. Rounds repeat until `budget_s` of wall time is spent (at least `min_rounds`, at
    most `max_rounds`); every function gets the same number of timed calls, so neither side's
    minimum gets more chances.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    started, rounds = time.perf_counter(), 0
    while rounds < min_rounds or (time.perf_counter() - started < budget_s and rounds < max_rounds):
        for name, fn in fns.items():
            fn()
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
        rounds += 1
    return {name: min(t) for name, t in times.items()}


def peak_bytes(fn) -> int:
    """Peak tensor bytes allocated during one call, from the torch profiler's memory events."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    return max((e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"), default=0)


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "skipped"
    return f"{seconds * 1e3:10.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1k and 4k turns only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = [1_000, 4_000] if args.quick else [1_000, 16_000, 256_000]
    verl_sizes = {1_000} if args.quick else {1_000, 16_000}
    cuda = torch.cuda.is_available()
    started = time.perf_counter()
    print(f"torch {torch.__version__}, 1 CPU thread; CUDA: {torch.cuda.get_device_name() if cuda else 'none'}")
    print("times: minimum over 5-50 interleaved rounds (plain loop with vectorised, torch with Triton on GPU; "
          "each round times one call of each, right after an untimed warm-up call of the same), so machine load "
          "hits both sides of a ratio alike; verl-agent style: one timed call after a warm-up")
    if not cuda:
        print("Triton: skipped, no CUDA device (on CPU it runs only under TRITON_INTERPRET=1, far too slow to time)")
    print("verl-agent-style GiGPO: run at " + ", ".join(f"{s // 1000}k" for s in sorted(verl_sizes))
          + " turns only; it rescans the batch per trajectory and per group, quadratic in turns, "
          "so 256k would take far too long")

    results: dict[tuple[str, int], dict[str, float | None]] = {}
    for size in sizes:
        batch = make_batch(size)
        n = batch.num_turns
        print(f"\n== {n} turns ({batch.episode.unique().numel()} episodes, {batch.group.unique().numel()} groups) ==")
        print(f"{'estimator':<8} {'verl-agent style':>16} {'plain loop':>13} {'vectorised':>13} {'triton (GPU)':>13} "
              f"{'torch (GPU)':>13} {'loop/vec':>9} {'verl/vec':>9} {'peak MiB':>9} {'B/turn':>7}")
        for name in ESTIMATORS:
            row: dict[str, float | None] = {"turns": n}
            row.update(min_times({"vectorised": lambda: compute_advantages(batch, name),
                                  "loop": lambda: compute_advantages(batch, name, backend="reference")}))
            row["verl"] = None
            if name == "gigpo" and size in verl_sizes:
                if size == min(verl_sizes):
                    diff = (verl_agent_style_gigpo(batch) - compute_advantages(batch, "gigpo")).abs().max()
                    print(f"(check: verl-agent-style GiGPO matches the vectorised path to {float(diff):.1e})")
                row["verl"] = min_times({"verl": lambda: verl_agent_style_gigpo(batch)}, budget_s=0.0,
                                        min_rounds=1)["verl"]
            row["triton"] = row["torch_gpu"] = None
            if cuda:
                gpu_batch = batch.to("cuda")
                row.update(min_times({"triton": lambda: compute_advantages(gpu_batch, name, backend="triton"),
                                      "torch_gpu": lambda: compute_advantages(gpu_batch, name)},
                                     budget_s=0.5, max_rounds=100, sync=torch.cuda.synchronize))
            row["peak"] = peak_bytes(lambda: compute_advantages(batch, name))
            results[(name, size)] = row
            verl_ratio = f"{row['verl'] / row['vectorised']:8.0f}x" if row["verl"] else f"{'-':>9}"
            print(f"{name:<8} {fmt(row['verl']):>16} {fmt(row['loop']):>13} {fmt(row['vectorised']):>13} "
                  f"{fmt(row['triton']):>13} {fmt(row['torch_gpu']):>13} {row['loop'] / row['vectorised']:8.1f}x "
                  f"{verl_ratio} {row['peak'] / 2**20:9.2f} {row['peak'] / n:7.0f}")

    print("\n== goals ==")
    if args.quick:
        print("measured at 16k and 256k turns: not run with --quick")
    else:
        mid, big = 16_000, 256_000
        gigpo = results[("gigpo", mid)]
        goal("GiGPO vectorised vs verl-agent style at 16k", gigpo["verl"] / gigpo["vectorised"], GOAL_VS_VERL)
        for name in ESTIMATORS:
            r = results[(name, mid)]
            goal(f"{name} vectorised vs plain loop at 16k", r["loop"] / r["vectorised"], GOAL_VS_LOOP)
        for name in ESTIMATORS:
            growth = results[(name, big)]["vectorised"] / results[(name, mid)]["vectorised"]
            print(f"{name} vectorised time 256k / 16k: {growth:.1f}x for "
                  f"{results[(name, big)]['turns'] / results[(name, mid)]['turns']:.1f}x the turns "
                  f"(goal <= {GOAL_GROWTH:.0f}x): {'met' if growth <= GOAL_GROWTH else 'NOT met'}")
        for name in ESTIMATORS:
            per_turn = [results[(name, s)]["peak"] / results[(name, s)]["turns"] for s in (mid, big)]
            linear = per_turn[1] <= 1.25 * per_turn[0]
            print(f"{name} peak memory per turn 16k -> 256k: {per_turn[0]:.0f} -> {per_turn[1]:.0f} B "
                  f"(linear: within 1.25x): {'met' if linear else 'NOT met'}")
        for name in ESTIMATORS:
            r = results[(name, big)]
            if r["triton"] is None:
                print(f"{name} Triton vs vectorised on GPU at 256k (goal >= {GOAL_TRITON:.0f}x): skipped, no CUDA")
            else:
                goal(f"{name} Triton vs vectorised (GPU) at 256k", r["torch_gpu"] / r["triton"], GOAL_TRITON)
    print(f"\ntotal benchmark time {time.perf_counter() - started:.0f} s")


def goal(label: str, ratio: float, target: float) -> None:
    print(f"{label}: {ratio:.1f}x (goal >= {target:.0f}x): {'met' if ratio >= target else 'NOT met'}")


if __name__ == "__main__":
    main()
