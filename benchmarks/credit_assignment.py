"""Credit assignment head to head: estimators trained with identical seeds and budgets, held-out success by iteration.

    python benchmarks/credit_assignment.py                         # maze: GRPO vs GiGPO vs PRIME, 3 seeds
    python benchmarks/credit_assignment.py --suite guess           # GuessNumber: GRPO vs IGPO
    python benchmarks/credit_assignment.py --iterations 20 --seeds 0 1 2 3 --jobs 1

Every run starts from the quickstart recipe (tiny model, oracle warm start) with
the suite's env, then changes only the estimator (and the turn-reward model it
needs). Runs are single-threaded, `--jobs` at a time (default 2, one per core
here); each prints its curve, and the table at the end gives mean and spread
(min-max) of held-out success over seeds at every evaluated iteration.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

SUITES = {
    "maze": {
        "overrides": [],  # the quickstart's own: 4x4 mazes, local view
        "estimators": {"grpo": [], "gigpo": [],
                       "prime": ["turn_reward.kind=implicit_prm", "algorithm.options={}", "turn_reward.prm_lr=1e-5"]},
    },
    "guess": {  # 1-50: 40 train and 10 test secrets, each test secret played 20 times (sampled)
        "overrides": ["model.name=tiny-guess", "env.id=games/GuessNumber-v0", "env.kwargs={low: 1, high: 50}",
                      "env.max_turns=7", "env.show_admissible=false", "rollout.context=full",
                      "rollout.max_new_tokens=2", "sft.steps=60"],
        "estimators": {"grpo": [], "igpo": ["turn_reward.kind=info_gain", "algorithm.options={}"]},
    },
}


def run(suite: str, estimator: str, seed: int, iterations: int, out_root: str) -> dict[int, float]:
    """Held-out success by iteration of one run (iteration 0: after the warm start)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    from envgym.trainers import Trainer, load_config
    from envgym.trainers.config import recipes_dir

    spec = SUITES[suite]
    overrides = [*spec["overrides"], f"algorithm.estimator={estimator}", *spec["estimators"][estimator],
                 f"seed={seed}", f"iterations={iterations}", f"out_dir={out_root}/{suite}-{estimator}-{seed}",
                 "eval.every=5", "threads=1"]
    if estimator == "grpo":
        overrides.append("algorithm.options={}")
    # a re-run measures afresh: the previous run of this suite, estimator and seed is replaced
    with Trainer(load_config(recipes_dir() / "quickstart.yaml", overrides), overwrite=True) as trainer:
        history = trainer.fit()
    curve = {int(m["iteration"]): m["eval/success"] for m in history
             if m.get("phase") != "init" and "eval/success" in m}
    print(f"{estimator} seed {seed}: {curve} ({time.perf_counter() - started:.0f} s)", flush=True)
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="maze")
    parser.add_argument("--estimators", nargs="*", help="a subset of the suite's estimators")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--out", default="runs/credit_assignment")
    args = parser.parse_args()
    estimators = args.estimators or list(SUITES[args.suite]["estimators"])
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {estimator: [pool.submit(run, args.suite, estimator, seed, args.iterations, args.out)
                               for seed in args.seeds] for estimator in estimators}
        curves = {estimator: [f.result() for f in runs] for estimator, runs in futures.items()}
    iterations = sorted(set.intersection(*(set(c) for runs in curves.values() for c in runs)))
    print(f"\nheld-out success, suite {args.suite}, seeds {args.seeds}: mean [min-max]; iteration 0 = after warm start")
    print(f"{'iteration':>9}" + "".join(f"{e:>22}" for e in estimators))
    for it in iterations:
        cells = []
        for estimator in estimators:
            values = [c[it] for c in curves[estimator]]
            cells.append(f"{statistics.mean(values):.3f} [{min(values):.2f}-{max(values):.2f}]")
        print(f"{it:>9}" + "".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
