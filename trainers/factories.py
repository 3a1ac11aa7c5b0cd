"""What a run builds from its `TrainConfig`: the policy model and tokenizer, the env pool, the vLLM engine, the
sampling seeds. The trainer and the rollout worker both build from here, so the worker's policy is the
trainer's (and neither imports the other for it).

Models load through `envgym.models.load_model`; here its one-line `ModelLoadError` becomes a `ConfigError`
that names the config key (`model.name`, or `model.init_from`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from envgym.core import stable_hash
from envgym.models import ModelLoadError, load_model, load_tokenizer, model_directory, model_kind
from envgym.pool import EnvPool, default_num_envs
from envgym.trainers.config import ConfigError, LoraOptions, ModelOptions, RolloutOptions, TrainConfig
from envgym.wrappers import EnvMaker


def compute_device() -> str:
    """Where the run's model lives: "cuda" when a GPU is visible (a torchrun rank's own), else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def model_source(options: ModelOptions) -> tuple[str, str]:
    """The config key naming the weights a run starts from (`model.init_from`, else `model.name`) and its value."""
    return ("model.init_from", options.init_from) if options.init_from else ("model.name", options.name)


@contextlib.contextmanager
def _naming_the_key(key: str) -> Iterator[None]:
    """Turn a ModelLoadError into a ConfigError that starts with the config key: "model.name is 'X': ..."."""
    try:
        yield
    except ModelLoadError as exc:
        raise ConfigError(f"{key} is {exc.name!r}{exc.detail}") from None


def policy_tokenizer(options: ModelOptions) -> Any:
    """The policy's tokenizer, as `options` say (ConfigError naming the key when it cannot be loaded)."""
    key, source = model_source(options)
    with _naming_the_key(key):
        return load_tokenizer(source)


def policy_model(options: ModelOptions, seed: int, tokenizer: Any = None) -> tuple[Any, Any]:
    """The policy model on `compute_device()` in `model.dtype` (LoRA-wrapped when `lora.r > 0`; a tiny model
    random-init from `seed`) and its tokenizer (`policy_tokenizer`'s unless given); ConfigError naming the key
    when either cannot be loaded."""
    key, source = model_source(options)
    with _naming_the_key(key):
        return load_model(source, dtype=options.dtype, device=compute_device(), seed=seed, tokenizer=tokenizer,
                          lora=lora_config(options.lora) if options.lora.r > 0 else None)


def lora_config(options: LoraOptions) -> Any:
    """The peft `LoraConfig` of `model.lora`."""
    from peft import LoraConfig

    return LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout,
                      target_modules=list(options.target_modules), task_type="CAUSAL_LM")


def make_pool(options: RolloutOptions, maker: EnvMaker, episodes: int, ray_address: str | None = None) -> EnvPool:
    """The run's EnvPool for up to `episodes` concurrent episodes (`options.num_envs` slots if set).

    Raises ConfigError when `ray_address` names a Ray cluster that does not answer.
    """
    try:
        return EnvPool(maker, options.num_envs or default_num_envs(options.pool, episodes, maker),
                       backend=options.pool, step_timeout=options.step_timeout,
                       episode_timeout=options.episode_timeout or None, memory_limit_mb=options.env_memory_mb or None,
                       ray_address=ray_address)
    except ConnectionError as exc:
        raise ConfigError(f"ray.address: {exc}") from None


def seed_sampling(seed: int, iteration: int, rank: int) -> None:
    """Seed the torch generator an HF policy samples iteration `iteration`'s episodes of `rank` with: the same
    draws whether the trainer samples them or a rollout worker does (see `RolloutWorker`)."""
    torch.manual_seed(stable_hash(f"sampling|{seed}|{iteration}|{rank}") & 0x7FFF_FFFF)


# ---------------------------------------------------------------------------------------------- vLLM

def check_vllm_source(options: ModelOptions) -> str:
    """The directory a vLLM engine starts from (a hub id's snapshot in the Hugging Face cache); ConfigError for a
    model that has none (a tiny model) or cannot be found."""
    key, source = model_source(options)
    if model_kind(source) == "tiny":
        raise ConfigError(f"rollout.backend: vllm starts its engine from a checkpoint directory, and the model "
                          f"{source!r} has none; set {key} to 'default', a save_pretrained directory or a "
                          "Hugging Face hub id")
    with _naming_the_key(key):
        return str(model_directory(source))


#: The LoRA ranks a vLLM engine can be sized for (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def engine_serves_adapter(config: TrainConfig) -> bool:
    """Whether the run's vLLM engine is handed the LoRA adapter alone (`VLLMPolicy.load_adapter`) rather than the
    merged weights: with LoRA, unless sleep mode drops the engine's base weights during each update or
    `rollout.vllm.enable_lora: false` asks for merged weights (on a CPU the engine samples a few times slower
    with an adapter: see docs/scaling.md)."""
    return (config.model.lora.r > 0 and not config.rollout.vllm.get("enable_sleep_mode")
            and config.rollout.vllm.get("enable_lora", True))


def start_vllm_engine(config: TrainConfig, dtype: torch.dtype, seed: int) -> Any:
    """The run's vLLM engine: on the model's checkpoint directory, in the trained model's `dtype`, sized for the
    LoRA adapter where it is handed one (`engine_serves_adapter`), with `rollout.vllm` on top (EngineStartError if
    it cannot start)."""
    source = check_vllm_source(config.model)
    from envgym.policies.vllm import VLLMPolicy

    lora = ({"enable_lora": True, "max_loras": 1,
             "max_lora_rank": next(rank for rank in VLLM_LORA_RANKS if rank >= config.model.lora.r)}
            if engine_serves_adapter(config) else {})
    engine_args = {"dtype": str(dtype).removeprefix("torch."), "seed": seed, **lora, **config.rollout.vllm}
    return VLLMPolicy.from_pretrained(source, **engine_args)
