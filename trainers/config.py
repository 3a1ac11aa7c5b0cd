"""`TrainConfig`: every option of a training run, typed, in one object.

A run is described by a YAML file whose sections mirror the dataclasses below
(`model`, `env`, `rollout`, `algorithm`, `loss`, `optim`, `turn_reward`,
`sft`, `eval`, `checkpoint`, `log_episodes`, `distributed`, `ray`) plus a few
top-level keys. `load_config(path, overrides)` reads it, applies `key.sub=value`
overrides and validates: an unknown key, a value of the wrong type or a number
outside the `Range` in its field's annotation fails before any work starts,
naming the key, the value and what would be right. Checks that need two fields at once live in
`TrainConfig.validate`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from envgym.branching import BranchOptions
from envgym.evaluation import EvalSettings
from envgym.option_types import Range, check_ranges, coerce, parse_key_value, yaml_problem
from envgym.policies import SamplingParams


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message says what to change."""


@dataclass
class LoraOptions:
    """LoRA through `peft`; `r: 0` means full fine-tuning."""

    r: Annotated[int, Range(ge=0, why="0 = full fine-tuning")] = 0
    alpha: Annotated[int, Range(gt=0)] = 16
    dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelOptions:
    """Which policy to train.

    `name` (and `init_from`): any name `envgym.models.load_model` loads: ``"tiny-maze"``, ``"tiny-guess"`` or
    ``"tiny-questions"`` (embedded 0.5M-parameter Llamas with word-level tokenizers), ``"default"``
    (SmolLM2-135M-Instruct, embedded), a directory saved with `save_pretrained` (a checkpoint of this trainer
    works too), or a Hugging Face hub id such as ``Qwen/Qwen2.5-1.5B-Instruct`` (the local Hugging Face
    cache, else downloaded).
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
    max_turns: Annotated[int | None, Range(ge=1)] = None  # None: the registered TurnLimit
    show_admissible: bool = False  # append "Valid actions: ..." to each observation
    # find the action inside free-form replies: "tag" (<action>...</action>) or "admissible"
    # (the one admissible action the reply names); see envgym.wrappers.ActionExtraction
    extract_action: Literal["none", "tag", "admissible"] = "none"


@dataclass
class RolloutOptions:
    """How episodes are collected each iteration (see `envgym.rollout.collect_groups`).

    `backend: vllm` samples with a vLLM engine (`envgym.policies.vllm`) that is
    sent the trained weights after each update; `vllm` holds its engine settings,
    keywords of `vllm.LLM` (e.g. `max_model_len`, `kv_cache_memory_bytes`,
    `enable_sleep_mode`), on top of the defaults (the model's dtype; on a CPU eager
    mode and a 2 GiB KV cache).

    Envs are stepped through one `envgym.pool.EnvPool` that the run keeps for
    rollouts, the warm start and evaluation alike: `pool` is its backend ("sync":
    in this process; "process" or "ray": one worker per slot, so an env that hangs,
    crashes or runs out of memory fails only its episode; "auto": workers for envs
    whose registration declares slow steps, TextWorld and the sandboxed tool envs,
    in-process for the rest, workers whenever `env_memory_mb` is set). `num_envs`
    slots (0: one per episode of an iteration in-process, 4 per CPU core in
    workers); a step past
    `step_timeout` seconds or an episode past `episode_timeout` (0: no limit) fails its
    episode, which is retried from the start up to `retries` times before its group is
    dropped; `env_memory_mb` caps each worker's address space (0: no cap).

    `agent` ("package.module:function"; empty: the built-in loop) plays every episode with
    that agent program through an OpenAI-compatible gateway in front of the policy
    (`envgym.agents`); `episode_timeout` then bounds each agent's run and `num_envs` caps the
    episodes played at once (0: all of an iteration's), each agent stepping its own env in this process.
    """

    n_groups: Annotated[int, Range(ge=1)] = 16
    group_size: Annotated[int, Range(ge=1)] = 8  # >= 2 for every estimator here, see `validate`
    temperature: Annotated[float, Range(gt=0, why="RL samples its episodes")] = 1.0
    top_p: Annotated[float, Range(gt=0, le=1)] = 1.0
    max_new_tokens: Annotated[int, Range(ge=1)] = 8
    context: Literal["full", "window"] = "full"
    window: Annotated[int, Range(ge=0)] = 1
    backend: Literal["hf", "vllm"] = "hf"
    pool: Literal["auto", "sync", "process", "ray"] = "auto"
    num_envs: Annotated[int, Range(ge=0)] = 0
    step_timeout: Annotated[float, Range(gt=0)] = 60.0
    episode_timeout: Annotated[float, Range(ge=0)] = 0.0
    retries: Annotated[int, Range(ge=0)] = 2
    env_memory_mb: Annotated[int, Range(ge=0)] = 0
    # branch episodes from forked states for vineppo / spo_tree (envgym.branching.BranchOptions; k: 0 is off)
    branch: BranchOptions = field(default_factory=BranchOptions)
    # k >= 1: a second process (a copy of the HF model, or the vLLM engine) generates continuously, up to k
    # iterations ahead, taking new weights between turns, so every turn trained on was sampled by weights at
    # most k updates old (see trainers/rollout_worker.py); 0: generation and update take turns
    max_staleness: Annotated[int, Range(ge=0, why="0: generate, then update; k: at most k updates stale")] = 0
    vllm: dict[str, Any] = field(default_factory=dict)
    agent: str = ""


@dataclass
class AlgorithmOptions:
    """The advantage estimator and its options, passed to `envgym.trainers.advantages.compute_advantages`.

    `options` are the estimator's own keyword options (e.g. gigpo: gamma, omega,
    mode, invalid_penalty), on top of a named `preset` of the estimator (gigpo:
    "verl-agent"); the estimator checks them, and runs once on a tiny batch, when
    the config is validated. See docs/algorithms.md.
    """

    estimator: str = "gigpo"  # any registered estimator (`register_estimator`): grpo, gigpo, igpo, prime, vineppo, ...
    preset: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    # the engine sampled, the trainer learns: "tis" weights each token's loss by min(rho, cap), "mis" drops
    # tokens whose rho = pi_trainer_old / pi_engine leaves [1/cap, cap]; with either, the PPO ratio is taken
    # against the trainer's own logprobs at the start of the update (decoupled PPO). See docs/scaling.md
    correction: Literal["none", "tis", "mis"] = "none"
    correction_cap: Annotated[float, Range(ge=1, why="a cap below 1 would down-weight on-policy tokens")] = 2.0
    correction_level: Literal["token", "turn"] = "token"  # "turn": one rho per turn (its geometric mean)


@dataclass
class LossOptions:
    """The PPO-clip policy loss (`envgym.trainers.losses`)."""

    clip_low: Annotated[float, Range(ge=0, lt=1)] = 0.2
    clip_high: Annotated[float, Range(ge=0)] = 0.2
    ratio: Literal["token", "turn"] = "token"  # "turn": one geometric-mean ratio per turn
    kl_coef: Annotated[float, Range(ge=0)] = 0.0  # > 0 keeps a frozen reference and adds kl_coef * KL to the loss
    kl_estimator: Literal["k1", "k3"] = "k3"
    entropy_coef: Annotated[float, Range(ge=0)] = 0.0


@dataclass
class OptimOptions:
    """AdamW and its learning-rate schedule.

    The rate rises linearly from 0 over `warmup_steps` optimizer steps, then stays
    at `lr` (`schedule: constant`) or follows a cosine down to `min_lr_ratio * lr` at
    the run's last step (`schedule: cosine`). A rate above 1 is always a typo for
    these models; 0 freezes the weights (for debugging).
    """

    lr: Annotated[float, Range(ge=0, le=1)] = 3e-4
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: Annotated[int, Range(ge=0)] = 0
    min_lr_ratio: Annotated[float, Range(ge=0, le=1)] = 0.0
    weight_decay: Annotated[float, Range(ge=0, le=1)] = 0.0
    beta1: Annotated[float, Range(ge=0, lt=1)] = 0.9
    beta2: Annotated[float, Range(ge=0, lt=1)] = 0.999
    grad_clip: Annotated[float, Range(gt=0, why="the gradient norm is clipped to it; <= 0 flips the gradient")] = 1.0
    epochs: Annotated[int, Range(ge=1)] = 2  # passes over each iteration's episodes
    minibatches: Annotated[int, Range(ge=1)] = 1  # optimizer steps per epoch
    micro_batch_tokens: Annotated[int, Range(ge=1)] = 8192  # tokens of one forward/backward (gradient accumulation)
    # true: a minibatch whose sampled tokens all have advantage 0 takes no optimizer step (with loss.kl_coef and
    # loss.entropy_coef 0 its gradient is 0, and AdamW would still move the weights along its momentum). The
    # branching estimators leave most turns at 0; off by default so the outcome estimators' figures stand as measured
    skip_zero_advantage: bool = False


@dataclass
class TurnRewardOptions:
    """A turn-reward model whose per-turn rewards feed the estimator's `intrinsic` field.

    `kind: info_gain` (IGPO) needs envs that put the gold answer in
    `info["answer"]`; `kind: implicit_prm` (PRIME) keeps a trained copy of the policy
    and a frozen reference.
    """

    kind: Literal["none", "info_gain", "implicit_prm"] = "none"
    # prob_diff: an episode's gains sum to p_last - p_first, the outcome's scale; it beat GRPO on twenty questions on
    # every seed. log_prob_diff is the released code's gain, which the release pairs with igpo's
    # `normalize: separate`; z-scored jointly with the outcome it collapsed there (docs/credit_assignment.md)
    info_gain: Literal["prob_diff", "log_prob_diff"] = "prob_diff"
    answer_template: str = "{answer}"  # the gold answer as a reply; text before {answer} is forced, not scored
    prm_beta: Annotated[float, Range(gt=0)] = 0.05
    prm_update: Literal["before", "after"] = "after"
    prm_loss: Literal["ce", "dpo"] = "ce"  # "dpo": trajectory-level DPO (OPRL)
    # 1e-5: what the maze sweep supports (docs/credit_assignment.md, "Credit assignment, measured"); 1e-4 collapses
    # there
    prm_lr: Annotated[float, Range(ge=0, le=1)] = 1e-5


@dataclass
class SFTOptions:
    """Supervised warm start on oracle demonstrations (`envgym sft`, or `steps > 0` before RL)."""

    steps: Annotated[int, Range(ge=0)] = 0
    episodes: Annotated[int, Range(ge=1)] = 512
    lr: Annotated[float, Range(ge=0, le=1)] = 1e-3
    batch_tokens: Annotated[int, Range(ge=1)] = 8192


@dataclass
class EvalOptions:
    """Held-out evaluation every `every` iterations: `episodes` episodes on fixed tasks of `split`, greedy when
    temperature is 0; its other settings come from the env and rollout sections (`TrainConfig.eval_settings`).

    `episodes` and `temperature` differ from `EvalSettings`' defaults (16, sampled) on purpose: a learning curve
    needs many episodes and no sampling noise. A split with fewer tasks than `episodes` has each task played
    several times when sampling. `initial: false` skips the evaluation of the untrained policy (phase "init")
    that a fresh run starts with (a suite of runs on one model evaluates it once).
    """

    every: Annotated[int, Range(ge=1)] = 5
    episodes: Annotated[int, Range(ge=1)] = 200
    split: Literal["train", "test"] = EvalSettings.split
    temperature: Annotated[float, Range(ge=0)] = 0.0
    initial: bool = True


@dataclass
class CheckpointOptions:
    every: Annotated[int, Range(ge=1)] = 10
    keep: Annotated[int, Range(ge=1)] = 2


# -- scale-out (envgym.trainers.distributed) ----------------------------------------------------------------

@dataclass
class DistributedOptions:
    """Data-parallel training under torchrun (`torchrun --nproc_per_node N -m envgym train ...`).

    `strategy`: "fsdp" shards parameters, gradients and optimizer state with FSDP2
    (`torch.distributed.fsdp.fully_shard`), "ddp" replicates them
    (`DistributedDataParallel`); "auto" is FSDP2 where this torch has it, else DDP.
    A rank that waits in a collective longer than `timeout_s` seconds (a peer
    died or hangs) stops with an error, and torchrun stops the others.
    """

    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    timeout_s: Annotated[float, Range(gt=0)] = 1800.0


@dataclass
class RayOptions:
    """The Ray cluster of `rollout.pool: ray`: `address` None starts a local Ray in this process; "auto" joins
    the cluster this machine belongs to (`ray start`), "HOST:PORT" the cluster of that head node."""

    address: str | None = None


@dataclass
class EpisodeLogOptions:
    """A sample of the training episodes kept for `envgym view` (see `envgym.trainers.episode_log`).

    On iteration 1, every `every`-th iteration and the last, the first `groups`
    groups of the rollout are written to `OUT/episodes/iter_NNNNNN.{format}`
    with per-turn advantages, anchor sizes, new logprobs and decoded tokens.
    `every: 0` or `groups: 0` keeps none.
    """

    every: Annotated[int, Range(ge=0, why="0 keeps no episodes")] = 1
    groups: Annotated[int, Range(ge=0, why="0 keeps no episodes")] = 2
    format: Literal["jsonl", "parquet"] = "jsonl"


@dataclass
class TrainConfig:
    """One training run. Build it from YAML with `load_config`, or in Python directly."""

    iterations: Annotated[int, Range(ge=1)] = 20
    seed: Annotated[int, Range(ge=0, lt=2**32)] = 0  # numpy seeds are 32-bit
    out_dir: str = "runs/envgym"
    threads: Annotated[int, Range(ge=0)] = 0  # torch intra-op threads; 0 keeps torch's default
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
    log_episodes: EpisodeLogOptions = field(default_factory=EpisodeLogOptions)
    distributed: DistributedOptions = field(default_factory=DistributedOptions)
    ray: RayOptions = field(default_factory=RayOptions)

    def eval_settings(self) -> EvalSettings:
        """The settings of this run's held-out evaluation: what `Trainer.evaluate` plays and what
        `envgym eval --config` starts from, so a checkpoint is evaluated there as its run evaluated it."""
        return EvalSettings(
            env_kwargs=dict(self.env.kwargs), extract_action=self.env.extract_action,
            show_admissible=self.env.show_admissible, split=self.eval.split, episodes=self.eval.episodes,
            context=self.rollout.context, window=self.rollout.window, max_turns=self.env.max_turns,
            backend=self.rollout.pool, num_envs=self.rollout.num_envs or None, step_timeout=self.rollout.step_timeout,
            retries=self.rollout.retries, agent=self.rollout.agent or None,
            episode_timeout=self.rollout.episode_timeout or None,
            sampling=SamplingParams(temperature=self.eval.temperature, max_new_tokens=self.rollout.max_new_tokens))

    def validate(self) -> TrainConfig:
        """Range and cross-field checks that need no model or env; raises ConfigError saying what to change."""
        try:
            check_ranges(self)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        from envgym.trainers.advantages import ESTIMATORS

        estimator = ESTIMATORS.get(self.algorithm.estimator)
        tree = estimator is not None and estimator.branches and self.rollout.branch.enabled
        if self.rollout.group_size < 2 and not tree:  # a group's episodes baseline each other (a tree's: its branches)
            raise ConfigError(
                f"rollout.group_size is 1, but estimator {self.algorithm.estimator!r} compares episodes within a "
                "group, so every advantage would be 0; set rollout.group_size >= 2 (a branching estimator, "
                "vineppo or spo_tree, may play one episode per task: its branches are the baseline)")
        if self.rollout.n_groups * self.rollout.group_size % self.optim.minibatches:
            raise ConfigError(f"optim.minibatches ({self.optim.minibatches}) must divide the episodes per iteration "
                              f"({self.rollout.n_groups * self.rollout.group_size})")
        if self.rollout.max_staleness and self.rollout.vllm.get("enable_sleep_mode"):
            raise ConfigError("rollout.vllm.enable_sleep_mode frees the engine's memory while the update runs, but "
                              f"with rollout.max_staleness: {self.rollout.max_staleness} the engine generates "
                              "during the update; drop "
                              "enable_sleep_mode (and size the engine with gpu_memory_utilization), or set "
                              "rollout.max_staleness: 0")
        if self.ray.address is not None and self.rollout.pool != "ray":
            raise ConfigError(f"ray.address is {self.ray.address!r}, but rollout.pool is {self.rollout.pool!r}; "
                              "set rollout.pool: ray to step the envs on that Ray cluster")
        if self.rollout.vllm and self.rollout.backend != "vllm":
            raise ConfigError(f"rollout.vllm sets engine settings {sorted(self.rollout.vllm)}, but rollout.backend is "
                              f"{self.rollout.backend!r}; set rollout.backend: vllm, or drop rollout.vllm")
        if self.rollout.agent:
            _check_agent(self.rollout)
        self._validate_estimator_options()
        self._validate_branching()
        if self.model.lora.r > 0 and not self.model.lora.target_modules:
            raise ConfigError("model.lora.target_modules is empty, so LoRA (model.lora.r > 0) would train nothing; "
                              "name modules, e.g. [q_proj, v_proj]")
        if "{answer}" not in self.turn_reward.answer_template:
            raise ConfigError(f"turn_reward.answer_template must contain {{answer}}, got "
                              f"{self.turn_reward.answer_template!r}")
        if not self.out_dir:
            raise ConfigError("out_dir is empty; name the run's directory, e.g. out_dir=runs/maze")
        return self

    def _validate_estimator_options(self) -> None:
        """The estimator is a registered one, checks its own options, runs once on a tiny synthetic batch, and gets
        the turn rewards it needs."""
        from envgym.trainers.advantages import ESTIMATORS, check_estimator

        name = self.algorithm.estimator
        try:
            check_estimator(name, self.algorithm.options, self.algorithm.preset)
        except ValueError as exc:
            raise ConfigError(f"algorithm: {exc}") from None
        needed = ESTIMATORS[name].turn_reward
        if needed is not None and self.turn_reward.kind != needed:
            raise ConfigError(f"estimator {name!r} needs turn_reward.kind: {needed}")


    def _validate_branching(self) -> None:
        try:
            self.rollout.branch.check()
        except ValueError as exc:
            raise ConfigError(f"rollout.branch: {exc}") from None
        from envgym.trainers.advantages import ESTIMATORS

        branching = ESTIMATORS[self.algorithm.estimator].branches
        if branching and not self.rollout.branch.enabled:
            raise ConfigError(f"estimator {self.algorithm.estimator!r} values states by the branch episodes played "
                              "from them, but rollout.branch.k is 0; set rollout.branch.k (e.g. 4)")
        if self.rollout.branch.enabled and not branching:
            raise ConfigError(f"rollout.branch.k is {self.rollout.branch.k}, but estimator "
                              f"{self.algorithm.estimator!r} would count branch episodes as group members; use "
                              f"one of {', '.join(sorted(n for n, e in ESTIMATORS.items() if e.branches))}, or set "
                              "rollout.branch.k: 0")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """`value` checked against the annotation `tp` (see `envgym.option_types.coerce`); nested sections built here."""
    def section(key: str, value: Any, tp: Any) -> Any:
        if dataclasses.is_dataclass(tp):
            return _build(tp, value, key)
        raise TypeError(f"unsupported config annotation {tp!r} for {key}")  # a bug in this module, not in the YAML

    try:
        return coerce(key, value, tp, other=section)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _build(cls: type, data: Any, prefix: str = "") -> Any:
    """An instance of dataclass `cls` from a mapping, rejecting unknown keys with the closest valid one."""
    where = prefix or "the config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)  # Annotated ranges stripped: they are checked in `validate`
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


def config_from_dict(data: Mapping[str, Any] | None, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """A validated `TrainConfig` from a nested mapping plus ``"section.key=value"`` overrides (YAML values)."""
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"a config must be a mapping of sections and keys (model:, env:, optim:, ...), "
                          f"got a {type(data).__name__}: {str(data)[:80]}")
    data = copy.deepcopy(dict(data or {}))  # overrides must not write into the caller's nested dicts
    for item in overrides:
        try:
            key, value = parse_key_value(item, form="section.key=value", example="optim.lr=1e-4")
        except ValueError as exc:
            raise ConfigError(f"override {exc}") from None
        _set_path(data, key, value)
    return _build(TrainConfig, data).validate()


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """Read a YAML recipe, apply overrides, validate. See the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; recipes live in {recipes_dir()}")
    try:
        with path.open(encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML: {yaml_problem(exc)}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    try:
        return config_from_dict(data, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def recipes_dir() -> Path:
    return Path(__file__).parent / "recipes"


def _check_agent(rollout: RolloutOptions) -> None:
    """`rollout.agent` must name an importable callable and run in this process (next to the gateway)."""
    from envgym.agents import load_agent

    try:
        load_agent(rollout.agent)
    except ValueError as exc:
        raise ConfigError(f"rollout.agent: {exc}") from None
    if rollout.max_staleness:
        raise ConfigError(f"rollout.agent plays through a gateway in this process, which rollout.max_staleness: "
                          f"{rollout.max_staleness} would move to a rollout worker; set rollout.max_staleness: 0")
