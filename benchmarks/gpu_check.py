"""The GPU check: what envgym does on one GPU, in one table, in a few minutes, with nothing downloaded.

    bash scripts/gpu_check.sh            # or: make gpu-check; python benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --cpu # every row at toy sizes on the CPU (what CI runs)

Rows:
- advantages: GiGPO, IGPO and PRIME with the Triton kernels against the
  vectorised torch path, both on the GPU, at 16k and 256k turns (goal: Triton
  >= 3x at 256k); the batches of benchmarks/advantages.py;
- update: tokens/s of one PPO update step (the trainer's: logits only at the
  sampled tokens, PPO-clip, backward, AdamW) in bf16 for a ~135M Llama
  (SmolLM2-135M's shape) and a ~500M one, both built from a config, 8 rows of
  1024 tokens with the last 256 of each sampled; MFU against the GPU's dense
  bf16 peak (a table of known GPUs below; model FLOPs = 6 x non-embedding
  parameters x tokens + 12 x layers x width x 1024 x tokens for attention +
  6 x vocabulary x width x sampled tokens for the output head);
- train: one `envgym train` iteration of the quickstart recipe with the HF policy;
- fsdp2: the same iteration as rank 0 of a world of one (what `torchrun
  --nproc_per_node 1` sets up) with `distributed.strategy: fsdp`: FSDP2 on one GPU.
Each row reports its time and the peak GPU memory it allocated. A row that
fails prints its error in the table and the check exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

#: Dense bf16 tensor-core peak in TFLOP/s, by a substring of `torch.cuda.get_device_name()` (vendor datasheets).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "GH200": 989.0, "B200": 2250.0,
                    "A100": 312.0, "A800": 312.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10G": 70.0,
                    "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0}

#: name -> (layers, width, heads, kv heads, MLP width); vocabulary 49152 (SmolLM2's) for both.
LLAMAS = {"llama-135M": (30, 576, 9, 3, 1536), "llama-500M": (24, 1280, 20, 4, 3456)}
CPU_LLAMA = {"llama-toy": (2, 64, 4, 2, 128)}
VOCAB = 49152


class Table:
    """Rows of (check, size, result, seconds, peak GiB, note), printed as one table at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []
        self.failed = False

    def run(self, check: str, size: str, fn: Callable[[], tuple[str, str]], device: str) -> None:
        """Run `fn` -> (result, note) and add its row; an exception becomes a failed row."""
        import torch

        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        try:
            result, note = fn()
        except Exception as exc:  # one failed check must not hide the others
            self.failed = True
            result, note = "FAILED", f"{type(exc).__name__}: {exc}".splitlines()[0][:120]
            traceback.print_exc()
        seconds = time.perf_counter() - started
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f}" if device == "cuda" else "-"
        self.add(check, size, result, f"{seconds:.1f}", peak, note)

    def add(self, *row: str) -> None:
        self.rows.append(tuple(row))

    def print(self, title: str) -> None:
        head = ("check", "size", "result", "seconds", "peak GiB", "note")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(len(head))]
        print(f"\n{title}")
        for row in [head, tuple("-" * w for w in widths), *self.rows]:
            print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")


def advantages_row(turns: int, device: str) -> tuple[str, str]:
    """Triton vs the vectorised torch path on the device, per estimator: 'gigpo 5.1x, igpo 4.0x, prime 3.3x'."""
    import torch

    from advantages import ESTIMATORS, GOAL_TRITON, make_batch, min_times
    from envgym.trainers.advantages import compute_advantages

    batch = make_batch(turns).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    ratios = {}
    for name in ESTIMATORS:
        triton = compute_advantages(batch, name, backend="triton")
        reference = compute_advantages(batch, name)
        if not torch.allclose(triton, reference, atol=1e-4, rtol=1e-4):
            raise AssertionError(f"{name}: Triton and torch differ by {float((triton - reference).abs().max()):.1e}")
        times = min_times({"triton": lambda: compute_advantages(batch, name, backend="triton"),
                           "torch": lambda: compute_advantages(batch, name)},
                          budget_s=0.5 if device == "cuda" else 0.0, min_rounds=5 if device == "cuda" else 1,
                          max_rounds=100, sync=sync)
        ratios[name] = times["torch"] / times["triton"]
    if device != "cuda":
        return f"Triton = torch on {', '.join(ratios)}", "interpreted Triton on the CPU: agreement only, not speed"
    met = all(r >= GOAL_TRITON for r in ratios.values())
    return (", ".join(f"{k} {v:.1f}x" for k, v in ratios.items()),
            f"Triton vs torch on the GPU, goal >= {GOAL_TRITON:.0f}x: {'met' if met else 'NOT met'}")


