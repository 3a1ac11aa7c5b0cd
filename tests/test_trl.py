"""envgym envs in TRL's GRPOTrainer through `environment_factory` (envgym.trl), on a tiny model on the CPU."""

import importlib.util

import pytest

import envgym

pytestmark = pytest.mark.skipif(importlib.util.find_spec("trl") is None or importlib.util.find_spec("datasets") is None,
                                reason="trl is not installed (pip install 'envgym[trl]')")

ENV_ID = "games/GuessNumber-v0"


def test_the_environment_plays_the_rows_task_through_its_tool():
    from envgym.trl import EPISODE_OVER, environment_factory

    first, second = environment_factory(ENV_ID)(), environment_factory(ENV_ID)()
    assert first.reset(task=3, split="test", prompt="ignored") == second.reset(task=3, split="test")
    assert first.env.unwrapped.split == "test" and first.env.unwrapped.task == 3
    secret = first.env.unwrapped.secret
    answer = first.act(str(secret))
    assert "correct" in answer.lower() and answer.endswith(EPISODE_OVER)
    assert first.get_reward() == 1.0 and first.act("1") == EPISODE_OVER
    with pytest.raises(KeyError, match="unknown env id"):
        environment_factory("games/NoSuch-v0")


#: The tool call the tiny model is taught to write (Qwen3's format), then the end of its turn.
TOOL_CALL = '<tool_call>\n{"name": "act", "arguments": {"action": "2"}}\n</tool_call><|im_end|>'


def tool_calling_tiny_model(messages, tools):
    """A tiny word-level Llama with TRL's Qwen3 tool-calling template, trained (Adam, a few dozen steps) to
    answer `messages` with TOOL_CALL, so that GRPO's rollouts really call the env's tool."""
    import torch
    from trl.chat_template_utils import qwen3_chat_template

    from envgym.models import tiny_model, word_level_tokenizer

    words = {w for m in messages for w in m["content"].split()} | {"act", "action", "name", "arguments", "2"}
    tokenizer = word_level_tokenizer(sorted(words | set('{}":,')), chat_template=qwen3_chat_template,
                                     special_tokens=("<|im_start|>", "<|im_end|>", "<pad>", "<tool_call>",
                                                     "</tool_call>", "<tool_response>", "</tool_response>",
                                                     "<think>", "</think>"))
    tokenizer.padding_side = "left"
    model = tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, max_positions=4096, seed=0)
    torch.manual_seed(0)
    prompt = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    call_ids = tokenizer(TOOL_CALL, add_special_tokens=False)["input_ids"]
    inputs = torch.tensor([prompt_ids + call_ids])
    labels = torch.tensor([[-100] * len(prompt_ids) + call_ids])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(200):
        loss = model(input_ids=inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.05:
            break
    assert loss.item() < 0.05, f"the tiny model did not learn the tool call (loss {loss.item():.3f})"
    return model.eval(), tokenizer


@pytest.mark.slow
def test_one_grpo_step_plays_the_env_through_its_tool(tmp_path):
    from trl import GRPOConfig, GRPOTrainer

    from envgym.trl import EnvgymEnvironment, environment_factory, task_dataset

    knobs = {"high": 4}  # secrets 1-4: the taught guess "2" wins some tasks and loses others
    dataset = task_dataset(ENV_ID, tasks=4, env_kwargs=knobs)
    probe = EnvgymEnvironment(ENV_ID, knobs)
    first = dataset[0]["prompt"][0]  # every task opens with the same text (the secret is hidden)
    model, tokenizer = tool_calling_tiny_model([{**first, "content": first["content"] + probe.reset(task=0)}],
                                               [probe.act])
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, max_steps=1, per_device_train_batch_size=4,
                      num_generations=2, max_completion_length=64, max_tool_calling_iterations=1,
                      temperature=0.5, logging_steps=1, report_to="none", save_strategy="no",
                      learning_rate=1e-3, seed=0)
    trainer = GRPOTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=dataset,
                          environment_factory=environment_factory(ENV_ID, knobs))
    trainer.train()
    assert trainer.state.global_step == 1
    logged = trainer.state.log_history[0]
    assert logged["tools/call_frequency"] > 0 and "rewards/EnvgymEnvironment/mean" in logged
    played = [(e.env.unwrapped.split, e.env.unwrapped.task, e.turns, e.total_reward) for e in trainer.environments]
    assert len(played) == 4 and played[0][1] == played[1][1]  # one GRPO group: two rollouts of one task
    assert any(turns >= 1 for _, _, turns, _ in played)  # the model's tool calls stepped the env
    for split, task, turns, reward in played:  # the env's return is the rollout's reward: 1 where "2" won
        secret = envgym.make(ENV_ID, **knobs)
        secret.reset(seed=task, options={"split": split, "task": task})
        assert reward == (1.0 if turns and secret.unwrapped.secret == 2 else 0.0)
