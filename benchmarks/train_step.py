"""Policy-update throughput and peak memory: the tiny quickstart model and SmolLM2-135M (full and LoRA).

    python benchmarks/train_step.py [--rows 8] [--length 256] [--steps 3]

One update step is what `Trainer.update` does per micro-batch: forward, PPO-clip
loss on the sampled tokens (the last `--sampled` of each row), backward, AdamW
step. Each model runs in its own subprocess, single-threaded, so peak RSS is
its own. Ratios are against SmolLM2-135M full fine-tuning measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

MODELS = ("tiny-maze", "smollm2-full", "smollm2-lora16")


def measure(name: str, rows: int, length: int, sampled: int, steps: int) -> dict[str, float]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from envgym.trainers.config import LoraOptions, ModelOptions
    from envgym.trainers.losses import ppo_clip_loss, sampled_logprobs
    from envgym.trainers.batch import RolloutBatch
    from envgym.trainers.factories import policy_model
    from envgym.trajectory import Episode, EpisodeEnd, Group, Turn

    torch.set_num_threads(1)
    options = {"tiny-maze": ModelOptions(name="tiny-maze"), "smollm2-full": ModelOptions(name="default"),
               "smollm2-lora16": ModelOptions(name="default", lora=LoraOptions(r=16, alpha=32))}[name]
    model, tokenizer = policy_model(options, seed=0)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(tokenizer), (rows, length), generator=generator).tolist()
    prompt = length - sampled
    episodes = tuple(Episode("bench", "train", 0, 0, (Turn("", "", 0.0, "s", False, obs_ids=tuple(row[:prompt]),
                                                           action_ids=tuple(row[prompt:]),
                                                           logprobs=(-1.0,) * sampled),), EpisodeEnd.TERMINATED)
                     for row in ids)
    batch = next(RolloutBatch.from_groups([Group("bench", "train", 0, 0, episodes)]).micro_batches(max_tokens=10**9))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    model.train()
    advantages = torch.ones(1)
    timings = []
    for step in range(steps + 1):  # the first step warms up allocators and kernels
        started = time.perf_counter()
        logprobs, _ = sampled_logprobs(model, batch)
        loss, _ = ppo_clip_loss(logprobs, batch.old_logprobs[:, 1:][batch.loss_mask[:, 1:]],
                                advantages.expand_as(logprobs), logprobs.numel())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:
            timings.append(time.perf_counter() - started)
    tokens = rows * length
    return {"tokens_per_s": tokens / (sum(timings) / len(timings)),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "trainable_params": float(sum(p.numel() for p in model.parameters() if p.requires_grad))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--sampled", type=int, default=32, help="trained (sampled) tokens at the end of each row")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--one", choices=MODELS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.rows, args.length, args.sampled, args.steps)))
        return
    results = {}
    for name in MODELS:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--rows", str(args.rows), "--length",
                              str(args.length), "--sampled", str(args.sampled), "--steps", str(args.steps)],
                             capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results["smollm2-full"]["tokens_per_s"]
    print(f"policy update, {args.rows} rows x {args.length} tokens ({args.sampled} sampled per row), 1 thread")
    print(f"{'model':<16}{'trainable':>12}{'tokens/s':>12}{'x smollm2-full':>16}{'peak RSS MiB':>14}")
    for name, r in results.items():
        print(f"{name:<16}{r['trainable_params']:>12.3g}{r['tokens_per_s']:>12.0f}{r['tokens_per_s'] / base:>16.2f}"
              f"{r['peak_rss_mib']:>14.0f}")


if __name__ == "__main__":
    main()
