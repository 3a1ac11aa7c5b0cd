"""Asynchronous rollouts (`rollout.max_staleness: k`): a second process generates while the trainer updates.

`RolloutWorker` runs its own policy and its own `EnvPool` in a process of its
own and generates continuously: it collects the batches of iterations i, i+1,
..., i+k ahead of the trainer, starting the batch of iteration j only once it
holds weights at most k updates older than the trainer's at iteration j
(version >= j - k; version v = the weights after v updates). The trainer
publishes new weights after each update; the worker loads them between two
turns (so an episode may span an update), and each `Turn.policy_version` records
the weights that sampled it. When the trainer takes batch j its own version is
j, so every turn is at most k updates stale; k = 0 is the synchronous loop
(each batch waits for the previous update) and reproduces it exactly
(tests/test_async.py). The first batch of a run, or of a resumed run, has
staleness 0.

The PPO ratio is taken against the behaviour logprobs stored with each turn,
those of the weights that sampled it (or, with `algorithm.correction`, against
the trainer's own logprobs, the importance weight correcting the rest; see
`envgym.trainers.losses.off_policy_weights`).

The worker's policy is the run's rollout backend: with `rollout.backend: hf`
a copy of the model, sent the trainable weights (the LoRA adapters alone, with
LoRA); with `vllm` the vLLM engine, sent the merged weights
(`merged_named_weights`) and reloading them in place. Weights travel through
shared memory, in buffers made once and refilled for each version; the trainer
refills them only after the worker said it loaded the previous version.

On one machine the two processes share the cores: with `threads: 1`, rollout
on one core and update on the other (see benchmarks/overlap.py).
"""

from __future__ import annotations

import collections
import logging
import multiprocessing.connection
import pickle
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import torch

from envgym.core import RunFailed
from envgym.pool import describe_exit
from envgym.rollout import RolloutResult, collect_groups
from envgym.trainers.config import TrainConfig
from envgym.trainers.factories import (engine_serves_adapter, lora_config, make_pool, policy_model, seed_sampling,
                                       start_vllm_engine)
from envgym.trainers.weights import adapter_config, lora_adapter, merged_named_weights

log = logging.getLogger(__name__)


class RolloutWorkerFailed(RunFailed):
    """The rollout worker process raised or died; the message names the cause."""


