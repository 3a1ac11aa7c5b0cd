"""Advantage estimators for turn-level credit assignment (docs/algorithms.md).

    batch = TurnBatch.from_episodes([[0, 0, 1], [0, 1]], group=[0, 0], states=[[1, 2, 3], [1, 3]])
    adv = compute_advantages(batch, "gigpo", gamma=0.95)  # [N] float32, one per turn
    token_adv = broadcast_to_tokens(adv, batch)             # needs token_turn / loss_mask

Estimators: grpo, drgrpo, rloo, reinforce_pp, turn_grpo, gigpo, igpo, prime, and over branch episodes
vineppo and spo_tree; add one
with @register_estimator. Backends: "torch" (vectorised, default), "triton", "reference".
"""

from . import branching, gigpo, igpo, outcome, prime, turn_grpo  # noqa: F401  (registers the estimators)
from .batch import TurnBatch
from .gigpo import anchor_buckets, similar_state_keys
from .ops import Ops
from .registry import ESTIMATORS, broadcast_to_tokens, check_estimator, compute_advantages, register_estimator
from .scan import discounted_returns, min_returns
from .segment import Segments, leave_one_out, standardize, whiten

__all__ = [
    "ESTIMATORS",
    "Ops",
    "Segments",
    "TurnBatch",
    "anchor_buckets",
    "broadcast_to_tokens",
    "check_estimator",
    "compute_advantages",
    "discounted_returns",
    "leave_one_out",
    "min_returns",
    "register_estimator",
    "similar_state_keys",
    "standardize",
    "whiten",
]
