"""Data-parallel training: N ranks under torchrun collect their own groups and train on the union batch.

    torchrun --nproc_per_node N -m envgym train CONFIG [key=value ...]          # one node
    torchrun --nnodes M --node_rank R --rdzv_backend c10d --rdzv_endpoint HOST:PORT \\
             --nproc_per_node N -m envgym train CONFIG                         # M nodes

`DataParallel.from_environment` reads torchrun's variables (`RANK`,
`WORLD_SIZE`, `LOCAL_RANK`) and joins the process group: NCCL on GPUs (rank r
on `cuda:LOCAL_RANK`), gloo on CPU, with `distributed.timeout_s` on every
collective, so a rank whose peer died or hangs stops with an error instead of
waiting forever (torchrun then stops the others). Without torchrun every method
below is the single-process identity (`launched` is False); `torchrun
--nproc_per_node 1` runs one rank with the strategy's wrapper (FSDP2 on one GPU).

What makes N ranks train exactly as one process would on the union batch:

- rank r collects groups [r n/N, (r+1) n/N) of each iteration's n groups
  (`shard`; `collect_groups(first_group=...)` gives them the seeds one process
  would), so a group never spans ranks and group statistics and GiGPO anchors
  stay whole;
- advantages are computed on the union's turn table (`union_turns`), so
  estimators with batch statistics (REINFORCE++, PRIME whitening) see the whole
  batch; each rank keeps its own turns' values;
- DDP and FSDP2 average gradients over ranks, so each rank divides its summed
  token loss by (union's trained tokens / N) (`loss_normaliser`): the average
  is then the gradient of the union's token mean;
- every rank runs as many micro-batches per minibatch as the rank with the most
  (`micro_batches` pads with empty ones): FSDP2 gathers parameters in every
  forward, and a rank left with no rows must still join the gradient reduction;
- metrics and the held-out evaluation are computed on the union of all ranks'
  episodes (`union_rollout`, `gather`); rank 0 alone logs and writes checkpoints
  (full state dicts: a checkpoint holds the same files whatever N).

With `minibatches > 1`, rank r's minibatch k is a random 1/minibatches of its
own rows: the union of the ranks' minibatches is as random as one process's,
though not the same rows.

Strategies (`distributed.strategy`): "ddp" wraps the policy in
`DistributedDataParallel` (parameters replicated; `Trainer.model` is the
trained module itself); "fsdp" shards a copy of it with FSDP2 (`fully_shard`
on each decoder layer, then the root) and keeps `Trainer.model` as a full,
unsharded replica on every rank, used for rollouts, evaluation, turn-reward
models, the warm start and checkpoints, as verl's rollout engine holds full
weights; `sync_replica` copies the trained shards into it after each update and
`load_replica` the other way after the replica was loaded or warm-started.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import logging
import os
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from envgym.rollout import RolloutResult
from envgym.trainers.advantages import TurnBatch
from envgym.trainers.batch import RolloutBatch, TokenBatch
from envgym.trainers.config import ConfigError, TrainConfig
from envgym.trainers.losses import sampled_logprobs
from envgym.trajectory import Group

log = logging.getLogger(__name__)


class SampledLogprobs(torch.nn.Module):
    """The trained computation as one module: `forward(micro)` is `losses.sampled_logprobs(model, micro)`.

    DDP and FSDP2 act on a module's `forward`; the policy's own forward would
    compute logits at every position, while the loss needs them only at the
    sampled tokens.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, micro: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return sampled_logprobs(self.model, micro)


def fsdp_available() -> bool:
    """Whether this torch has FSDP2 (`torch.distributed.fsdp.fully_shard`, torch >= 2.6)."""
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return True


def empty_micro_batch(pad_token_id: int) -> TokenBatch:
    """A micro-batch with no trained token: its forward and backward only take part in the collectives."""
    return TokenBatch(input_ids=torch.full((1, 2), pad_token_id, dtype=torch.long),
                      attention_mask=torch.ones((1, 2), dtype=torch.long),
                      loss_mask=torch.zeros((1, 2), dtype=torch.bool),
                      old_logprobs=torch.zeros((1, 2)), token_turn=torch.full((1, 2), -1, dtype=torch.long), rows=())


