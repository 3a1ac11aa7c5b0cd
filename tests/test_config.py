"""YAML -> TrainConfig: typed, validated, with errors that name the key and suggest the right one."""

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
