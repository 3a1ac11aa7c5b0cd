"""Does asynchronous training learn as well as the synchronous loop? Quickstart, same episodes, several seeds.

    python benchmarks/async_learning.py [--seeds 0 1 2] [--k 2] [--reuse] [key=value ...]

Trains the quickstart recipe (warm start, then GiGPO on local-view mazes, the
tiny model) three ways for each seed, each in its own process:

- sync: `rollout.max_staleness: 0`;
- async k + tis: `rollout.max_staleness: k`, `algorithm.correction: tis`;
- async k, no correction: `rollout.max_staleness: k` alone.

Every way plays the same number of episodes (the recipe's iterations x groups
x group size). Prints each run's last held-out success (`eval/success`), the
mean and the spread (min..max) over seeds per way, whether each asynchronous
way's mean lies within the synchronous seeds' spread, and, per way, the largest
engine-vs-trainer KL (`rollout/engine_kl_k3`), clip fraction and corrected
fraction seen, which say what happened to a run that fell behind.
The full comparison (3 seeds x 3 ways x 40 iterations) takes 30-60 minutes on a
2-core CPU; `iterations=10 eval.episodes=100` is a reduced version.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

RECIPE = Path(__file__).resolve().parent.parent / "trainers" / "recipes" / "quickstart.yaml"


def ways(k: int) -> dict[str, list[str]]:
    return {"sync": ["rollout.max_staleness=0"],
            f"async k={k} + tis": [f"rollout.max_staleness={k}", "algorithm.correction=tis"],
            f"async k={k}, no correction": [f"rollout.max_staleness={k}"]}


def train(overrides: list[str]) -> dict[str, float]:
    """The last held-out success of one run and the most its off-policy diagnostics reached."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from envgym.trainers import Trainer, load_config

    trainer = Trainer(load_config(RECIPE, overrides), overwrite=True)
    try:
        history = trainer.fit()
    finally:
        trainer.close()
    return summarize(history)


def finished(overrides: list[str]) -> dict[str, float] | None:
    """`summarize` of the run these overrides name if its metrics.jsonl reaches the config's last iteration."""
    from envgym.run_files import read_metrics
    from envgym.trainers import load_config

    config = load_config(RECIPE, overrides)
    history = read_metrics(config.out_dir)
    done = [m for m in history if m["phase"] == "rl" and m["iteration"] == config.iterations]
    return summarize(history) if done else None


def summarize(history: list[dict]) -> dict[str, float]:
    rl = [m for m in history if m["phase"] == "rl"]
    return {"success": history[-1]["eval/success"],
            "engine_kl_k3": max(m["rollout/engine_kl_k3"] for m in rl),
            "clip_fraction": max(m["loss/clip_fraction"] for m in rl),
            "corrected_fraction": max(m["loss/corrected_fraction"] for m in rl)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, default=2, help="the staleness bound of the asynchronous ways")
    parser.add_argument("--out-dir", default="runs/bench_async_learning")
    parser.add_argument("--reuse", action="store_true",
                        help="take the runs already finished under --out-dir (same overrides) instead of training "
                             "them again")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # one run's overrides as JSON, in a subprocess
    parser.add_argument("overrides", nargs="*", help="quickstart overrides, e.g. iterations=10")
    args = parser.parse_args()
    if args.run:
        print(json.dumps(train(json.loads(args.run))))
        return
    results: dict[str, list[dict[str, float]]] = {}
    for way, extra in ways(args.k).items():
        for seed in args.seeds:
            name = f"{way.replace(' ', '').replace(',', '-').replace('=', '').replace('+', '-')}_seed{seed}"
            run = [*args.overrides, f"seed={seed}", f"out_dir={args.out_dir}/{name}", *extra]
            result = finished(run) if args.reuse else None
            if result is None:
                proc = subprocess.run([sys.executable, __file__, "--run", json.dumps(run)], capture_output=True,
                                      text=True)
                if proc.returncode:
                    sys.exit(f"async_learning: {way}, seed {seed} failed (exit {proc.returncode}):\n"
                             f"{proc.stderr[-3000:]}")
                result = json.loads(proc.stdout.strip().splitlines()[-1])
            results.setdefault(way, []).append(result)
            print(f"{way}, seed {seed}: {results[way][-1]}", flush=True)
    print(f"quickstart{' ' + ' '.join(args.overrides) if args.overrides else ''}, seeds {args.seeds}: "
          "held-out success at the end (equal episodes per way)")
    sync = [r["success"] for r in results["sync"]]
    print(f"{'way':<28} {'per seed':<24} {'mean':>6} {'spread':>13} {'max k3':>8} {'max clip':>8} {'max corr':>8}")
    for way, runs in results.items():
        scores = [r["success"] for r in runs]
        mean = sum(scores) / len(scores)
        within = "" if way == "sync" else ("  within sync's spread" if min(sync) <= mean <= max(sync)
                                             else "  OUTSIDE sync's spread")
        print(f"{way:<28} {' '.join(f'{s:.3f}' for s in scores):<24} {mean:6.3f} "
              f"{min(scores):6.3f}..{max(scores):.3f} {max(r['engine_kl_k3'] for r in runs):8.4f} "
              f"{max(r['clip_fraction'] for r in runs):8.3f} {max(r['corrected_fraction'] for r in runs):8.3f}{within}")


if __name__ == "__main__":
    main()
