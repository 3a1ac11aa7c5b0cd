"""envgym.trainers: turn-level RL (GRPO, GiGPO, IGPO, PRIME) and supervised warm starts for envgym envs.

    from envgym.trainers import Trainer, load_config
    Trainer(load_config("trainers/recipes/quickstart.yaml")).fit()
"""

from envgym.trainers.config import ConfigError, TrainConfig, config_from_dict, load_config

__all__ = ["ConfigError", "Trainer", "TrainConfig", "config_from_dict", "load_config"]


def __getattr__(name: str):
    if name == "Trainer":  # torch and transformers load only when training is asked for
        from envgym.trainers.trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'envgym.trainers' has no attribute {name!r}")
