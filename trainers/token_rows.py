"""Small operations on the rollout's token rows that the RL update and the SFT warm start share."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from envgym.trajectory import TokenBatch, TokenRows


def subset(rows: TokenRows, indices: Sequence[int]) -> TokenRows:
    """The rows `indices` of `rows`, in that order."""
    def pick(values):
        return tuple(values[i] for i in indices)

    return dataclasses.replace(rows, input_ids=pick(rows.input_ids), loss_mask=pick(rows.loss_mask),
                               old_logprobs=pick(rows.old_logprobs), token_turn=pick(rows.token_turn))


def to_device(batch: TokenBatch, device: torch.device | str) -> TokenBatch:
    return dataclasses.replace(batch, **{f.name: getattr(batch, f.name).to(device)
                                         for f in dataclasses.fields(batch) if f.name != "rows"})
