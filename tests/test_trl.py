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


@pytest.mark.slow
def test_one_grpo_step_with_an_envgym_environment(tmp_path):
    from trl import GRPOConfig, GRPOTrainer
    from trl.chat_template_utils import qwen3_chat_template

    from envgym.models import tiny_model, word_level_tokenizer
    from envgym.trl import environment_factory, task_dataset

    dataset = task_dataset(ENV_ID, tasks=4)
    words = {w for text in dataset["prompt"] for w in text[0]["content"].split()}
    tokenizer = word_level_tokenizer(sorted(words | {"act", "action", "name", "arguments", "tool_call"}),
                                     chat_template=qwen3_chat_template,
                                     special_tokens=("<|im_start|>", "<|im_end|>", "<pad>", "<tool_call>",
                                                     "</tool_call>", "<tool_response>", "</tool_response>",
                                                     "<think>", "</think>"))
    tokenizer.padding_side = "left"
    model = tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, max_positions=2048)
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, max_steps=1, per_device_train_batch_size=4,
                      num_generations=2, max_completion_length=8, logging_steps=1, report_to="none",
                      save_strategy="no", learning_rate=1e-3, seed=0)
    trainer = GRPOTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=dataset,
                          environment_factory=environment_factory(ENV_ID))
    trainer.train()
    assert trainer.state.global_step == 1
    logged = trainer.state.log_history[0]
    assert "rewards/EnvgymEnvironment/mean" in logged, sorted(logged)
    played = [(e.env.unwrapped.split, e.env.unwrapped.task) for e in trainer.environments]
    assert len(played) == 4 and all(split == "train" for split, _ in played)
    assert played[0][1] == played[1][1]  # one GRPO group: two rollouts of one task
