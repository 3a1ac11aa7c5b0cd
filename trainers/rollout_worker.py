"""Rollouts that overlap the update (`rollout.max_staleness: 1`): a second process generates the next batch.

While the trainer updates on iteration i's batch, `RolloutWorker` collects
iteration i+1's groups in its own process, with its own copy of the policy
(the same model, sent the trainer's trainable weights with each request) and
its own `EnvPool`. Batch i+1 thus comes from the policy after i updates, one
behind the policy that trains on it: its staleness is 1 (the first batch of a
run, or of a resumed run, is generated on the spot: staleness 0). The PPO ratio
is taken against the behaviour logprobs stored with each turn, those of the
policy that sampled it, so a stale batch is corrected by the ratio (and
clipped), as in every asynchronous PPO trainer.

On one machine the two processes share the cores: with `threads: 1`, rollout
on one core and update on the other (see benchmarks/overlap.py).

The seam for other engines: the worker builds its policy in `_build_policy`
and hands it weights through `_load_weights`. The vLLM engine does not run
here yet (`rollout.max_staleness: 1` needs `rollout.backend: hf`): it would
take the merged weights through `VLLMPolicy.load_weights` behind the same
`next`.
"""

from __future__ import annotations

import logging
import multiprocessing.connection
import os
from collections.abc import Callable
from typing import Any

import torch

from envgym.core import RunFailed
from envgym.pool import describe_exit
from envgym.rollout import RolloutResult, collect_groups
from envgym.trainers.config import TrainConfig

log = logging.getLogger(__name__)


class RolloutWorkerFailed(RunFailed):
    """The rollout worker process raised or died; the message names the cause."""


class RolloutWorker:
    """A process that collects an iteration's groups with its own policy copy and EnvPool; see the module docstring.

    `next(iteration, ...)` returns iteration `iteration`'s rollout and, unless it
    was the last, starts collecting the next one with the weights the trainer has
    now. `close()` stops the process (idempotent).
    """

    def __init__(self, config: TrainConfig, env_factory: Any, *, episodes: int, rank: int = 0, local_rank: int = 0):
        """`episodes`: the most episodes one request collects (the size of the worker's EnvPool)."""
        context = torch.multiprocessing.get_context("spawn")  # the trainer holds threads (and maybe CUDA): no fork
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_worker_main,
                                        args=(child, config, env_factory, episodes, rank, local_rank),
                                        daemon=True, name=f"envgym-rollout-{rank}")
        self._process.start()
        child.close()
        self._pending: int | None = None  # the iteration being collected
        self._sent: dict[str, torch.Tensor] = {}  # kept alive until the worker has read them (shared memory)
        self._closed = False

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

    def _submit(self, iteration: int, options: dict[str, Any], model: torch.nn.Module, version: int) -> None:
        # trainable weights only (all of them in full fine-tuning, the adapters with LoRA), as CPU copies:
        # the worker must not see the trainer's tensors change under it
        self._sent = {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters()
                      if p.requires_grad}
        try:
            self._conn.send(("collect", options, self._sent, version))
        except (BrokenPipeError, OSError):
            self._raise_death()
        self._pending = iteration

    def _receive(self) -> RolloutResult:
        ready = multiprocessing.connection.wait([self._conn, self._process.sentinel])
        if self._conn not in ready:
            self._raise_death()
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError):
            self._raise_death()
        self._pending = None
        if kind == "error":
            raise RolloutWorkerFailed(f"the rollout worker failed: {payload}")
        return payload

    def _raise_death(self) -> None:
        self._process.join(timeout=5)
        raise RolloutWorkerFailed(f"the rollout worker process died ({describe_exit(self._process.exitcode)}) "
                                  "while collecting the next batch")

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


def _build_policy(config: TrainConfig, rank: int) -> Any:
    """The worker's own policy: the run's model, built as the trainer builds it (weights arrive with requests)."""
    from envgym.policies import HFPolicy
    from envgym.trainers.trainer import load_model

    model, tokenizer = load_model(config.model, config.seed)
    torch.manual_seed(config.seed * 1_000_003 + 7919 + rank)  # sampling streams apart from the trainer's
    return HFPolicy(model.eval(), tokenizer)


def _load_weights(policy: Any, weights: dict[str, torch.Tensor]) -> None:
    missing = set(weights) - {name for name, _ in policy.model.named_parameters()}
    if missing:
        raise ValueError(f"the worker's model has no parameters {sorted(missing)[:3]}")
    policy.model.load_state_dict(weights, strict=False)
    policy.weights_changed()  # episode KV caches hold the old weights' keys and values


def _worker_main(conn: Any, config: TrainConfig, env_factory: Any, episodes: int, rank: int, local_rank: int) -> None:
    """Serve ("collect", options, weights, version) -> ("ok", RolloutResult) | ("error", message); ("close",) ends."""
    from envgym.trainers.trainer import make_pool

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if config.threads:
        torch.set_num_threads(config.threads)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    pool = None
    try:
        policy = _build_policy(config, rank)
        pool = make_pool(config.rollout, env_factory, episodes, ray_address=config.ray.address)
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
    except Exception as exc:  # building the policy or the pool failed
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
    finally:
        if pool is not None:
            pool.close()
        conn.close()