class DataParallel:
    """This process's place among `world_size` data-parallel ranks (one, without torchrun); see the module docstring."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, strategy: str = "none",
                 owns_group: bool = False):
        self.rank, self.world_size, self.local_rank, self.strategy = rank, world_size, local_rank, strategy
        self.launched = strategy != "none"  # started by torchrun: a process group and a wrapped module
        self._owns_group = owns_group  # joined the process group here, so `close` leaves it
        self._replica: torch.nn.Module | None = None
        self._trained: torch.nn.Module | None = None

    @classmethod
    def from_environment(cls, config: TrainConfig) -> DataParallel:
        """The ranks torchrun started (a world of one without it); joins the process group (or uses the one the
        caller already joined, and leaves it to the caller).

        Raises ConfigError before any collective when the world size does not
        divide `rollout.n_groups` or FSDP2 is asked of a torch without it.
        """
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:  # not started by torchrun
            return cls()
        world_size = int(os.environ["WORLD_SIZE"])
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        n_groups = config.rollout.n_groups
        if n_groups % world_size:
            raise ConfigError(f"rollout.n_groups is {n_groups}, which {world_size} ranks cannot split: each rank "
                              f"collects whole groups; set rollout.n_groups to a multiple of {world_size}")
        strategy = config.distributed.strategy
        if strategy == "auto":
            strategy = "fsdp" if fsdp_available() else "ddp"
        if strategy == "fsdp" and not fsdp_available():
            raise ConfigError(f"distributed.strategy is 'fsdp', but torch {torch.__version__} has no FSDP2 "
                              "(torch.distributed.fsdp.fully_shard, torch >= 2.6); use distributed.strategy: ddp")
        timeout = datetime.timedelta(seconds=config.distributed.timeout_s)
        owns_group = not dist.is_initialized()
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            if owns_group:
                dist.init_process_group("nccl", timeout=timeout, device_id=torch.device("cuda", local_rank))
        elif owns_group:
            dist.init_process_group("gloo", timeout=timeout)
        log.info("rank %d of %d (%s, %s)", rank, world_size, dist.get_backend(), strategy)
        return cls(rank, world_size, local_rank, strategy, owns_group)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs and writes checkpoints."""
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        """What a checkpoint records of the ranks that wrote it."""
        return {"world_size": self.world_size, "strategy": self.strategy}

    def close(self) -> None:
        """Leave the process group if `from_environment` joined it (idempotent)."""
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_group = False

    # -- the model --------------------------------------------------------------------------------

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the update trains: `SampledLogprobs(model)`, under DDP or FSDP2 when torchrun started us.

        Under DDP it shares `model`'s parameters (rank 0's are broadcast); under
        FSDP2 it is a sharded copy and `model` becomes the full replica. The
        optimizer must take the returned module's parameters.
        """
        self._replica = model
        if not self.launched:
            self._trained = SampledLogprobs(model)
        elif self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            # buffers (rotary tables) are constants: broadcasting them before every forward would only cost time
            self._trained = DistributedDataParallel(SampledLogprobs(model), broadcast_buffers=False)
        else:
            from torch.distributed.fsdp import fully_shard

            self._trained = SampledLogprobs(copy.deepcopy(model))
            layer_classes = set(_decoder_layer_classes(model))
            for module in self._trained.modules():
                if type(module).__name__ in layer_classes:
                    fully_shard(module)
            fully_shard(self._trained)
            self.load_replica()  # every rank starts from rank 0's weights
        return self._trained

    def sync_replica(self) -> None:
        """FSDP2: copy the trained shards into the full replica (a collective: every rank calls it)."""
        if self.strategy != "fsdp":
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self._trained, options=StateDictOptions(full_state_dict=True))
        with torch.no_grad():
            self._replica.load_state_dict({name.removeprefix("model."): value for name, value in full.items()})

    def load_replica(self) -> None:
        """Make the trained module (every rank's) hold rank 0's replica weights: after a resume or warm start."""
        if not self.launched:
            return
        with torch.no_grad():
            for tensor in self._replica.state_dict().values():  # DDP trains these very tensors
                dist.broadcast(tensor, src=0)
        if self.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(self._trained, {f"model.{k}": v for k, v in self._replica.state_dict().items()},
                                 options=StateDictOptions(full_state_dict=True))

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's full state (FSDP2: gathered onto rank 0; other ranks get {}). Every rank calls it."""
        if self.strategy != "fsdp":
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self._trained, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, checkpoint_state: dict[str, Any]) -> None:
        """Load the optimizer state of a checkpoint (`checkpoint_state["optimizer"]`, written by `optimizer_state`).

        FSDP2 states are keyed by parameter name, others by position: a run resumes
        with the kind its checkpoint holds (CheckpointMismatch otherwise).
        """
        saved = checkpoint_state.get("data_parallel", {}).get("strategy", "none")
        if (saved == "fsdp") != (self.strategy == "fsdp"):
            from envgym.trainers.checkpoint import CheckpointMismatch

            hint = ("distributed.strategy: fsdp under torchrun" if saved == "fsdp" else
                    "distributed.strategy: ddp under torchrun, or without torchrun")
            raise CheckpointMismatch(f"the checkpoint's optimizer state was written by a {saved!r} run and this run "
                                     f"is {self.strategy!r}: resume with {hint}")
        if saved != "fsdp":
            optimizer.load_state_dict(checkpoint_state["optimizer"])
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self._trained, optimizer, checkpoint_state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Clip the trained module's gradients to a total norm of `max_norm`; returns the norm before (plain)."""
        norm = torch.nn.utils.clip_grad_norm_(self._trained.parameters(), max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a DTensor

    @contextlib.contextmanager
    def gradient_sync(self, enabled: bool) -> Iterator[None]:
        """Inside, backward reduces gradients across ranks only if `enabled` (the minibatch's last micro-batch)."""
        if not self.launched or enabled:
            yield
        elif self.strategy == "ddp":
            with self._trained.no_sync():
                yield
        else:
            self._trained.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self._trained.set_requires_gradient_sync(True)

    # -- the batch --------------------------------------------------------------------------------

    def shard(self, n: int) -> range:
        """This rank's contiguous share of `n` items (groups of an iteration)."""
        return range(n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size)

    def loss_normaliser(self, trained_tokens: int) -> float:
        """What this rank divides its summed token loss by: the union's trained tokens / N (see the module doc)."""
        if not self.launched:
            return trained_tokens
        return self.sum([trained_tokens])[0] / self.world_size

    def micro_batches(self, batch: RolloutBatch, rows: Sequence[int], max_tokens: int) -> list[TokenBatch]:
        """`batch.micro_batches(rows, max_tokens)`, padded with empty micro-batches to the most any rank has."""
        micros = list(batch.micro_batches(rows, max_tokens)) if len(rows) else []
        if self.launched:
            most = int(self.max([len(micros)])[0])
            micros += [empty_micro_batch(batch.pad_token_id)] * (most - len(micros))
        return micros

    def union_turns(self, turns: TurnBatch) -> tuple[TurnBatch, slice]:
        """Every rank's turn table end to end (group and episode ids made distinct), and this rank's rows in it.

        Token fields are left out: estimators read turns only.
        """
        if not self.launched:
            return turns, slice(None)
        names = ("group", "episode", "turn", "reward", "state", "intrinsic", "invalid", "parent", "branch_turn")
        mine = {name: getattr(turns, name) for name in names}
        parts = self.all_gather_object((mine, turns.state_text))
        columns: dict[str, list[torch.Tensor]] = {name: [] for name in names}
        texts: list[str] = []
        group_offset = episode_offset = start = 0
        for r, (part, part_texts) in enumerate(parts):
            if r == self.rank:
                start = sum(len(c) for c in columns["reward"])
            for name in names:
                value = part[name]
                if value is not None:
                    columns[name].append(value + group_offset if name == "group" else
                                         value + episode_offset if name == "episode" else
                                         torch.where(value >= 0, value + episode_offset, value) if name == "parent"
                                         else value)
            if len(part["group"]):
                group_offset += int(part["group"].max()) + 1
                episode_offset += int(part["episode"].max()) + 1
            texts += list(part_texts or ())
        union = TurnBatch(**{name: torch.cat(c) if c else None for name, c in columns.items()},
                          state_text=tuple(texts) if turns.state_text is not None else None)
        return union, slice(start, start + turns.num_turns)

    def union_rollout(self, rollout: RolloutResult) -> RolloutResult:
        """All ranks' rollouts as one (prompt ids left out: the bulk of a row): for metrics over every episode."""
        if not self.launched:
            return rollout
        light = RolloutResult([_without_prompt_tokens(g) for g in rollout.groups], rollout.metrics, rollout.failures)
        return RolloutResult.merge(self.gather(light))

    # -- collectives --------------------------------------------------------------------------------

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (any picklable object), in rank order."""
        return self.all_gather_object(value)

    def all_gather_object(self, value: Any) -> list[Any]:
        if not self.launched:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks."""
        return self._all_reduce(values, dist.ReduceOp.SUM)

    def max(self, values: Sequence[float]) -> list[float]:
        """Element-wise maxima over the ranks."""
        return self._all_reduce(values, dist.ReduceOp.MAX)

    def _all_reduce(self, values: Sequence[float], op: Any) -> list[float]:
        if not self.launched:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._device())
        dist.all_reduce(tensor, op=op)
        return tensor.tolist()

    def average_gradients(self, module: torch.nn.Module, weight: float) -> None:
        """Replace each rank's gradients g_r by sum_r w_r g_r / sum_r w_r (`weight` is this rank's w_r).

        For a model outside the trained module (the PRIME reward model), whose
        loss is a mean over `weight` terms on each rank: the result is the
        gradient of the mean over the union's terms.
        """
        if not self.launched:
            return
        total = self.sum([weight])[0]
        for param in module.parameters():
            if param.requires_grad:
                grad = param.grad if param.grad is not None else torch.zeros_like(param)
                grad = grad * (weight / max(total, 1e-12))
                dist.all_reduce(grad)
                param.grad = grad

    def barrier(self) -> None:
        if self.launched:
            dist.barrier()

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else \
            torch.device("cpu")

    # -- randomness and checkpoints ------------------------------------------------------------------

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the ranks: their number, the strategy, each rank's RNG states."""
        from envgym.trainers.checkpoint import rng_states

        return {"data_parallel": {**self.describe(), "rng": self.all_gather_object(rng_states())}}

    def rank_rng_state(self, checkpoint_state: dict[str, Any]) -> dict[str, Any]:
        """This rank's RNG states in a checkpoint (rank 0's where it was written by fewer ranks)."""
        saved = checkpoint_state.get("data_parallel", {})
        ranks = saved.get("rng", [checkpoint_state["rng"]])
        if len(ranks) != self.world_size:
            log.warning("the checkpoint was written by %d ranks, this run has %d: training continues from its "
                        "weights and optimizer state, but ranks without saved random states sample new streams",
                        len(ranks), self.world_size)
        if self.rank < len(ranks):
            return ranks[self.rank]
        from envgym.trainers.checkpoint import rng_states

        return rng_states()  # keep the stream `seed_rank` gave this rank

    def seed_rank(self, seed: int) -> None:
        """Give ranks > 0 their own sampling streams (rank 0 keeps the single-process one)."""
        if self.rank:
            random.seed(seed * 1_000_003 + self.rank)
            np.random.seed((seed * 1_000_003 + self.rank) % 2**32)
            torch.manual_seed(seed * 1_000_003 + self.rank)


class NoRunDirectory:
    """What ranks other than 0 hold of `out_dir`: nothing (`RunDirectory`'s interface; rank 0 claims it)."""

    def __enter__(self) -> NoRunDirectory:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def release(self) -> None:
        return None

    def clear_run(self) -> None:
        return None


class NoRunLog:
    """What ranks other than 0 log: nothing (`RunLog`'s interface)."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __enter__(self) -> NoRunLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def log(self, *args: Any, **kwargs: Any) -> None:
        return None

    def plot_curve(self) -> None:
        return None


def _decoder_layer_classes(model: torch.nn.Module) -> list[str]:
    """The class names of a transformers model's decoder layers (its `_no_split_modules`), a peft model's too."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = list(getattr(base, "_no_split_modules", None) or [])
    if not names:
        raise ValueError(f"{type(base).__name__} names no decoder layer classes (_no_split_modules); "
                         "FSDP2 needs them: use distributed.strategy: ddp")
    return names


def _without_prompt_tokens(group: Group) -> Group:
    episodes = tuple(dataclasses.replace(e, turns=tuple(dataclasses.replace(t, obs_ids=())
                                                        for t in e.turns)) for e in group.episodes)
    return dataclasses.replace(group, episodes=episodes)
