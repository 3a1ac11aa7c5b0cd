"""Rollouts that overlap the update (`rollout.max_staleness: 1`): a second process generates the next batch.

While the trainer updates on iteration i's batch, `RolloutWorker` collects
iteration i+1's groups in its own process, with its own policy and its own
`EnvPool`. Batch i+1 thus comes from the policy after i updates, one behind the
policy that trains on it: its staleness is 1 (the first batch of a run, or of
a resumed run, is generated on the spot: staleness 0). The PPO ratio is taken
against the behaviour logprobs stored with each turn, those of the policy that
sampled it, so a stale batch is corrected by the ratio (and clipped), as in
every asynchronous PPO trainer.

The worker's policy is the run's rollout backend: with `rollout.backend: hf`
a copy of the model, sent the trainable weights with each request (the LoRA
adapters alone, with LoRA); with `vllm` the vLLM engine, sent the merged
weights (`merged_named_weights`) and reloading them in place. Weights travel
through shared memory, in buffers made once and refilled for each request.

On one machine the two processes share the cores: with `threads: 1`, rollout
on one core and update on the other (see benchmarks/overlap.py).
"""

from __future__ import annotations

import logging
import multiprocessing.connection
import os
import pickle
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import torch

from envgym.core import RunFailed
from envgym.pool import describe_exit
from envgym.rollout import RolloutResult, collect_groups
from envgym.trainers.config import TrainConfig
from envgym.trainers.weights import merged_named_weights

log = logging.getLogger(__name__)


class RolloutWorkerFailed(RunFailed):
    """The rollout worker process raised or died; the message names the cause."""


class RolloutWorker:
    """A process that collects an iteration's groups with its own policy copy and EnvPool; see the module docstring.

    `next(iteration, ...)` returns iteration `iteration`'s rollout and, unless it
    was the last, starts collecting the next one with the weights the trainer has
    now. `close()` stops the process (idempotent).
    """

    def __init__(self, config: TrainConfig, env_factory: Any, *, episodes: int, dtype: torch.dtype,
                 rank: int = 0, local_rank: int = 0):
        """Start the worker and wait until its policy and EnvPool are built.

        `episodes`: the most episodes one request collects (the size of the
        worker's EnvPool); `dtype`: the trained model's (a vLLM engine runs in
        it). What stopped the worker's set-up is raised here as the worker
        raised it (EngineStartError for an engine that cannot start, ...).
        """
        self._backend = config.rollout.backend
        context = torch.multiprocessing.get_context("spawn")  # the trainer holds threads (and maybe CUDA): no fork
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_worker_main,
                                        args=(child, config, env_factory, episodes, dtype, rank, local_rank),
                                        daemon=True, name=f"envgym-rollout-{rank}")
        self._process.start()
        child.close()
        self._pending: int | None = None  # the iteration being collected
        self._buffers: dict[str, torch.Tensor] = {}  # the weights sent, in shared memory (refilled per request)
        self._closed = False
        try:
            kind, payload = self._read()
            if kind != "ready":
                raise payload if isinstance(payload, BaseException) else RolloutWorkerFailed(
                    f"the rollout worker could not start: {payload}")
        except BaseException:
            self.close()
            raise

    def next(self, iteration: int, options: Callable[[int], dict[str, Any]], model: torch.nn.Module, *,
             last_iteration: int) -> RolloutResult:
        """Iteration `iteration`'s rollout (`options(i)`: its `collect_groups` arguments); then, if `iteration` <
        `last_iteration`, the next one starts with `model`'s current weights. `metrics["policy_version"]` is the
        trainer iteration whose weights generated it."""
        if self._pending != iteration:  # the first batch, or after a resume: nothing was collected ahead
            if self._pending is not None:
                self._receive()  # a batch for another iteration: drop it
            self._submit(iteration, options(iteration), model, version=iteration)
        result = self._receive()
        if iteration < last_iteration:
            self._submit(iteration + 1, options(iteration + 1), model, version=iteration)
        return result

    def _weights(self, model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        """What the worker's policy loads: an HF copy the trainable weights (all of them in full fine-tuning,
        the adapters with LoRA), a vLLM engine the merged checkpoint tensors."""
        if self._backend == "vllm":
            return merged_named_weights(model)
        return ((name, p) for name, p in model.named_parameters() if p.requires_grad)

    def _submit(self, iteration: int, options: dict[str, Any], model: torch.nn.Module, version: int) -> None:
        # copied into the shared buffers: the worker must not see the trainer's tensors change under it, and
        # it has loaded the last request's weights before it answered, so the buffers are free to refill
        with torch.no_grad():
            for name, tensor in self._weights(model):
                if name in self._buffers:
                    self._buffers[name].copy_(tensor)
                else:
                    self._buffers[name] = tensor.detach().to("cpu", copy=True).share_memory_()
        try:
            self._conn.send(("collect", options, self._buffers, version))
        except (BrokenPipeError, OSError):
            self._raise_death()
        self._pending = iteration

    def _receive(self) -> RolloutResult:
        kind, payload = self._read()
        self._pending = None
        if kind == "error":
            raise RolloutWorkerFailed(f"the rollout worker failed: {payload}")
        return payload

    def _read(self) -> tuple[str, Any]:
        """The worker's next message; RolloutWorkerFailed if the process dies first."""
        ready = multiprocessing.connection.wait([self._conn, self._process.sentinel])
        if self._conn not in ready:
            self._raise_death()
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            self._raise_death()

    def _raise_death(self) -> NoReturn:
        self._process.join(timeout=5)
        raise RolloutWorkerFailed(f"the rollout worker process died ({describe_exit(self._process.exitcode)}) "
                                  + ("while collecting the next batch" if self._pending is not None else
                                     "before it could collect"))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._conn.send(("close",))
        except (BrokenPipeError, OSError):
            pass
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=5)
        self._conn.close()