class RolloutWorker:
    """A process that collects iterations' groups ahead of the trainer with its own policy copy and EnvPool, at
    most `rollout.max_staleness` updates behind it; see the module docstring.

    `publish(model, version)` hands it new weights; `next(iteration, ...)`
    returns iteration `iteration`'s rollout (and queues the following ones up to
    `iteration + k`). `close()` stops the process (idempotent).
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
        self._adapter_only = self._backend == "vllm" and engine_serves_adapter(config)
        self.max_staleness = config.rollout.max_staleness
        context = torch.multiprocessing.get_context("spawn")  # the trainer holds threads (and maybe CUDA): no fork
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_worker_main,
                                        args=(child, config, env_factory, episodes, dtype, rank, local_rank),
                                        daemon=True, name=f"envgym-rollout-{rank}")
        self._process.start()
        child.close()
        self._requested: int | None = None  # the last iteration asked for
        self._results: dict[int, RolloutResult] = {}  # batches received ahead of their iteration
        self.version: int | None = None  # the last weights published
        self._loaded: int | None = None  # the last weights the worker said it loaded
        self._buffers: dict[str, torch.Tensor] = {}  # the weights sent, in shared memory (refilled per version)
        self._closed = False
        try:
            kind, *payload = self._read()
            if kind != "ready":
                error = payload[0]
                raise error if isinstance(error, BaseException) else RolloutWorkerFailed(
                    f"the rollout worker could not start: {error}")
        except BaseException:
            self.close()
            raise

    def publish(self, model: torch.nn.Module, version: int) -> float:
        """Send `model`'s weights as version `version`; the worker loads them before its next turn. Returns the
        seconds spent waiting for the worker to load the previous version (it frees the shared buffers)."""
        started = time.perf_counter()
        while self._loaded != self.version:
            self._handle(self._read())
        waited = time.perf_counter() - started
        with torch.no_grad():
            for name, tensor in self._weights(model):
                if name in self._buffers:
                    self._buffers[name].copy_(tensor)
                else:
                    self._buffers[name] = tensor.detach().to("cpu", copy=True).share_memory_()
        self._send(("weights", version, self._buffers))
        self.version = version
        return waited

    def next(self, iteration: int, options: Callable[[int], dict[str, Any]], *, last_iteration: int) -> RolloutResult:
        """Iteration `iteration`'s rollout (`options(i)`: iteration i's `collect_groups` arguments), after asking for
        those up to `iteration + k` (not past `last_iteration`). `metrics["trainer_wait_s"]`: the seconds this call
        waited for it; `metrics["engine_wait_s"]`: those the worker waited for weights before collecting it."""
        if self._requested is None or self._requested < iteration - 1:  # the first batch, or after a resume
            self._results.clear()
            self._requested = iteration - 1
        while self._requested < min(iteration + self.max_staleness, last_iteration):
            self._requested += 1
            self._send(("collect", self._requested, options(self._requested)))
        started = time.perf_counter()
        while iteration not in self._results:
            self._handle(self._read())
        result = self._results.pop(iteration)
        result.metrics["trainer_wait_s"] = time.perf_counter() - started
        return result

    def _weights(self, model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        """What the worker's policy loads: an HF copy the trainable weights (all of them in full fine-tuning,
        the adapters with LoRA), a vLLM engine the adapter (named as peft saves it) or the merged checkpoint
        tensors (see `engine_serves_adapter`)."""
        if self._adapter_only:
            return iter(lora_adapter(model)[0].items())
        if self._backend == "vllm":
            return merged_named_weights(model)
        return ((name, p) for name, p in model.named_parameters() if p.requires_grad)

    def _send(self, message: tuple) -> None:
        try:
            self._conn.send(message)
        except (BrokenPipeError, OSError):
            self._raise_death()

    def _handle(self, message: tuple) -> None:
        kind, *payload = message
        if kind == "loaded":
            self._loaded = payload[0]
        elif kind == "ok":
            iteration, result = payload
            self._results[iteration] = result
        else:
            raise RolloutWorkerFailed(f"the rollout worker failed: {payload[0]}")

    def _read(self) -> tuple:
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
                                  + ("while collecting" if self._requested is not None else "before it could collect"))

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
    """The worker's own policy: a vLLM engine (its sampling stream apart from the trainer's and the other ranks'
    workers'), or the run's model built as the trainer builds it, which samples as the trainer would (see
    `seed_sampling`). The weights arrive when the trainer publishes them."""
    from envgym.policies import HFPolicy

    if config.rollout.backend == "vllm":
        return start_vllm_engine(config, dtype, config.seed * 1_000_003 + 7919 + rank)
    return HFPolicy(*policy_model(config.model, config.seed))


def _load_weights(policy: Any, weights: dict[str, torch.Tensor], adapter: dict[str, Any] | None) -> None:
    """Give `policy` the trainer's weights (see `RolloutWorker._weights`); `adapter`: the adapter config of
    an engine that is handed the LoRA adapter alone."""
    from envgym.policies import HFPolicy

    if adapter is not None:
        policy.load_adapter(weights, adapter)
        return
    if not isinstance(policy, HFPolicy):
        policy.load_weights(weights.items())  # a vLLM engine checks them against its checkpoint first
        return
    missing = set(weights) - {name for name, _ in policy.model.named_parameters()}
    if missing:
        raise ValueError(f"the worker's model has no parameters {sorted(missing)[:3]}")
    policy.model.load_state_dict(weights, strict=False)
    policy.weights_changed()  # episode KV caches hold the old weights' keys and values


class _Closed(BaseException):
    """The trainer said close (not an Exception: closing is not a failure to report)."""


class _Server:
    """The worker's side: the requests queued, the weights it holds, and the messages that change them."""

    def __init__(self, conn: Any, policy: Any, max_staleness: int, adapter: dict[str, Any] | None):
        self.conn, self.policy, self.max_staleness, self.adapter = conn, policy, max_staleness, adapter
        self.requests: collections.deque[tuple[int, dict[str, Any]]] = collections.deque()
        self.version: int | None = None
        self.weight_wait = 0.0  # seconds waited for weights since the last batch was sent

    def handle(self, message: tuple) -> None:
        kind, *payload = message
        if kind == "close":
            raise _Closed
        if kind == "collect":
            self.requests.append((payload[0], payload[1]))
            return
        version, weights = payload
        _load_weights(self.policy, weights, self.adapter)
        self.version = version
        self.conn.send(("loaded", version))

    def between_turns(self) -> int:
        """Load the newest weights the trainer published since the last turn; the version the next turn uses."""
        while self.conn.poll():
            self.handle(self.conn.recv())
        return self.version

    def serve(self, collect: Callable[[int, dict[str, Any]], RolloutResult]) -> NoReturn:
        """Collect the queued iterations in order, each once weights at most k updates older than the trainer's
        at that iteration are loaded; until the trainer says close (`_Closed`) or something raises."""
        while True:
            if not self.requests:
                self.handle(self.conn.recv())
                continue
            iteration, options = self.requests[0]
            if self.version is None or self.version < iteration - self.max_staleness:
                started = time.perf_counter()
                self.handle(self.conn.recv())
                self.weight_wait += time.perf_counter() - started
                continue
            self.requests.popleft()
            result = collect(iteration, options)
            result.metrics["engine_wait_s"], self.weight_wait = self.weight_wait, 0.0
            self.conn.send(("ok", iteration, result))


def _worker_main(conn: Any, config: TrainConfig, env_factory: Any, episodes: int, dtype: torch.dtype, rank: int,
                 local_rank: int) -> None:
    """Say ("ready",) once the policy and pool are built (else ("error", exception)), then serve the trainer's
    ("weights", version, tensors) -> ("loaded", version) and ("collect", iteration, options) ->
    ("ok", iteration, RolloutResult) | ("error", message), as `_Server` says; ("close",) ends."""
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
        conn.send(("ready",))
        adapter = (adapter_config(lora_config(config.model.lora))
                   if config.rollout.backend == "vllm" and engine_serves_adapter(config) else None)
        server = _Server(conn, policy, config.rollout.max_staleness, adapter)

        def collect(iteration: int, options: dict[str, Any]) -> RolloutResult:
            seed_sampling(config.seed, iteration, rank)
            return collect_groups(env_factory, policy, pool=pool, policy_version=server.between_turns, **options)

        try:
            server.serve(collect)
        except Exception as exc:  # a collection or a weight load failed: the trainer raises it with the cause
            log.exception("rollout worker")
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    except (_Closed, EOFError, KeyboardInterrupt):
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
