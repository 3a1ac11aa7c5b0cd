"""Turn-reward models: per-turn rewards that feed the estimators' `intrinsic` field.

- `InfoGainReward` (IGPO): how much each turn raised the policy's probability of the gold answer.
- `ImplicitPRM` (PRIME): beta * log-ratio of an online-trained copy of the policy to a frozen reference.

Both answer `turn_rewards(batch) -> (intrinsic, metrics)` with one float per turn of a
`envgym.trainers.batch.RolloutBatch`, in its packed order.
"""

from envgym.trainers.rewards.implicit_prm import ImplicitPRM
from envgym.trainers.rewards.info_gain import InfoGainReward, answer_logprob_per_turn

__all__ = ["ImplicitPRM", "InfoGainReward", "answer_logprob_per_turn"]