def _build_policy(config: TrainConfig, dtype: torch.dtype, rank: int) -> Any:
    """The worker's own policy: a vLLM engine, or the run's model built as the trainer builds it (weights arrive
    with requests); its sampling stream apart from the trainer's and the other ranks' workers'."""
    from envgym.policies import HFPolicy
    from envgym.trainers.trainer import load_model, start_vllm_engine

    seed = config.seed * 1_000_003 + 7919 + rank
    if config.rollout.backend == "vllm":
        return start_vllm_engine(config, dtype, seed)
    model, tokenizer = load_model(config.model, config.seed)
    torch.manual_seed(seed)
    return HFPolicy(model.eval(), tokenizer)


def _load_weights(policy: Any, weights: dict[str, torch.Tensor]) -> None:
    """Give `policy` the trainer's weights (see `RolloutWorker._weights`)."""
    from envgym.policies import HFPolicy

    if not isinstance(policy, HFPolicy):
        policy.load_weights(weights.items())  # a vLLM engine checks them against its checkpoint first
        return
    missing = set(weights) - {name for name, _ in policy.model.named_parameters()}
    if missing:
        raise ValueError(f"the worker's model has no parameters {sorted(missing)[:3]}")
    policy.model.load_state_dict(weights, strict=False)
    policy.weights_changed()  # episode KV caches hold the old weights' keys and values


def _worker_main(conn: Any, config: TrainConfig, env_factory: Any, episodes: int, dtype: torch.dtype, rank: int,
                 local_rank: int) -> None:
    """Say ("ready", None) once the policy and pool are built (else ("error", exception)), then serve
    ("collect", options, weights, version) -> ("ok", RolloutResult) | ("error", message); ("close",) ends."""
    from envgym.trainers.trainer import make_pool

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if config.threads:
        torch.set_num_threads(config.threads)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    pool = None
    try:
        try:
            policy = _build_policy(config, dtype, rank)
            pool = make_pool(config.rollout, env_factory, episodes, ray_address=config.ray.address)
        except Exception as exc:  # the trainer raises it as it is (EngineStartError, ConfigError, ...)
            conn.send(("error", _picklable(exc)))
            return
        conn.send(("ready", None))
        while True:
            command, *args = conn.recv()
            if command == "close":
                break
            options, weights, version = args
            try:
                _load_weights(policy, weights)
                result = collect_groups(env_factory, policy, pool=pool, **options)
                result.metrics["policy_version"] = float(version)
                conn.send(("ok", result))
            except Exception as exc:  # the trainer raises it with the cause
                log.exception("rollout worker")
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        if pool is not None:
            pool.close()
        conn.close()


def _picklable(exc: Exception) -> Exception:
    """`exc` if it survives pickling (to be raised as it is in the trainer), else RolloutWorkerFailed with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RolloutWorkerFailed(f"the rollout worker could not start: {type(exc).__name__}: {exc}")
