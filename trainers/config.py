"""`TrainConfig`: every option of a training run, typed, in one object.

A run is described by a YAML file whose sections mirror the dataclasses below
(`model`, `env`, `rollout`, `algorithm`, `loss`, `optim`, `turn_reward`,
`sft`, `eval`, `checkpoint`) plus a few top-level keys. `load_config(path,
overrides)` reads it, applies `key.sub=value` overrides and validates: an
unknown key or a value of the wrong type fails before any work starts, naming
the key and the closest valid key. Checks that need two fields at once (a group
estimator with a group of one) live in `TrainConfig.validate`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message says what to change."""


@dataclass
class LoraOptions:
    """LoRA through `peft`; `r: 0` means full fine-tuning."""

    r: int = 0
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelOptions:
    """Which policy to train.

    `name`: ``"tiny-maze"``, ``"tiny-guess"`` or ``"tiny-questions"`` (embedded 0.5M-parameter Llamas with
    word-level tokenizers, see `envgym.trainers.tiny_model`), ``"default"`` (SmolLM2-135M-Instruct
    from `envgym.models.load_default_model`), or a directory saved with
    `save_pretrained` (a checkpoint of this trainer works too).
    """

    name: str = "tiny-maze"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    lora: LoraOptions = field(default_factory=LoraOptions)
    init_from: str | None = None  # a checkpoint dir whose weights start the run (e.g. an SFT result)


@dataclass
class EnvOptions:
    """The env to train on: a registered id plus constructor kwargs."""

    id: str = "games/Maze-v0"
    kwargs: dict[str, Any] = field(default_factory=dict)
    max_turns: int | None = None  # None: the registered TurnLimit
    show_admissible: bool = False  # append "Valid actions: ..." to each observation
    # find the action inside free-form replies: "tag" (<action>...</action>) or "admissible"
    # (the one admissible action the reply names); see envgym.wrappers.ActionExtraction
    extract_action: Literal["none", "tag", "admissible"] = "none"


@dataclass
class RolloutOptions:
    """How episodes are collected each iteration (see `envgym.rollout.collect_groups`)."""

    n_groups: int = 16
    group_size: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 8
    context: Literal["full", "window"] = "full"
    window: int = 1
    backend: Literal["hf", "vllm"] = "hf"


@dataclass
class AlgorithmOptions:
    """The advantage estimator and its options, passed to `envgym.trainers.advantages.compute_advantages`.

    `options` are the estimator's own keyword options (e.g. gigpo: gamma, omega,
    mode, invalid_penalty); unknown names fail at validation, listing the valid ones.
    """

    estimator: Literal["grpo", "drgrpo", "rloo", "reinforce_pp", "turn_grpo", "gigpo", "igpo", "prime"] = "gigpo"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossOptions:
    """The PPO-clip policy loss (`envgym.trainers.losses`)."""

    clip_low: float = 0.2
    clip_high: float = 0.2
    ratio: Literal["token", "turn"] = "token"  # "turn": one geometric-mean ratio per turn
    kl_coef: float = 0.0  # > 0 keeps a frozen reference and adds kl_coef * KL to the loss
    kl_estimator: Literal["k1", "k3"] = "k3"
    entropy_coef: float = 0.0


@dataclass
class OptimOptions:
    lr: float = 3e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0
    epochs: int = 2  # passes over each iteration's episodes
    minibatches: int = 1  # optimizer steps per epoch
    micro_batch_tokens: int = 8192  # token budget of one forward/backward (gradient accumulation)


@dataclass
class TurnRewardOptions:
    """A turn-reward model whose per-turn rewards feed the estimator's `intrinsic` field.

    `kind: info_gain` (IGPO) needs envs that put the gold answer in
    `info["answer"]`; `kind: implicit_prm` (PRIME) keeps a trained copy of the policy
    and a frozen reference.
    """

    kind: Literal["none", "info_gain", "implicit_prm"] = "none"
    info_gain: Literal["prob_diff", "log_prob_diff"] = "log_prob_diff"
    answer_template: str = "{answer}"  # the gold answer as a reply; text before {answer} is forced, not scored
    prm_beta: float = 0.05
    prm_update: Literal["before", "after"] = "after"
    prm_loss: Literal["ce", "dpo"] = "ce"  # "dpo": trajectory-level DPO (OPRL)
    prm_lr: float = 1e-4


@dataclass
class SFTOptions:
    """Supervised warm start on oracle demonstrations (`envgym sft`, or `steps > 0` before RL)."""

    steps: int = 0
    episodes: int = 512
    lr: float = 1e-3
    batch_tokens: int = 8192


@dataclass
class EvalOptions:
    """Held-out evaluation: `episodes` episodes on fixed tasks of `split`, greedy when temperature is 0.

    A split with fewer tasks than `episodes` has each task played several times when sampling.
    """

    every: int = 5
    episodes: int = 200
    split: Literal["train", "test"] = "test"
    temperature: float = 0.0


@dataclass
class CheckpointOptions:
    every: int = 10
    keep: int = 2


