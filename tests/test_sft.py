"""The supervised warm start trains on oracle actions, tokenised the way the rollout tokenises."""

import pytest
import torch

from envgym.cli import main
from envgym.trainers import Trainer, config_from_dict
from envgym.trainers.losses import sampled_logprobs
from envgym.trainers.sft import demonstration_batch, supervised_steps

CONFIG = {"threads": 1, "env": {"id": "games/Maze-v0", "kwargs": {"size": 3}, "max_turns": 6},
          "rollout": {"context": "full", "max_new_tokens": 2}, "sft": {"episodes": 8, "steps": 30, "lr": 3e-3},
          "eval": {"episodes": 4}}


@pytest.mark.slow
def test_demonstrations_train_only_on_oracle_action_tokens(tmp_path):
    config = config_from_dict({**CONFIG, "out_dir": str(tmp_path)})
    trainer = Trainer(config)
    batch = demonstration_batch(config, trainer.env_factory, trainer.tokenizer)
    tokenizer = trainer.tokenizer
    assert batch.num_rows == 8  # full context: one row per episode
    for ids, mask in zip(batch.input_ids, batch.loss_mask):
        # tokens, not decoded text: the tiny tokenizers decode with a space between words ("<|im_start|> user")
        assert tokenizer.convert_ids_to_tokens(ids[:2]) == ["<|im_start|>", "user"] and not any(mask[:2])
        trained = [t for t, m in zip(ids, mask) if m]
        words = tokenizer.convert_ids_to_tokens(trained)
        assert set(words) <= {"north", "south", "east", "west", "<|im_end|>"}
        assert words[1::2] == ["<|im_end|>"] * (len(words) // 2)  # each action is one move then end-of-turn

    def loss():
        with torch.no_grad():
            return float(-sampled_logprobs(trainer.model, next(batch.micro_batches(max_tokens=10**6)))[0].mean())

    before = loss()
    stats = supervised_steps(trainer.model, batch, steps=30, lr=3e-3, batch_tokens=2048, seed=0)
    assert loss() < before * 0.6 and stats["sft/tokens_per_s"] > 0


@pytest.mark.slow
def test_sft_command_saves_a_model_rl_can_start_from(tmp_path):
    import yaml

    recipe = tmp_path / "sft.yaml"
    recipe.write_text(yaml.safe_dump({**CONFIG, "out_dir": str(tmp_path / "run")}))
    assert main(["sft", str(recipe), "sft.steps=5"]) == 0
    assert (tmp_path / "run" / "sft" / "config.json").exists()
    config = config_from_dict({**CONFIG, "out_dir": str(tmp_path / "rl"),
                               "model": {"init_from": str(tmp_path / "run" / "sft")}})
    assert Trainer(config).tokenizer.convert_tokens_to_ids("north") > 0


def test_cli_rejects_bad_keys_with_a_suggestion(tmp_path, capsys):
    import yaml

    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump({"optim": {"lrr": 0.1}}))
    assert main(["train", str(recipe)]) == 2
    assert "did you mean 'optim.lr'" in capsys.readouterr().out
