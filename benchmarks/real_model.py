"""The fastest honest path for a real model on this CPU: a recipe's training iteration in float32 and bfloat16.

    .venv/bin/python benchmarks/real_model.py                          # smollm2_maze.yaml: hf fp32 vs hf bf16
    .venv-vllm/bin/python benchmarks/real_model.py --paths hf-fp32 hf-bf16 vllm-bf16   # ... and a vLLM engine
    .venv/bin/python benchmarks/real_model.py --recipe smollm2_math.yaml --iterations 3

Each path trains the recipe's model (SmolLM2-135M-Instruct + LoRA) for `--iterations` iterations (the first
warms up and is not counted) on the same seeds, without the warm start, so every path plays the same kind of
episodes; it prints the mean seconds of rollout, update and iteration, generated and trained tokens per second,
the engine-vs-trainer logprob gap (mean and max over sampled tokens: what the rollout recorded against what the
update recomputes), peak memory, and each path's iteration time as a ratio against float32 with the hf policy,
measured in the same run. Then the prefill row: one batched prefill of the hf policy with the last position's
logits taken as an index (what `HFPolicy` does) against `logits_to_keep=1` (a strided slice that made `matmul`
copy the frozen output layer once per row). Run it on a quiet machine: two threads, nothing else running.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PATHS = {
    "hf-fp32": ["model.dtype=float32", "rollout.backend=hf"],
    "hf-bf16": ["model.dtype=bfloat16", "rollout.backend=hf"],
    "vllm-bf16": ["model.dtype=bfloat16", "rollout.backend=vllm"],
}
KEYS = ("time/rollout", "time/update", "time/weight_sync", "time/iteration", "perf/generated_tokens_per_s",
        "perf/update_tokens_per_s", "rollout/logprob_diff_mean", "rollout/logprob_diff_max", "perf/peak_rss_gb")


def measure_path(recipe: str, path: str, iterations: int, threads: int) -> dict[str, float]:
    """Mean of `KEYS` over iterations 2..`iterations` of `recipe` trained along `path`."""
    from envgym.trainers import Trainer, load_config
    from envgym.trainers.config import recipes_dir

    with tempfile.TemporaryDirectory() as out:
        overrides = [*PATHS[path], "sft.steps=0", f"threads={threads}", f"out_dir={out}", "seed=0"]
        with Trainer(load_config(recipes_dir() / recipe, overrides)) as trainer:
            runs = [trainer.train_iteration() for _ in range(iterations)][1:]  # the first warms up
    return {key: statistics.mean(m.get(key, 0.0) for m in runs) for key in KEYS}


def prefill_row(threads: int, rows: int = 32, tokens: int = 97) -> None:
    """Seconds of one batched prefill of frozen (LoRA-style) bf16 SmolLM2: index logits vs `logits_to_keep=1`."""
    import torch

    from envgym.models import load_model

    torch.set_num_threads(threads)
    model = load_model("default")[0].to(torch.bfloat16).eval().requires_grad_(False)
    ids = torch.randint(0, 1000, (rows, tokens))
    seconds = {}
    with torch.inference_mode():
        for name, keep in (("logits_to_keep=1", 1), ("last index (HFPolicy)", torch.tensor([tokens - 1]))):
            model(input_ids=ids, logits_to_keep=keep)  # warm-up
            started = time.perf_counter()
            for _ in range(3):
                model(input_ids=ids, logits_to_keep=keep)
            seconds[name] = (time.perf_counter() - started) / 3
    print(f"\nprefill of {rows} x {tokens} tokens, frozen bf16 SmolLM2, {threads} threads:")
    for name, value in seconds.items():
        print(f"  {name:<24} {value:6.3f} s")
    print(f"  speed-up {seconds['logits_to_keep=1'] / seconds['last index (HFPolicy)']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="smollm2_maze.yaml")
    parser.add_argument("--paths", nargs="*", choices=sorted(PATHS), default=["hf-fp32", "hf-bf16"])
    parser.add_argument("--iterations", type=int, default=3, help="per path; the first warms up")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.iterations < 2:
        parser.error("--iterations must be >= 2 (the first warms up)")
    results = {}
    for path in args.paths:
        results[path] = measure_path(args.recipe, path, args.iterations, args.threads)
        print(f"{path} done: {results[path]['time/iteration']:.1f} s per iteration", flush=True)
    base = results.get("hf-fp32")
    print(f"\n{args.recipe}, untrained model, mean of iterations 2..{args.iterations}, {args.threads} threads:")
    print(f"{'path':<10}{'iteration s':>12}{'rollout s':>10}{'update s':>9}{'sync s':>8}{'gen tok/s':>10}"
          f"{'upd tok/s':>10}{'gap mean':>9}{'gap max':>8}{'peak GiB':>9}{'vs fp32':>8}")
    for path, r in results.items():
        ratio = f"{base['time/iteration'] / r['time/iteration']:.2f}x" if base else "-"
        print(f"{path:<10}{r['time/iteration']:12.1f}{r['time/rollout']:10.1f}{r['time/update']:9.1f}"
              f"{r['time/weight_sync']:8.2f}{r['perf/generated_tokens_per_s']:10.1f}{r['perf/update_tokens_per_s']:10.0f}"
              f"{r['rollout/logprob_diff_mean']:9.4f}{r['rollout/logprob_diff_max']:8.3f}{r['perf/peak_rss_gb']:9.2f}"
              f"{ratio:>8}")
    prefill_row(args.threads)


if __name__ == "__main__":
    main()