@dataclass
class TrainConfig:
    """One training run. Build it from YAML with `load_config`, or in Python directly."""

    iterations: int = 20
    seed: int = 0
    out_dir: str = "runs/envgym"
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    model: ModelOptions = field(default_factory=ModelOptions)
    env: EnvOptions = field(default_factory=EnvOptions)
    rollout: RolloutOptions = field(default_factory=RolloutOptions)
    algorithm: AlgorithmOptions = field(default_factory=AlgorithmOptions)
    loss: LossOptions = field(default_factory=LossOptions)
    optim: OptimOptions = field(default_factory=OptimOptions)
    turn_reward: TurnRewardOptions = field(default_factory=TurnRewardOptions)
    sft: SFTOptions = field(default_factory=SFTOptions)
    eval: EvalOptions = field(default_factory=EvalOptions)
    checkpoint: CheckpointOptions = field(default_factory=CheckpointOptions)

    def validate(self) -> TrainConfig:
        """Cross-field checks that need no model or env; raises ConfigError saying what to change."""
        positive = {"iterations": self.iterations, "rollout.n_groups": self.rollout.n_groups,
                    "rollout.group_size": self.rollout.group_size,
                    "rollout.max_new_tokens": self.rollout.max_new_tokens, "optim.epochs": self.optim.epochs,
                    "optim.minibatches": self.optim.minibatches,
                    "optim.micro_batch_tokens": self.optim.micro_batch_tokens, "eval.every": self.eval.every,
                    "checkpoint.every": self.checkpoint.every, "checkpoint.keep": self.checkpoint.keep}
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key} must be >= 1, got {value}")
        if self.rollout.group_size < 2:  # every estimator here baselines an episode against its group
            raise ConfigError(
                f"rollout.group_size is 1, but estimator {self.algorithm.estimator!r} compares episodes within a "
                "group, so every advantage would be 0; set rollout.group_size >= 2")
        if self.rollout.n_groups * self.rollout.group_size % self.optim.minibatches:
            raise ConfigError(f"optim.minibatches ({self.optim.minibatches}) must divide the episodes per iteration "
                              f"({self.rollout.n_groups * self.rollout.group_size})")
        if not 0 <= self.loss.clip_low < 1 or self.loss.clip_high < 0:
            raise ConfigError(f"loss.clip_low must be in [0, 1) and loss.clip_high >= 0, got "
                              f"{self.loss.clip_low}, {self.loss.clip_high}")
        if self.rollout.temperature <= 0:
            raise ConfigError(f"rollout.temperature must be > 0 (RL samples), got {self.rollout.temperature}")
        if self.algorithm.estimator == "igpo" and self.turn_reward.kind != "info_gain":
            raise ConfigError("estimator 'igpo' needs turn_reward.kind: info_gain")
        if self.algorithm.estimator == "prime" and self.turn_reward.kind != "implicit_prm":
            raise ConfigError("estimator 'prime' needs turn_reward.kind: implicit_prm")
        self._validate_estimator_options()
        if self.model.lora.r < 0:
            raise ConfigError(f"model.lora.r must be >= 0 (0 = full fine-tuning), got {self.model.lora.r}")
        return self

    def _validate_estimator_options(self) -> None:
        from envgym.trainers.advantages import ESTIMATORS

        spec = ESTIMATORS[self.algorithm.estimator]
        for key, value in self.algorithm.options.items():
            if key not in spec.defaults:
                close = difflib.get_close_matches(key, spec.defaults, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ConfigError(f"unknown option algorithm.options.{key} for estimator {spec.name!r}; {hint}"
                                  f"valid options: {', '.join(sorted(spec.defaults))}")
            if key in spec.choices and value not in spec.choices[key]:
                raise ConfigError(f"algorithm.options.{key} must be one of {list(spec.choices[key])}, got {value!r}")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """`value` checked against the annotation `tp` (numbers written as strings such as '3e-4' are read)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{key} must be one of {', '.join(repr(a) for a in args)}, got {value!r}{hint}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")  # a bug in this module, not in the YAML


def _build(cls: type, data: Any, prefix: str = "") -> Any:
    """An instance of dataclass `cls` from a mapping, rejecting unknown keys with the closest valid one."""
    where = prefix or "the config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean {(prefix + '.' if prefix else '') + close[0]!r}?" if close else \
                f"; valid keys here: {', '.join(names)}"
            raise ConfigError(f"unknown config key {full!r}{hint}")
        kwargs[key] = _coerce(full, value, hints[key])
    return cls(**kwargs)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def config_from_dict(data: dict[str, Any], overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """A validated `TrainConfig` from a nested mapping plus ``"section.key=value"`` overrides (YAML values)."""
    data = copy.deepcopy(dict(data or {}))  # overrides must not write into the caller's nested dicts
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. optim.lr=1e-4")
        _set_path(data, key.strip(), yaml.safe_load(raw))
    return _build(TrainConfig, data).validate()


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """Read a YAML recipe, apply overrides, validate. See the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; recipes live in {recipes_dir()}")
    with path.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    try:
        return config_from_dict(data or {}, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def recipes_dir() -> Path:
    return Path(__file__).parent / "recipes"
