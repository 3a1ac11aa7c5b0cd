"""`Trainer(config).fit()`: turn-level RL on any registered env, top to bottom in one place.

One iteration:

1. collect `n_groups` groups of `group_size` episodes with the current policy
   (`envgym.rollout.collect_groups`, through the run's `EnvPool`);
2. pack them into one `RolloutBatch` (tokens, masks, behaviour logprobs and the
   turn table, aligned by construction) and, if configured, add per-turn rewards
   of a turn-reward model (information gain, implicit PRM);
3. compute one advantage per turn (`compute_advantages`: GRPO, GiGPO, ...);
4. update the policy with PPO-clip on the sampled tokens, `epochs` passes of
   `minibatches` optimizer steps, each accumulated over micro-batches that fit
   `micro_batch_tokens`; optional KL to a frozen reference;
5. log, keep a sample of the episodes (`log_episodes`, for `envgym view`),
   evaluate on held-out tasks every `eval.every` iterations
   (`envgym.evaluation.evaluate_policy`, the path `envgym eval` takes too),
   checkpoint every `checkpoint.every`.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import envgym
from envgym.agents import collect_agent_groups
from envgym.core import RunFailed
from envgym.evaluation import evaluate_policy, plan_split
from envgym.policies import HFPolicy, SamplingParams
from envgym.pool import EnvPool
from envgym.rollout import RolloutResult, collect_groups
from envgym.trainers import checkpoint as ckpt
from envgym.trainers.advantages import compute_advantages
from envgym.trainers.batch import RolloutBatch, TokenBatch
from envgym.trainers.config import ConfigError, EnvOptions, TrainConfig
from envgym.trainers.distributed import DataParallel, NoRunDirectory, NoRunLog
from envgym.trainers.episode_log import log_episode_sample
from envgym.trainers.factories import (check_vllm_source, compute_device, engine_serves_adapter, make_pool,
                                       model_source, policy_model, policy_tokenizer, seed_sampling,
                                       start_vllm_engine)
from envgym.trainers.losses import (CorrectionStats, kl_penalty, off_policy_weights, ppo_clip_loss,
                                    sampled_logprobs)
from envgym.trainers.run_dir import RunDirectory
from envgym.trainers.run_log import Heartbeat, RunLog
from envgym.trainers.weights import lora_adapter, merged_named_weights
from envgym.wrappers import EnvMaker

log = logging.getLogger(__name__)


class RolloutFailed(RunFailed):
    """Every group of an iteration failed: there is nothing to train on. The message lists the causes."""


# ---------------------------------------------------------------------------------------------- building blocks

def env_maker(options: EnvOptions) -> EnvMaker:
    """The picklable factory of the training env of `options` (wrappers included)."""
    return EnvMaker(options.id, dict(options.kwargs), options.extract_action, options.show_admissible)


def check_env_options(options: EnvOptions) -> None:
    """Fail with ConfigError if the env id is unknown or its kwargs are not accepted."""
    try:
        envgym.spec(options.id)
    except KeyError as exc:
        raise ConfigError(f"env.id: {exc.args[0]}") from None
    try:
        env_maker(options)().close()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"env.kwargs {options.kwargs} are not accepted by {options.id!r}: {exc}") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def episode_metrics(rollout: RolloutResult, prefix: str) -> dict[str, float]:
    """Episodes played and dropped, and success, return, turns and invalid-action rate over the played ones."""
    episodes = [e for g in rollout.groups for e in g.episodes if e.parent is None]  # branches have their own start
    turns = [t for e in episodes for t in e.turns]
    if not episodes:
        return {}
    return {f"{prefix}/episodes": float(len(episodes)),
            f"{prefix}/success": float(np.mean([e.won for e in episodes])),
            f"{prefix}/return": float(np.mean([e.total_return for e in episodes])),
            f"{prefix}/turns": float(np.mean([len(e.turns) for e in episodes])),
            f"{prefix}/invalid_rate": float(np.mean([t.invalid_action for t in turns]))}


def staleness_metrics(rollout: RolloutResult, iteration: int, max_staleness: int) -> dict[str, float]:
    """How many updates behind the trainer at `iteration` the weights that sampled each turn were: the mean, the
    most, and the fraction of turns at each staleness 0..`max_staleness` (`rollout/staleness_<s>`)."""
    staleness = np.array([iteration - t.policy_version for g in rollout.groups for e in g.episodes for t in e.turns])
    if not len(staleness):
        return {}
    return {"rollout/staleness": float(staleness.mean()), "rollout/staleness_max": float(staleness.max()),
            **{f"rollout/staleness_{s}": float(np.mean(staleness == s)) for s in range(max_staleness + 1)}}


def peak_memory_metrics() -> dict[str, float]:
    """This process's peak resident memory so far (GiB), and the GPU's peak allocation where one is used."""
    import resource

    metrics = {"perf/peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # KiB on Linux
    if torch.cuda.is_available():
        metrics["perf/peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return metrics


def lr_factor(step: int, total: int, options: Any) -> float:
    """The learning-rate multiplier at optimizer step `step` of `total` (see `OptimOptions`)."""
    if step < options.warmup_steps:
        return (step + 1) / options.warmup_steps
    if options.schedule == "constant":
        return 1.0
    progress = (step - options.warmup_steps) / max(1, total - options.warmup_steps)
    return options.min_lr_ratio + (1.0 - options.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


# ---------------------------------------------------------------------------------------------- the trainer

class Trainer:
    """Trains `config.model` on `config.env` with the configured estimator; see the module docstring.

    Everything that can be checked without training is checked in the
    constructor (env id, kwargs, the model's files, that its chat template
    shows a tool env's tools, token budget, checkpoint compatibility), so a bad
    config fails in seconds with a message saying what to change.

    The trainer owns `out_dir` from construction until `fit` ends (or `close`):
    see `RunDirectory`. A directory holding another run is refused unless
    `resume` (continue it from its newest intact checkpoint) or `overwrite`
    (delete it, once this run's set-up has succeeded).
    """

    def __init__(self, config: TrainConfig, *, resume: bool = False, overwrite: bool = False):
        self.config = config.validate()
        self.out_dir = Path(config.out_dir)
        self.dp = DataParallel.from_environment(config)  # torchrun's ranks; a world of one without torchrun
        # claimed first (by rank 0, for all ranks): a second run into out_dir is refused before any model loads
        self.run_dir = (RunDirectory.claim(self.out_dir, resume=resume, overwrite=overwrite) if self.dp.is_main
                        else NoRunDirectory())
        self.pool: EnvPool | None = None
        self.rollout_worker = None  # rollout.max_staleness 1: the process generating the next batch
        self.heartbeat = Heartbeat(config.iterations)  # what `fit` is doing; rank 0 prints it (see `RunLog`)
        try:
            self._set_up(resume=resume, overwrite=overwrite)
        except BaseException:
            self.close()
            raise

    def _set_up(self, *, resume: bool, overwrite: bool) -> None:
        config = self.config
        if config.threads:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        check_env_options(config.env)
        self.env_factory = env_maker(config.env)
        tokenizer = policy_tokenizer(config.model)
        self._check_first_prompt(tokenizer)  # before the model loads: that may take minutes
        self.model, self.tokenizer = policy_model(config.model, config.seed, tokenizer)
        self.train_module = self.dp.wrap(self.model)  # what the update trains (DDP / FSDP2 under torchrun)
        self.dp.seed_rank(config.seed)
        self.policy = self._rollout_policy()
        self.optimizer = torch.optim.AdamW([p for p in self.train_module.parameters() if p.requires_grad],
                                           lr=config.optim.lr, weight_decay=config.optim.weight_decay,
                                           betas=(config.optim.beta1, config.optim.beta2))
        total_steps = config.iterations * config.optim.epochs * config.optim.minibatches
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, total_steps, config.optim))
        self.reference = self._frozen_reference() if config.loss.kl_coef > 0 else None
        self.turn_reward = self._turn_reward_model()
        self.iteration = 0
        self.run_id = ckpt.new_run_id()
        self.history: list[dict[str, Any]] = []
        episodes_per_rank = config.rollout.n_groups * config.rollout.group_size // self.dp.world_size
        self.pool = make_pool(config.rollout, self.env_factory, max(episodes_per_rank, self._eval_episodes()),
                              ray_address=config.ray.address)
        if config.rollout.max_staleness:
            from envgym.trainers.rollout_worker import RolloutWorker

            # waits for the worker's policy (a vLLM engine: EngineStartError here, before any training) and pool
            self.rollout_worker = RolloutWorker(
                config, self.env_factory, dtype=next(self.model.parameters()).dtype,
                episodes=episodes_per_rank, rank=self.dp.rank, local_rank=self.dp.local_rank)
        if resume:
            self._resume()
        elif overwrite:
            self.run_dir.clear_run()

    def close(self) -> None:
        """Stop the env workers and any rollout worker, give up `out_dir` and leave the process group of a
        torchrun run (idempotent). `fit` leaves the workers running, so `evaluate` still works after it, and gives
        up `out_dir` when it ends."""
        if self.rollout_worker is not None:
            self.rollout_worker.close()
        if self.pool is not None:
            self.pool.close()
        self.run_dir.release()
        self.dp.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- setup ----------------------------------------------------------------------------------------

    def _eval_episodes(self) -> int:
        """Episodes of one held-out evaluation (the split may be played several times; see `plan_split`)."""
        settings = self.config.eval_settings()
        with self.env_factory() as env:
            split_tasks = env.unwrapped.num_tasks[settings.split]
        tasks, samples = plan_split(split_tasks, settings.episodes, settings.samples,
                                    greedy=settings.sampling.temperature == 0)
        return tasks * samples

    def _check_first_prompt(self, tokenizer: Any) -> None:
        """ConfigError unless the chat template shows a tool env's tools (`check_tools_rendered`) and the first
        prompt plus one action fits a micro-batch (or no row could ever be trained)."""
        from envgym.chat import EpisodeChat, check_tools_rendered

        cfg = self.config
        with self.env_factory() as env:
            obs, info = env.reset(seed=0)
            instructions = env.unwrapped.instructions
        tools = info.get("tools")
        if tools:
            key, source = model_source(cfg.model)
            try:
                check_tools_rendered(tokenizer, instructions, obs, tools, model=source, env_id=cfg.env.id)
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc}") from None
        prompt, _ = EpisodeChat(tokenizer, instructions, context=cfg.rollout.context, window=cfg.rollout.window,
                                tools=tools).start(obs)
        need = len(prompt) + cfg.rollout.max_new_tokens
        if need > cfg.optim.micro_batch_tokens:
            raise ConfigError(f"optim.micro_batch_tokens is {cfg.optim.micro_batch_tokens}, but the first prompt of "
                              f"{cfg.env.id} is {len(prompt)} tokens plus up to {cfg.rollout.max_new_tokens} sampled; "
                              f"set optim.micro_batch_tokens >= {need} (rows of later turns are longer with "
                              "rollout.context: full)")

    @property
    def engine_in_process(self) -> bool:
        """Whether this process runs the vLLM engine (`rollout.backend: vllm` without a rollout worker)."""
        return self.config.rollout.backend == "vllm" and not self.config.rollout.max_staleness

    def _rollout_policy(self) -> Any:
        """HFPolicy over the live model, or a vLLM engine that is sent the new weights after each update.

        The engine starts before any training (EngineStartError if it cannot; see
        `start_vllm_engine`). With `rollout.max_staleness: 1` the engine is the
        rollout worker's, and this process's policy, for the held-out evaluation
        and information-gain scoring, is an HFPolicy over the live model.
        """
        cfg = self.config
        if self.engine_in_process:
            return start_vllm_engine(cfg, next(self.model.parameters()).dtype, cfg.seed)
        if cfg.rollout.backend == "vllm":
            check_vllm_source(cfg.model)  # before a rollout worker is started on it
        return HFPolicy(self.model, self.tokenizer)

    def _sync_rollout_weights(self) -> None:
        """Tell the rollout policy the weights changed: the vLLM engine is sent them (the adapter alone, or LoRA
        merged in: see `engine_serves_adapter`); an
        HFPolicy samples from the model itself and only drops its episode KV caches, computed with the old ones.
        (A rollout worker is published them apart: see `collect` and `train_iteration`.)"""
        if self.engine_in_process and engine_serves_adapter(self.config):
            self.policy.load_adapter(*lora_adapter(self.model))
        elif self.engine_in_process:
            self.policy.load_weights(merged_named_weights(self.model))
        else:
            self.policy.weights_changed()

    def _frozen_reference(self) -> Any:
        """The KL reference: the LoRA base (adapters switched off at use) or a frozen copy of the initial model."""
        if self.config.model.lora.r > 0:
            return None
        reference = copy.deepcopy(self.model).eval()
        reference.requires_grad_(False)
        return reference

    def _turn_reward_model(self) -> Any:
        kind = self.config.turn_reward.kind
        if kind == "info_gain":
            from envgym.trainers.rewards import InfoGainReward

            return InfoGainReward(self.policy, self.config.turn_reward)
        if kind == "implicit_prm":
            from envgym.trainers.rewards import ImplicitPRM

            return ImplicitPRM(self.model, self.config.turn_reward, data_parallel=self.dp)
        return None

    def _resume(self) -> None:
        latest = ckpt.checkpoint_to_resume(self.out_dir)
        if latest is None:
            log.warning("--resume: no checkpoint in %s; starting from iteration 0", self.out_dir)
            return
        ckpt.check_config_matches(latest, ckpt.config_dict(self.config), defaults=ckpt.config_dict(TrainConfig()))
        self.run_id = ckpt.run_id_of(latest)
        state = ckpt.load_state(latest)
        self._load_weights(latest)
        self.dp.load_replica()
        self.dp.load_optimizer_state(self.optimizer, state)
        self._sync_rollout_weights()  # the engine started on the initial weights
        self.scheduler.load_state_dict(state["scheduler"])
        if self.turn_reward is not None and "turn_reward" in state:
            self.turn_reward.load_state_dict(state["turn_reward"])
        start = ckpt.checkpoints_dir(self.out_dir) / ckpt.RL_START
        if self.reference is not None and start.exists():  # the policy RL started from (after any warm start)
            self._load_weights(ckpt.verified(start), into=self.reference)
        self.iteration = state["iteration"]
        self.history = state["history"]
        ckpt.restore_rng_states(self.dp.rank_rng_state(state))
        log.info("resumed from %s at iteration %d", latest, self.iteration)

    def _load_weights(self, directory: Path, into: Any = None) -> None:
        """Load the weights (or LoRA adapter) saved in checkpoint `directory` into `into` (default: the policy)."""
        from safetensors.torch import load_file

        model = self.model if into is None else into
        if self.config.model.lora.r > 0:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, load_file(directory / "adapter_model.safetensors"))
        else:
            saved = load_file(directory / "model.safetensors")
            missing, unexpected = model.load_state_dict(saved, strict=False)
            tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
            if set(missing) - tied or unexpected:
                raise ckpt.CheckpointMismatch(f"{directory} does not hold this model's weights "
                                              f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")

    # -- the loop -------------------------------------------------------------------------------------

    def fit(self) -> list[dict[str, Any]]:
        """Train until `config.iterations`; returns one metrics dict per logged step.

        A fresh run first evaluates the initial policy (phase "init"; not with `eval.initial: false`) and, with
        `sft.steps > 0`, warm-starts it on oracle demonstrations and evaluates
        again (phase "sft"); every RL iteration is phase "rl". The heartbeat
        names finer phases: "rollout", "update", "eval", "checkpoint", ...
        """
        cfg = self.config
        logger = RunLog if self.dp.is_main else NoRunLog  # rank 0 logs for all ranks
        beat = self.heartbeat
        with self.run_dir, logger(self.out_dir, start=self.iteration, total=cfg.iterations, history=self.history,
                                  heartbeat=beat) as run_log:
            if not self.history:
                if cfg.eval.initial:
                    beat.phase("init", 0)
                    self.history.append({"iteration": 0, "phase": "init", **self.evaluate()})
                    run_log.log(self.history[-1], step=0, advance=False)
                if cfg.sft.steps > 0:
                    beat.phase("sft", 0, unit="steps")
                    stats = self.warm_start()
                    beat.phase("eval", 0)
                    self.history.append({"iteration": 0, "phase": "sft", **stats, **self.evaluate()})
                    # RL starts from the warm-started policy: the KL reference and the PRM copy it
                    self.reference = self._frozen_reference() if cfg.loss.kl_coef > 0 else None
                    self.turn_reward = self._turn_reward_model()
                    beat.phase("checkpoint", 0)
                    self.save_checkpoint()
                    run_log.log(self.history[-1], step=0, advance=False)
            while self.iteration < cfg.iterations:
                metrics = self.train_iteration()
                self.iteration += 1
                if self.iteration % cfg.eval.every == 0 or self.iteration == cfg.iterations:
                    beat.phase("eval", self.iteration)
                    metrics |= self.evaluate()
                self.history.append({"iteration": self.iteration, "phase": "rl", **metrics})
                if self.iteration % cfg.checkpoint.every == 0 or self.iteration == cfg.iterations:
                    beat.phase("checkpoint", self.iteration)
                    self.save_checkpoint()  # before logging: a logged iteration is never lost to a kill
                run_log.log(self.history[-1], step=self.iteration)
            run_log.plot_curve()
        return self.history

    def warm_start(self) -> dict[str, float]:
        """`sft.steps` supervised steps on oracle demonstrations (see `envgym.trainers.sft`)."""
        from envgym.trainers.sft import demonstration_batch, supervised_steps

        cfg = self.config
        batch = demonstration_batch(cfg, self.env_factory, self.tokenizer, pool=self.pool)
        stats = supervised_steps(self.model, batch, steps=cfg.sft.steps, lr=cfg.sft.lr,
                                 batch_tokens=cfg.sft.batch_tokens, seed=cfg.seed,
                                 on_step=lambda step, loss: self.heartbeat.progress(step + 1, cfg.sft.steps))
        self.dp.load_replica()  # every rank ran the same warm start; all train on from rank 0's result
        self._sync_rollout_weights()
        return stats

    def collect_options(self, iteration: int) -> dict[str, Any]:
        """`collect_groups`' keyword arguments (but env, policy, pool) for iteration `iteration`: this rank's share
        of the groups, with the seeds one process collecting all of them would use."""
        cfg = self.config
        mine = self.dp.shard(cfg.rollout.n_groups)
        return dict(n_groups=len(mine), first_group=mine.start, group_size=cfg.rollout.group_size, split="train",
                    seed=cfg.seed * 1_000_003 + iteration,
                    sampling=SamplingParams(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                            max_new_tokens=cfg.rollout.max_new_tokens),
                    context=cfg.rollout.context, window=cfg.rollout.window, max_turns=cfg.env.max_turns,
                    retries=cfg.rollout.retries, branch=cfg.rollout.branch)

    def collect(self) -> RolloutResult:
        """This iteration's groups (this rank's share) from the current policy, or with `rollout.max_staleness: k`
        from the rollout worker, generated with weights at most k updates behind (each turn's `policy_version`
        says which). Raises RolloutFailed when every group of every rank failed."""
        cfg = self.config
        if self.rollout_worker is not None:
            if self.rollout_worker.version != self.iteration:  # the first batch, after a warm start or a resume
                self.rollout_worker.publish(self.model, self.iteration)
            rollout = self.rollout_worker.next(self.iteration, self.collect_options, last_iteration=cfg.iterations - 1)
        else:
            seed_sampling(cfg.seed, self.iteration, self.dp.rank)
            if cfg.rollout.agent:
                rollout = collect_agent_groups(self.env_factory, self.policy, cfg.rollout.agent,
                                               episode_timeout=cfg.rollout.episode_timeout,
                                               concurrency=cfg.rollout.num_envs or None,
                                               policy_version=lambda: self.iteration,
                                               on_episode=self.heartbeat.progress,
                                               **self.collect_options(self.iteration))
            else:
                rollout = collect_groups(self.env_factory, self.policy, pool=self.pool,
                                         policy_version=lambda: self.iteration, on_episode=self.heartbeat.progress,
                                         **self.collect_options(self.iteration))
        if not self.dp.sum([len(rollout.groups)])[0]:
            causes = sorted({f.cause for f in rollout.failures})
            raise RolloutFailed(f"iteration {self.iteration}: every group of {cfg.env.id} failed past its "
                                f"{cfg.rollout.retries} retries, so there is nothing to train on; causes: "
                                + "; ".join(causes[:3]) + (f" (and {len(causes) - 3} more)" if len(causes) > 3 else ""))
        return rollout

    def train_iteration(self) -> dict[str, float]:
        """Collect, score, estimate advantages and update once; returns this iteration's metrics."""
        cfg = self.config
        started = time.perf_counter()
        self.model.eval()
        self.heartbeat.phase("rollout", self.iteration + 1)
        rollout = self.collect()
        rollout_time = time.perf_counter() - started

        batch = RolloutBatch.from_groups(rollout.groups, pad_token_id=self.policy.pad_token_id)
        reward_metrics = {}
        if self.turn_reward is not None:
            self.heartbeat.phase("turn rewards", self.iteration + 1)
            intrinsic, reward_metrics = self.turn_reward.turn_rewards(batch)
            batch = batch.with_intrinsic(intrinsic)
        union, mine = self.dp.union_turns(batch.turns)  # batch statistics of an estimator cover every rank's turns
        union_advantages = compute_advantages(union, cfg.algorithm.estimator, preset=cfg.algorithm.preset,
                                              **cfg.algorithm.options)
        advantages = union_advantages[mine]

        update_started = time.perf_counter()
        self.heartbeat.phase("update", self.iteration + 1, unit="rows")
        if self.engine_in_process:
            self.policy.sleep()  # frees the GPU for the update with rollout.vllm.enable_sleep_mode; else a no-op
        update_metrics = self.update(batch, advantages, self._trained_rows(batch))
        sync_started = time.perf_counter()
        self._sync_rollout_weights()
        sync_time = time.perf_counter() - sync_started
        async_metrics = {}
        if self.rollout_worker is not None:  # the worker loads the new weights before its next turn
            async_metrics = {"time/weight_publish_wait": self.rollout_worker.publish(self.model, self.iteration + 1),
                             "time/trainer_wait": rollout.metrics["trainer_wait_s"],
                             "time/engine_wait": rollout.metrics["engine_wait_s"]}
        update_time = time.perf_counter() - update_started - sync_time  # the weight sync is logged apart
        rollout = self.dp.union_rollout(rollout)  # metrics over every rank's episodes
        num_tokens = self.dp.sum([batch.num_tokens])[0]
        if self.dp.is_main:  # the episodes kept for `envgym view`: rank 0's groups lead the union
            log_episode_sample(self.out_dir, cfg, self.iteration + 1, batch, advantages, rollout.failures, self.model,
                               self.tokenizer, groups_collected=len(rollout.groups))
        return {**episode_metrics(rollout, "train"), **reward_metrics, **update_metrics,
                "adv/mean": float(union_advantages.mean()), "adv/abs_max": float(union_advantages.abs().max()),
                "adv/std": float(union_advantages.std()) if len(union_advantages) > 1 else 0.0,
                "time/env": rollout.metrics["env_time"], "time/model": rollout.metrics["model_time"],
                "time/rollout": rollout_time, "time/update": update_time, "time/weight_sync": sync_time,
                "time/iteration": time.perf_counter() - started, **peak_memory_metrics(),
                "perf/generated_tokens_per_s": rollout.metrics["generated_tokens"] / max(rollout_time, 1e-9),
                "perf/update_tokens_per_s": num_tokens * cfg.optim.epochs / max(update_time, 1e-9),
                "rollout/dropped_groups": rollout.metrics["dropped_groups"],
                "rollout/generated_tokens": rollout.metrics["generated_tokens"],
                "rollout/branches": rollout.metrics.get("branches", 0.0),
                "rollout/failed_attempts": rollout.metrics["failed_attempts"],
                "rollout/repeated_failures": rollout.metrics["repeated_failures"],
                **staleness_metrics(rollout, self.iteration, cfg.rollout.max_staleness), **async_metrics,
                **{f"rollout/{key}": rollout.metrics[key] for key in ("tool_calls", "malformed_tool_calls")
                   if key in rollout.metrics}}  # agent rollouts: calls the gateway returned structured, or as text

    def _trained_rows(self, batch: RolloutBatch) -> list[int] | None:
        """The token rows the update trains on: all (None), or only root episodes' where the estimator gives branch
        episodes no advantage (vineppo's `train_branches: false`)."""
        from envgym.trainers.advantages import ESTIMATORS

        spec = ESTIMATORS[self.config.algorithm.estimator]
        options = {**spec.defaults, **spec.resolve(self.config.algorithm.options, self.config.algorithm.preset)}
        if options.get("train_branches", True):
            return None
        episodes = batch.episodes
        return [row for row, e in enumerate(batch.row_episode) if episodes[e].parent is None]

    def update(self, batch: RolloutBatch, advantages: torch.Tensor,
               trained_rows: list[int] | None = None) -> dict[str, float]:
        """PPO-clip on the sampled tokens of `batch` (of its `trained_rows`, default all): `epochs` x
        `minibatches` optimizer steps."""
        cfg = self.config
        proximal = self._proximal_logprobs(batch) if cfg.algorithm.correction != "none" else None
        self.train_module.train()
        totals = dict.fromkeys(("loss", "kl", "entropy", "clipped", "ratio", "log_ratio_sq", "tokens", "grad_norm",
                                "steps", "skipped", "lr", "corrected", "is_weight"), 0.0)
        # optim.skip_zero_advantage: a minibatch with gradient 0 (no KL or entropy term, every advantage 0) is skipped
        signal = ((advantages != 0).tolist() if cfg.optim.skip_zero_advantage and cfg.loss.kl_coef == 0
                  and cfg.loss.entropy_coef == 0 else None)
        # |trainer - rollout| logprob of the sampled tokens before the first step, and the k3 estimate of
        # KL(engine || trainer) from them: 0 up to rounding when the rollout sampled from the trained weights
        # (a stale batch, or a vLLM engine that missed a weight sync or computes differently, shows here)
        gap = {"max": 0.0, "sum": 0.0, "tokens": 0.0, "k3": 0.0}
        generator = torch.Generator().manual_seed(cfg.seed * 7919 + self.iteration)
        rows_done, rows_total = 0, cfg.optim.epochs * (batch.num_rows if trained_rows is None else len(trained_rows))
        for _ in range(cfg.optim.epochs):
            if trained_rows is None:
                order = torch.randperm(batch.num_rows, generator=generator).tolist()
            else:
                order = [trained_rows[i] for i in torch.randperm(len(trained_rows), generator=generator).tolist()]
            for chunk in np.array_split(np.array(order), cfg.optim.minibatches):
                rows = sorted(chunk.tolist(), key=lambda i: len(batch.input_ids[i]))  # less padding
                totals["lr"] = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
                if signal is not None and not self.dp.max([any(signal[t] for t in batch.trained_turns(rows))])[0]:
                    totals["skipped"] += 1  # not an optimizer step: the schedule (warmup, cosine) does not advance
                    rows_done += len(rows)
                    continue
                num_tokens = self.dp.loss_normaliser(batch.num_trained_tokens(rows))
                self.optimizer.zero_grad(set_to_none=True)
                micros = self.dp.micro_batches(batch, rows, cfg.optim.micro_batch_tokens)
                for i, micro in enumerate(micros):
                    with self.dp.gradient_sync(i == len(micros) - 1):
                        stats = self._accumulate(micro, advantages, num_tokens, proximal)
                    if totals["steps"] == 0:  # the first minibatch, before any optimizer step
                        gap["max"] = max(gap["max"], stats["logprob_gap_max"])
                        gap["sum"] += stats["logprob_gap"]
                        gap["k3"] += stats["engine_k3"]
                        gap["tokens"] += stats["tokens"]
                    for key in totals.keys() & stats.keys():
                        totals[key] += stats[key]
                    rows_done += len(micro.rows)
                    self.heartbeat.progress(rows_done, rows_total)
                grad_norm = self.dp.clip_grad_norm(cfg.optim.grad_clip)
                if not torch.isfinite(grad_norm):
                    self._stop_on_nan(batch, advantages, f"gradient norm is {float(grad_norm)}")
                self.optimizer.step()
                self.scheduler.step()
                totals["grad_norm"] += float(grad_norm)
                totals["steps"] += 1
        self.dp.sync_replica()
        summed = ("loss", "kl", "entropy", "clipped", "ratio", "log_ratio_sq", "tokens", "corrected",
                  "is_weight")  # over every rank's tokens
        totals |= dict(zip(summed, self.dp.sum([totals[key] for key in summed])))
        totals["loss"] /= self.dp.world_size  # each rank's loss was scaled by N (see DataParallel.loss_normaliser)
        gap["sum"], gap["k3"], gap["tokens"] = self.dp.sum([gap["sum"], gap["k3"], gap["tokens"]])
        gap["max"] = self.dp.max([gap["max"]])[0]
        tokens, steps = max(totals["tokens"], 1.0), max(totals["steps"], 1.0)
        measured = {"rollout/logprob_diff_max": gap["max"], "rollout/logprob_diff_mean": gap["sum"] / gap["tokens"],
                    "rollout/engine_kl_k3": gap["k3"] / gap["tokens"]} if gap["tokens"] else {}  # none if all skipped
        return {"loss/policy": totals["loss"] / steps, "loss/kl": totals["kl"] / tokens,
                "loss/entropy": totals["entropy"] / tokens, "loss/clip_fraction": totals["clipped"] / tokens,
                "loss/ratio": totals["ratio"] / tokens, "loss/approx_kl": 0.5 * totals["log_ratio_sq"] / tokens,
                "loss/grad_norm": totals["grad_norm"] / steps, "optim/lr": totals["lr"],
                "optim/skipped_steps": totals["skipped"], **measured,
                "loss/corrected_fraction": totals["corrected"] / tokens, "loss/is_weight": totals["is_weight"] / tokens}

    def _proximal_logprobs(self, batch: RolloutBatch) -> dict[int, torch.Tensor]:
        """The trainer's own logprobs of every sampled token of `batch` before the update's first step, by row:
        decoupled PPO's pi_old, which the ratio is taken against so the engine's numerics never enter the clip."""
        proximal = {}
        with torch.no_grad():
            for micro in self.dp.micro_batches(batch, range(batch.num_rows), self.config.optim.micro_batch_tokens):
                micro = micro.to(compute_device())
                logprobs = self.train_module(micro)[0]
                for row, part in zip(micro.rows, logprobs.split(micro.loss_mask[:, 1:].sum(1).tolist())):
                    proximal[row] = part
        return proximal

    def _accumulate(self, micro: TokenBatch, advantages: torch.Tensor, num_tokens: int,
                    proximal: dict[int, torch.Tensor] | None = None) -> dict[str, float]:
        """Forward and backward one micro-batch; the loss is scaled so micro-batches sum to the minibatch mean.
        With `proximal` (see `_proximal_logprobs`) the ratio is taken against it and the loss weighted by the
        configured off-policy correction."""
        cfg = self.config
        micro = micro.to(compute_device())
        logprobs, entropy = self.train_module(micro)
        behaviour = micro.old_logprobs[:, 1:][micro.loss_mask[:, 1:]]
        token_turn = micro.sampled_turns
        token_adv = advantages.to(logprobs.device)[token_turn]
        old, weights, correction = behaviour, None, CorrectionStats(0.0, float(len(logprobs)))
        if proximal is not None and micro.rows:
            old = torch.cat([proximal[row] for row in micro.rows])
            weights, correction = off_policy_weights(
                old, behaviour, mode=cfg.algorithm.correction, cap=cfg.algorithm.correction_cap,
                token_turn=token_turn if cfg.algorithm.correction_level == "turn" else None)
        loss, stats = ppo_clip_loss(logprobs, old, token_adv, num_tokens, clip_low=cfg.loss.clip_low,
                                    clip_high=cfg.loss.clip_high,
                                    token_turn=token_turn if cfg.loss.ratio == "turn" else None, weights=weights)
        kl_sum = 0.0
        if cfg.loss.kl_coef > 0:
            kl = kl_penalty(logprobs, self._reference_logprobs(micro), cfg.loss.kl_estimator)
            loss = loss + cfg.loss.kl_coef * kl.sum() / num_tokens
            kl_sum = float(kl.detach().sum())
        if cfg.loss.entropy_coef > 0:
            loss = loss - cfg.loss.entropy_coef * entropy.sum() / num_tokens
        if not torch.isfinite(loss):
            self._stop_on_nan(micro, advantages, f"loss is {float(loss.detach())}")
        loss.backward()
        gap = (logprobs.detach() - behaviour).abs()
        return {"loss": float(loss.detach()), "kl": kl_sum, "entropy": float(entropy.detach().sum()),
                "clipped": stats.clipped, "ratio": stats.ratio, "log_ratio_sq": stats.log_ratio_sq,
                "tokens": float(len(logprobs)), "logprob_gap": float(gap.sum()),
                "logprob_gap_max": float(gap.max()) if len(gap) else 0.0,
                "engine_k3": float(kl_penalty(behaviour, logprobs.detach()).sum()),
                "corrected": correction.corrected, "is_weight": correction.weight}

    def _reference_logprobs(self, micro: TokenBatch) -> torch.Tensor:
        with torch.no_grad():
            if self.reference is not None:
                return sampled_logprobs(self.reference, micro)[0]
            with self.model.disable_adapter():
                return sampled_logprobs(self.model, micro)[0]

    def _stop_on_nan(self, batch: Any, advantages: torch.Tensor, what: str) -> None:
        path = self.out_dir / f"nan_batch_iter{self.iteration:06d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"iteration": self.iteration, "batch": batch, "advantages": advantages}, path)
        raise FloatingPointError(f"iteration {self.iteration}: {what}; the offending batch is saved in {path}. "
                                 "Lower optim.lr, keep optim.grad_clip > 0, or check the rewards for NaN")

    # -- evaluation and checkpoints -------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics of the current policy on the fixed evaluation set of `eval.split`.

        `envgym.evaluation.evaluate_policy` plays it under `TrainConfig.eval_settings` (as
        `envgym eval --config` does): the first `eval.episodes` tasks, each played
        several times when the split is smaller and the policy samples. An episode
        that fails past its retries counts as a loss and is counted in
        `eval/dropped_episodes`.
        """
        started = time.perf_counter()
        self.model.eval()
        row, _ = evaluate_policy(
            self.env_factory, self.policy, self.config.eval_settings(), policy_name="trainer", pool=self.pool,
            shard=(self.dp.rank, self.dp.world_size), on_episode=self.heartbeat.progress,
            gather=self.dp.gather if self.dp.launched else None)  # each rank plays its share of the set
        if row.dropped_episodes:
            log.warning("held-out evaluation: %d of %d episodes failed past their retries and count as losses: %s",
                        row.dropped_episodes, row.dropped_episodes + row.episodes,
                        "; ".join(f["cause"] for f in row.failures[:3]))
        return {"eval/success": row.success_rate, "eval/episodes": float(row.episodes),
                "eval/dropped_episodes": float(row.dropped_episodes), "eval/return": row.mean_return,
                "eval/turns": row.mean_turns, "eval/invalid_rate": row.invalid_action_rate,
                "time/eval": time.perf_counter() - started}

    def save_checkpoint(self) -> Path:
        """Write this iteration's checkpoint (rank 0 writes; every rank returns once it is complete)."""
        state = {"optimizer": self.dp.optimizer_state(self.optimizer), "scheduler": self.scheduler.state_dict(),
                 "history": self.history, **self.dp.checkpoint_state()}
        if self.turn_reward is not None:
            state["turn_reward"] = self.turn_reward.state_dict()
        path = ckpt.checkpoints_dir(self.out_dir) / f"iter_{self.iteration:06d}"
        if self.dp.is_main:
            path = ckpt.save_checkpoint(self.out_dir, self.iteration, model=self.model, tokenizer=self.tokenizer,
                                        config=ckpt.config_dict(self.config), state=state,
                                        keep=self.config.checkpoint.keep, run_id=self.run_id)
        self.dp.barrier()
        return path

