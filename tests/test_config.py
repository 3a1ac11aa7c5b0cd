"""YAML -> TrainConfig: typed, validated, with errors that name the key and suggest the right one."""

import json
import subprocess
import sys

import pytest

from envgym.trainers.config import ConfigError, TrainConfig, config_from_dict, load_config, recipes_dir


def test_defaults_validate():
    assert TrainConfig().validate().algorithm.estimator == "gigpo"


def test_nested_values_and_overrides():
    cfg = config_from_dict({"optim": {"lr": "3e-4"}, "env": {"kwargs": {"size": 4}}},
                           ["rollout.group_size=4", "loss.kl_coef=0.01", "model.init_from=runs/sft"])
    assert cfg.optim.lr == pytest.approx(3e-4)  # YAML reads 3e-4 as a string; the float field reads it
    assert cfg.env.kwargs == {"size": 4}
    assert cfg.rollout.group_size == 4 and cfg.loss.kl_coef == 0.01 and cfg.model.init_from == "runs/sft"


@pytest.mark.parametrize("data, message", [
    ({"optim": {"lrr": 1e-3}}, "unknown config key 'optim.lrr'; did you mean 'optim.lr'"),
    ({"iteratons": 3}, "did you mean 'iterations'"),
    ({"rollout": {"group_size": "eight"}}, "rollout.group_size must be an integer"),
    ({"rollout": {"group_size": 2.5}}, "rollout.group_size must be an integer"),
    ({"algorithm": {"estimator": "gipgo"}}, "did you mean 'gigpo'"),
    ({"env": {"show_admissible": "yes"}}, "env.show_admissible must be true or false"),
    ({"optim": 3}, "optim must be a mapping"),
])
def test_bad_keys_and_types_fail_naming_the_key(data, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        config_from_dict(data)


def test_group_of_one_with_a_group_estimator_fails():
    with pytest.raises(ConfigError, match="group_size >= 2"):
        config_from_dict({"rollout": {"group_size": 1}})
    with pytest.raises(ConfigError, match="group_size >= 2"):  # a branching estimator needs its branches
        config_from_dict({"rollout": {"group_size": 1}, "algorithm": {"estimator": "spo_tree"}})
    tree = config_from_dict({"rollout": {"group_size": 1, "branch": {"k": 2, "turns": [3]}},
                             "algorithm": {"estimator": "spo_tree"}})
    assert tree.rollout.group_size == 1


def test_turn_reward_estimators_need_their_model():
    with pytest.raises(ConfigError, match="turn_reward.kind: info_gain"):
        config_from_dict({"algorithm": {"estimator": "igpo"}})


def test_vllm_engine_settings_need_the_vllm_backend():
    assert config_from_dict({"rollout": {"backend": "vllm", "vllm": {"max_model_len": 2048}}}).rollout.vllm == {
        "max_model_len": 2048}
    with pytest.raises(ConfigError, match="rollout.backend is 'hf'; set rollout.backend: vllm"):
        config_from_dict({}, ["rollout.vllm={max_model_len: 2048}"])


def test_malformed_override():
    with pytest.raises(ConfigError, match="section.key=value"):
        config_from_dict({}, ["optim.lr"])


def test_missing_file_names_the_recipes_folder(tmp_path):
    with pytest.raises(ConfigError, match="recipes"):
        load_config(tmp_path / "nope.yaml")


def test_every_recipe_loads():
    recipes = sorted(recipes_dir().glob("*.yaml"))
    assert len(recipes) >= 5
    for path in recipes:
        load_config(path)


@pytest.mark.parametrize("override, message", [
    ("optim.grad_clip=-1", "optim.grad_clip must be > 0, got -1.0 (the gradient norm is clipped to it"),
    ("optim.grad_clip=0", "optim.grad_clip must be > 0, got 0.0"),
    ("loss.kl_coef=-0.1", "loss.kl_coef must be >= 0, got -0.1"),
    ("loss.entropy_coef=-0.01", "loss.entropy_coef must be >= 0, got -0.01"),
    ("rollout.top_p=0", "rollout.top_p must be in (0, 1], got 0.0"),
    ("env.max_turns=0", "env.max_turns must be >= 1, got 0"),
    ("env.max_turns=-3", "env.max_turns must be >= 1, got -3"),
    ("sft.steps=-1", "sft.steps must be >= 0, got -1"),
    ("eval.temperature=-0.5", "eval.temperature must be >= 0, got -0.5"),
    ("optim.lr=1e9", "optim.lr must be in [0, 1], got 1000000000.0"),
    ("optim.lr=-1", "optim.lr must be in [0, 1], got -1.0"),
    ("optim.lr=.nan", "optim.lr must be in [0, 1], got nan"),
    ("eval.episodes=0", "eval.episodes must be >= 1, got 0"),
    ("threads=-1", "threads must be >= 0, got -1"),
    ("seed=-1", "seed must be in [0, 4294967296), got -1"),
    ("optim.beta2=1", "optim.beta2 must be in [0, 1), got 1.0"),
    ("model.lora.dropout=1.5", "model.lora.dropout must be in [0, 1), got 1.5"),
    ("checkpoint.keep=0", "checkpoint.keep must be >= 1, got 0"),
    ("turn_reward.answer_template=x", "turn_reward.answer_template must contain {answer}"),
])
def test_values_out_of_range_fail_naming_key_value_and_range(override, message):
    with pytest.raises(ConfigError) as raised:
        config_from_dict({}, [override])
    assert message in str(raised.value)


def test_ranges_are_checked_for_configs_built_in_python_too():
    config = TrainConfig()
    config.optim.grad_clip = -1.0
    with pytest.raises(ConfigError, match="optim.grad_clip must be > 0"):
        config.validate()


@pytest.mark.parametrize("text, where, problem", [
    ("iterations: 3\noptim:\n  lr: 1e-3\n   bad: 1\n", ":4:7:", "mapping values are not allowed here"),
    ("env: {id: games/Maze-v0\n", ":2:1:", "expected ',' or '}'"),
])
def test_yaml_syntax_errors_name_file_line_and_column(tmp_path, text, where, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value).startswith(f"{path}{where} invalid YAML") and problem in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_top_level_list_is_not_a_config(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- iterations: 3\n- seed: 1\n")
    with pytest.raises(ConfigError, match="list.yaml: a config must be a mapping of sections and keys"):
        load_config(path)


def test_an_override_that_is_not_yaml_names_itself():
    with pytest.raises(ConfigError, match=r"override 'optim.lr=\[': the value is not valid YAML"):
        config_from_dict({}, ["optim.lr=["])


_CUSTOM_ESTIMATOR = """
import json, sys
import torch
from envgym.trainers import ConfigError, Trainer, config_from_dict
from envgym.trainers.advantages import compute_advantages, register_estimator

calls = []


@register_estimator("sign_grpo")
def sign_grpo(batch, ops, *, margin: float = 0.0):
    calls.append(batch.num_turns)
    grpo = compute_advantages(batch, "grpo")
    return torch.where(grpo.abs() > margin, torch.sign(grpo), torch.zeros_like(grpo))


config = {"iterations": 1, "threads": 1, "out_dir": sys.argv[1], "env": {"id": "games/Maze-v0", "kwargs": {"size": 3},
          "max_turns": 4}, "rollout": {"n_groups": 2, "group_size": 2, "max_new_tokens": 2, "context": "window",
          "window": 0}, "optim": {"epochs": 1, "minibatches": 1}, "eval": {"every": 1, "episodes": 2},
          "sft": {"steps": 0},
          "algorithm": {"estimator": "sign_grpo", "options": {"margin": 0.1}}}
try:
    config_from_dict({**config, "algorithm": {"estimator": "sign_grpoo"}})
except ConfigError as exc:
    refused = str(exc)
history = Trainer(config_from_dict(config)).fit()
rl = [m["iteration"] for m in history if m["phase"] == "rl"]
print(json.dumps({"calls": calls, "refused": refused, "iterations": rl}))
"""


def test_an_estimator_registered_in_a_script_trains(tmp_path):
    """Any registered estimator can be chosen in a config (not only the built-in ones), and trains."""
    script = tmp_path / "train_custom.py"
    script.write_text(_CUSTOM_ESTIMATOR)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "did you mean 'sign_grpo'?" in result["refused"]
    assert result["iterations"] == [1]
    assert len(result["calls"]) >= 2  # the config check's synthetic batch, then the iteration's batch
