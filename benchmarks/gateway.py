"""Gateway cost: per-request overhead against calling the policy directly, and an agent rollout's tokens/s
against the built-in loop on the same env.

Overhead: `--requests` chat completions of one prompt (a MathPython first prompt with its tools) through
the gateway with the `openai` SDK (a fresh episode each, so every request renders and prefills the same
prompt), interleaved with the same work done directly (render with the chat template, tokenise,
`policy.generate`); the overhead is the median of the paired differences (goal: under 5 ms on localhost).
Rollout: `--groups` x `--group-size` episodes of tools/MathPython-v0 (`--turns` turns, `--new-tokens`
tokens a reply, sampled) with the built-in loop (`collect_groups`) and with `envgym.example_agents:
chat_agent` through the gateway (`collect_agent_groups`), same policy, seeds and limits; generated tokens
per second of wall time and their ratio. The policy is a tiny random Llama (the model's own time is
small, so the gateway's share is as large as it gets).

    .venv/bin/python benchmarks/gateway.py [--requests 200] [--groups 4] [--group-size 4] [--turns 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    import envgym
    from envgym.agents import collect_agent_groups
    from envgym.chat import encode, render
    from envgym.example_agents import chat_agent
    from envgym.gateway import Gateway
    from envgym.models import HERMES_TOOLS_TEMPLATE, tiny_model, word_level_tokenizer
    from envgym.policies import HFPolicy, SamplingParams
    from envgym.rollout import collect_groups
    from envgym.wrappers import EnvMaker

    torch.set_num_threads(args.threads)
    tokenizer = word_level_tokenizer(["tool_call", "name", "arguments", "python", "code", "answer", "{", "}", ":",
                                      ",", '"', "<", ">", "/"], chat_template=HERMES_TOOLS_TEMPLATE)
    policy = HFPolicy(tiny_model(tokenizer), tokenizer)
    env = envgym.make("tools/MathPython-v0")
    observation, info = env.reset(seed=0)
    messages = [{"role": "system", "content": env.unwrapped.instructions}, {"role": "user", "content": observation}]
    tools = info["tools"]
    env.close()
    greedy = SamplingParams(temperature=0.0, max_new_tokens=4)

    with Gateway(policy, sampling=greedy) as gateway:
        direct, through = [], []
        for i in range(args.requests + 5):  # the first 5 pairs warm up (imports, connection, allocator)
            start = time.perf_counter()
            policy.generate([encode(tokenizer, render(tokenizer, messages, True, tools))], greedy)
            middle = time.perf_counter()
            record = gateway.open_episode()
            gateway.client(record).chat.completions.create(model="policy", messages=messages, tools=tools)
            gateway.end_episode(record, "measured")
            end = time.perf_counter()
            if i >= 5:
                direct.append(middle - start)
                through.append(end - middle)
    overhead = statistics.median(t - d for t, d in zip(through, direct))
    print(f"per request ({args.requests} pairs, prompt {len(encode(tokenizer, render(tokenizer, messages, True, tools)))}"
          f" tokens, 4 new): direct {statistics.median(direct) * 1e3:.2f} ms, through the gateway "
          f"{statistics.median(through) * 1e3:.2f} ms, overhead {overhead * 1e3:.2f} ms (median of paired differences; "
          f"goal < 5 ms)")

    sampling = SamplingParams(max_new_tokens=args.new_tokens)
    common = dict(n_groups=args.groups, group_size=args.group_size, max_turns=args.turns, sampling=sampling, seed=1)
    maker = EnvMaker("tools/MathPython-v0")
    built_in = collect_groups(maker, policy, backend="sync", **common)
    agent = collect_agent_groups(maker, policy, chat_agent, **common)
    rates = {}
    for name, result in (("built-in loop", built_in), ("agent via gateway", agent)):
        rates[name] = result.metrics["generated_tokens"] / result.metrics["wall_time"]
        print(f"{name}: {int(result.metrics['episodes'])} episodes, {int(result.metrics['turns'])} turns, "
              f"{int(result.metrics['generated_tokens'])} tokens in {result.metrics['wall_time']:.2f} s = "
              f"{rates[name]:.0f} tokens/s")
    print(f"agent/built-in tokens/s ratio: {rates['agent via gateway'] / rates['built-in loop']:.2f}")


if __name__ == "__main__":
    main()
