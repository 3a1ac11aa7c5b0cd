"""Checks on token rows shared by the rollout-path tests."""

import torch


def stored_vs_teacher_forced(model, episode) -> float:
    """The largest gap between an episode's stored logprobs and a forward pass of `model` over each token row."""
    gap = 0.0
    for r, turns in enumerate(episode.rows()):
        ids = episode.row_ids(r)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        offset = 0
        for t in turns:
            turn = episode.turns[t]
            offset += len(turn.obs_ids)
            for k, (token, stored) in enumerate(zip(turn.action_ids, turn.logprobs)):
                gap = max(gap, abs(float(logprobs[offset + k - 1, token]) - stored))
            offset += len(turn.action_ids)
        assert offset == len(ids)
    return gap