def llama(shape: tuple[int, int, int, int, int], vocab: int, device: str, dtype):
    """A random-init LlamaForCausalLM of `shape` (layers, width, heads, kv heads, MLP width)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    layers, width, heads, kv_heads, mlp = shape
    config = LlamaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048,
                         tie_word_embeddings=True, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: a 500M init on the host CPU takes long
        return LlamaForCausalLM(config).to(dtype=dtype)


def update_row(shape: tuple[int, int, int, int, int], vocab: int, rows: int, length: int, sampled: int,
               device: str, steps: int) -> tuple[str, str]:
    """Tokens/s of the trainer's update step and its MFU against the device's peak."""
    import torch

    from envgym.trainers.batch import TokenBatch
    from envgym.trainers.losses import ppo_clip_loss, sampled_logprobs

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = llama(shape, vocab, device, dtype).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (rows, length), generator=generator)
    mask = torch.zeros(rows, length, dtype=torch.bool)
    mask[:, length - sampled:] = True
    batch = TokenBatch(ids, torch.ones_like(ids), mask, torch.full((rows, length), -2.0) * mask,
                       torch.zeros_like(ids), tuple(range(rows))).to(device)
    trained = int(batch.loss_mask[:, 1:].sum())

    def step() -> None:
        logprobs, _ = sampled_logprobs(model, batch)
        old = batch.old_logprobs[:, 1:][batch.loss_mask[:, 1:]]
        loss, _ = ppo_clip_loss(logprobs, old, torch.ones_like(logprobs), trained)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: kernels chosen, optimizer state allocated
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    layers, width = shape[0], shape[1]
    embedding = vocab * width
    params = sum(p.numel() for p in model.parameters())
    flops = (6 * (params - embedding) * rows * length + 12 * layers * width * length * rows * length
             + 6 * vocab * width * trained)
    tokens_per_s = rows * length / seconds
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if device == "cuda" and k in torch.cuda.get_device_name()),
                None)
    mfu = f"MFU {flops / seconds / (peak * 1e12):.1%} of {peak:.0f} TFLOP/s" if peak else "MFU: peak unknown"
    return f"{tokens_per_s:,.0f} tokens/s", f"{params / 1e6:.1f}M params, {dtype}, {mfu}"


def train_row(out_dir: str, overrides: list[str], rank_env: dict[str, str] | None = None) -> tuple[str, str]:
    """One `envgym train` iteration of the quickstart recipe, run in this process (so its GPU memory is counted);
    `rank_env` makes it rank 0 of a torchrun world of one (the variables torchrun sets)."""
    from envgym.cli import main as envgym_main

    saved = {key: os.environ.get(key) for key in rank_env or {}}
    os.environ.update(rank_env or {})
    try:
        code = envgym_main(["train", str(ROOT / "trainers" / "recipes" / "quickstart.yaml"), f"out_dir={out_dir}",
                            "iterations=1", "sft.steps=0", "eval.episodes=16", *overrides])
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if code != 0:
        raise RuntimeError(f"envgym train exited {code} (its message is above)")
    metrics = [json.loads(line) for line in Path(out_dir, "metrics.jsonl").read_text().splitlines()]
    rl = [m for m in metrics if m["phase"] == "rl"][-1]
    return (f"{rl['time/iteration']:.1f} s/iteration",
            f"rollout {rl['time/rollout']:.1f} s, update {rl['time/update']:.1f} s, "
            f"{rl['perf/update_tokens_per_s']:,.0f} update tokens/s")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="every row at toy sizes on the CPU (a smoke test)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); --cpu runs the toy-size check")
        return 2
    if device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # the Triton kernels run interpreted on the CPU
    started = time.perf_counter()
    table = Table()
    sizes = [1_000] if args.cpu else [16_000, 256_000]
    for turns in sizes:
        table.run("advantages", f"{turns // 1000}k turns", lambda t=turns: advantages_row(t, device), device)
    llamas = CPU_LLAMA if args.cpu else LLAMAS
    rows, length, sampled = (2, 64, 16) if args.cpu else (8, 1024, 256)
    for name, shape in llamas.items():
        table.run("update", f"{name}, {rows}x{length}",
                  lambda s=shape: update_row(s, 512 if args.cpu else VOCAB, rows, length, sampled, device,
                                             steps=3 if args.cpu else 5), device)
    small = [] if not args.cpu else ["rollout.n_groups=2", "rollout.group_size=2", "eval.episodes=2"]
    one_rank = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(free_port())}
    with tempfile.TemporaryDirectory() as tmp:
        table.run("train", "quickstart, 1 iteration", lambda: train_row(f"{tmp}/hf", small), device)
        table.run("fsdp2", "quickstart, 1 iteration, 1 rank",
                  lambda: train_row(f"{tmp}/fsdp", [*small, "distributed.strategy=fsdp"], one_rank), device)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (toy sizes)"
    table.print(f"envgym GPU check on {name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
                f"{time.perf_counter() - started:.0f} s")
    return 1 if table.failed else 0


if __name__ == "__main__":
    sys.exit(main())
