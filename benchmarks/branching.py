"""Branched rollouts: what a branch costs in prefilled tokens with and without a copy of its root's KV cache.

    .venv/bin/python benchmarks/branching.py [--groups 2] [--group-size 2] [--k 2] [--every 3] [--budget 1]

The hf policy on the quickstart's tiny model ("tiny-maze") plays Maze episodes with
`rollout.branch`-style branching, twice on the same seeds: branches starting from a
copy of their root's KV cache (`HFPolicy.copy_cache`, what the rollout does), and
branches prefilling their whole first prompt (the copy turned off). Printed: episodes,
generated tokens, prompt tokens and the prompt tokens actually prefilled (prompt minus
those served from a cache), and the wall time of each, in one run.
"""

from __future__ import annotations

import argparse
import time

from envgym.branching import BranchOptions
from envgym.policies import HFPolicy, SamplingParams
from envgym.rollout import collect_groups
from envgym.models import load_model


class WithoutCacheCopy(HFPolicy):
    """Branches start with no cache: each prefills the whole prompt it shares with its root."""

    def copy_cache(self, source, target) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=2)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--budget", type=int, default=1)
    parser.add_argument("--max-turns", type=int, default=6)
    args = parser.parse_args()
    model, tokenizer = load_model("tiny-maze")
    branch = BranchOptions(k=args.k, every=args.every, budget=args.budget)
    print(f"Maze, {args.groups} x {args.group_size} episodes of <= {args.max_turns} turns, branch {branch}")
    print(f"{'':<22}{'episodes':>9}{'generated':>11}{'prompt':>9}{'prefilled':>11}{'wall s':>8}")
    for name, policy in (("KV copy (default)", HFPolicy(model, tokenizer)),
                         ("no KV copy", WithoutCacheCopy(model, tokenizer))):
        started = time.perf_counter()
        result = collect_groups("games/Maze-v0", policy, n_groups=args.groups, group_size=args.group_size, seed=0,
                                sampling=SamplingParams(max_new_tokens=4), max_turns=args.max_turns, branch=branch)
        m = result.metrics
        print(f"{name:<22}{m['episodes']:>9.0f}{m['generated_tokens']:>11.0f}{m['prompt_tokens']:>9.0f}"
              f"{m['prompt_tokens'] - m['cached_prompt_tokens']:>11.0f}{time.perf_counter() - started:>8.1f}")


if __name__ == "__main__":
    main()
