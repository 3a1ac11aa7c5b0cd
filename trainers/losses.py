"""The policy-update losses, written as the papers write them.

All functions take flat per-token tensors of one micro-batch that hold only
the tokens that train (sampled action tokens, as `sampled_logprobs` packs
them). Losses are summed over those tokens and divided by `num_tokens`, the
number of trained tokens in the whole batch, so micro-batches accumulate to
exactly the token mean of the batch (gradient accumulation changes nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log pi(target) for each position: logits [..., V], targets [...] -> [...] (float32)."""
    logits = logits.float()
    return torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at each position, in nats: [..., V] -> [...]."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def turn_mean(values: torch.Tensor, token_turn: torch.Tensor) -> torch.Tensor:
    """Each token's value replaced by the mean of the values of its turn (segment mean by `token_turn`)."""
    turn_ids, inverse = torch.unique(token_turn, return_inverse=True)
    sums = torch.zeros(len(turn_ids), dtype=values.dtype, device=values.device).index_add(0, inverse, values)
    counts = torch.zeros(len(turn_ids), dtype=values.dtype, device=values.device).index_add(
        0, inverse, torch.ones_like(values))
    return (sums / counts)[inverse]


@dataclass
class PolicyLossStats:
    """Diagnostics of one micro-batch, as sums over its tokens (divide by the token count to average)."""

    clipped: float  # tokens whose objective took the clipped branch
    ratio: float
    log_ratio_sq: float


def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    num_tokens: int,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    token_turn: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, PolicyLossStats]:
    """PPO-clip: L = -sum_t w_t min(r_t A_t, clip(r_t, 1-clip_low, 1+clip_high) A_t) / num_tokens.

    r_t = exp(log pi(y_t) - log pi_old(y_t)) per token; with `token_turn` given,
    every token of a turn uses the turn's geometric-mean ratio
    exp(mean_{t in turn} log r_t) instead (one ratio per turn, as GSPO does per
    sequence), so long turns are not clipped token by token. `weights` (no
    gradient; default 1) are the off-policy correction's, see `off_policy_weights`.
    """
    log_ratio = logprobs - old_logprobs
    if token_turn is not None:
        log_ratio = turn_mean(log_ratio, token_turn)
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    objective = torch.minimum(unclipped, clipped)
    if weights is not None:
        objective = objective * weights
    loss = -objective.sum() / num_tokens
    with torch.no_grad():
        took_clip = (clipped < unclipped).sum().item()
        stats = PolicyLossStats(clipped=float(took_clip), ratio=float(ratio.sum()),
                                log_ratio_sq=float(log_ratio.square().sum()))
    return loss, stats


@dataclass
class CorrectionStats:
    """The off-policy correction of one micro-batch, as sums over its tokens."""

    corrected: float  # tokens whose weight was capped (tis) or masked to 0 (mis)
    weight: float


def off_policy_weights(
    proximal_logprobs: torch.Tensor,
    behaviour_logprobs: torch.Tensor,
    *,
    mode: str,
    cap: float,
    token_turn: torch.Tensor | None = None,
) -> tuple[torch.Tensor, CorrectionStats]:
    """Importance weights for tokens sampled by the engine (behaviour) and trained against the trainer's own
    logprobs of them at the start of the update (proximal), rho = pi_proximal / pi_behaviour.

    "tis" (truncated importance sampling): w = min(rho, cap); "mis" (masked):
    w = 1 where 1/cap <= rho <= cap, else 0; "none": w = 1. With `token_turn`,
    rho is the turn's geometric mean exp(mean_{t in turn} log rho_t), so a turn
    is weighted (or masked) as a whole. Returns weights without gradient.
    """
    if cap < 1:
        raise ValueError(f"the correction cap must be >= 1, got {cap}")
    with torch.no_grad():
        log_rho = proximal_logprobs - behaviour_logprobs
        if token_turn is not None:
            log_rho = turn_mean(log_rho, token_turn)
        rho = torch.exp(log_rho.clamp(max=math.log(cap) + 1.0))  # above the cap the value is never used
        if mode == "tis":
            corrected = rho > cap
            weights = rho.clamp(max=cap)
        elif mode == "mis":
            corrected = (rho > cap) | (rho < 1.0 / cap)
            weights = (~corrected).to(rho.dtype)
        elif mode == "none":
            corrected = torch.zeros_like(rho, dtype=torch.bool)
            weights = torch.ones_like(rho)
        else:
            raise ValueError(f"correction must be 'none', 'tis' or 'mis', got {mode!r}")
        stats = CorrectionStats(corrected=float(corrected.sum()), weight=float(weights.sum()))
    return weights, stats


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1 and k3).

    k1 = log pi - log pi_ref (unbiased, high variance, can be negative);
    k3 = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1 (unbiased, >= 0, low variance).
    """
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k3":
        delta = (ref_logprobs - logprobs).clamp(-20.0, 20.0)  # exp() of a huge gap would overflow
        return torch.exp(delta) - delta - 1.0
    raise ValueError(f"KL estimator must be 'k1' or 'k3', got {estimator!r}")


def sampled_logprobs(model: torch.nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y) and the entropy of pi at each trained token of `batch` (a `TokenBatch`), flat, row-major.

    Token j is predicted from position j-1, so the trained positions are
    `batch.loss_mask[:, 1:]`. Only those hidden states go through the output
    head: with a 49k vocabulary most of the logits a full forward makes would
    belong to prompt tokens and be thrown away.
    """
    hidden = model.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    positions = batch.loss_mask[:, 1:]
    logits = model.get_output_embeddings()(hidden[:, :-1][positions])
    return token_logprobs(logits, batch.input_ids[:, 1:][positions]), token_entropy(logits)
