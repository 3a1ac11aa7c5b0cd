"""Gateway cost: per-request overhead against calling the policy directly, and an agent rollout's tokens/s
against the built-in loop on the same env.

Overhead: `--requests` chat completions of one prompt (a MathPython first prompt with its tools) through
the gateway with the `openai` SDK (a fresh episode each, so every request renders and prefills the same
prompt), interleaved with the same work done directly (render with the chat template, tokenise,
`policy.generate`); the overhead is the median of the paired differences (goal: under 5 ms on localhost),
once with a policy that answers instantly (the gateway's own cost: HTTP, JSON, template, tokeniser, thread
hand-offs) and once with the tiny Llama (plus what sharing the CPU with a generating thread costs).
Rollout: `--groups` x `--group-size` episodes of tools/MathPython-v0 (`--turns` turns, `--new-tokens`
tokens a reply, sampled) with the built-in loop (`collect_groups`) and with `envgym.example_agents:
chat_agent` through the gateway (`collect_agent_groups`), same policy, seeds and limits; generated tokens
per second of wall time and the ratio of their medians over `--rounds` alternated runs. The policy is a tiny
random Llama (the model's own time is small, so the gateway's share is as large as it gets).

    .venv/bin/python benchmarks/gateway.py [--requests 200] [--groups 4] [--group-size 4] [--turns 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class InstantPolicy:
    """A token policy that answers at once with the same four ids: what is left is the gateway's own cost."""

    def __init__(self, tokenizer):
        from envgym.chat import encode

        self.tokenizer = tokenizer
        self.ids = encode(tokenizer, "python python") + [tokenizer.eos_token_id]

    def generate(self, prompts, params):
        from envgym.policies import Completion

        return [Completion(list(self.ids), [0.0] * len(self.ids), "python python", "stop") for _ in prompts]

    def score(self, prompts, continuations):
        raise NotImplementedError("not needed to time requests")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="rollouts of each kind, alternated")
    args = parser.parse_args()

    import httpx
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

    prompt_tokens = len(encode(tokenizer, render(tokenizer, messages, True, tools)))
    for name, measured in (("instant policy (the gateway's own cost)", InstantPolicy(tokenizer)),
                           ("tiny Llama", policy)):
        direct, raw, sdk = [], [], []
        body = json.dumps({"model": "policy", "messages": messages, "tools": tools})
        with Gateway(measured, sampling=greedy) as gateway, httpx.Client() as http:
            for i in range(args.requests + 5):  # the first 5 rounds warm up (imports, connections, allocator)
                times = [time.perf_counter()]
                measured.generate([encode(tokenizer, render(tokenizer, messages, True, tools))], greedy)
                times.append(time.perf_counter())
                record = gateway.open_episode()
                http.post(gateway.base_url(record) + "/chat/completions", content=body,
                          headers={"Content-Type": "application/json"}).raise_for_status()
                times.append(time.perf_counter())
                gateway.end_episode(record, "measured")  # an open episode would be waited for (batch_wait)
                record = gateway.open_episode()
                gateway.client(record).chat.completions.create(model="policy", messages=messages, tools=tools)
                times.append(time.perf_counter())
                gateway.end_episode(record, "measured")
                if i >= 5:
                    for kept, (a, b) in zip((direct, raw, sdk), zip(times, times[1:])):
                        kept.append(b - a)
        print(f"{name}, {args.requests} requests of {prompt_tokens} prompt tokens, 4 new: direct "
              f"{statistics.median(direct) * 1e3:.2f} ms; overhead (median of paired differences; goal < 5 ms): "
              f"HTTP {statistics.median(r - d for r, d in zip(raw, direct)) * 1e3:.2f} ms, with the openai SDK "
              f"client {statistics.median(s - d for s, d in zip(sdk, direct)) * 1e3:.2f} ms")

    sampling = SamplingParams(max_new_tokens=args.new_tokens)
    common = dict(n_groups=args.groups, group_size=args.group_size, max_turns=args.turns, sampling=sampling, seed=1)
    maker = EnvMaker("tools/MathPython-v0")
    rates: dict[str, list[float]] = {"built-in loop": [], "agent via gateway": []}
    for _ in range(args.rounds):  # alternated, medians: the machine's load drifts between runs
        for name, result in (("built-in loop", collect_groups(maker, policy, backend="sync", **common)),
                             ("agent via gateway", collect_agent_groups(maker, policy, chat_agent, **common))):
            rates[name].append(result.metrics["generated_tokens"] / result.metrics["wall_time"])
            print(f"{name}: {int(result.metrics['episodes'])} episodes, {int(result.metrics['turns'])} turns, "
                  f"{int(result.metrics['generated_tokens'])} tokens in {result.metrics['wall_time']:.2f} s = "
                  f"{rates[name][-1]:.0f} tokens/s")
    rates = {name: statistics.median(values) for name, values in rates.items()}
    print(f"agent/built-in tokens/s ratio (medians of {args.rounds}): "
          f"{rates['agent via gateway'] / rates['built-in loop']:.2f}")


if __name__ == "__main__":
    main()
