"""The PPO-clip and KL math of envgym.trainers.losses against hand-computed values."""

import math

import pytest
import torch

from envgym.trainers.losses import (kl_penalty, off_policy_weights, ppo_clip_loss, token_entropy, token_logprobs,
                                    turn_mean)


def test_token_logprobs_match_log_softmax_gather():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    targets = torch.randint(0, 7, (2, 5))
    expected = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    torch.testing.assert_close(token_logprobs(logits, targets), expected)


def test_entropy_of_uniform_is_log_vocab():
    assert token_entropy(torch.zeros(3, 10)).tolist() == pytest.approx([math.log(10)] * 3)


def test_ppo_clip_by_hand():
    # ratios e^0.5=1.65 (clipped above for A>0), e^-0.5=0.61 (clipped below for A<0), 1.0
    old = torch.zeros(3)
    new = torch.tensor([0.5, -0.5, 0.0])
    adv = torch.tensor([1.0, -2.0, 0.5])
    loss, stats = ppo_clip_loss(new, old, adv, num_tokens=3, clip_low=0.2, clip_high=0.3)
    expected = -(1.3 * 1.0 + 0.8 * -2.0 + 1.0 * 0.5) / 3
    assert loss.item() == pytest.approx(expected)
    assert stats.clipped == 2


def test_ppo_gradient_is_zero_on_clipped_tokens_and_advantage_elsewhere():
    new = torch.tensor([0.5, 0.0], requires_grad=True)
    loss, _ = ppo_clip_loss(new, torch.zeros(2), torch.tensor([1.0, 2.0]), num_tokens=2)
    loss.backward()
    # d/dlogp of -(r*A)/2 at r=1 is -A/2; the clipped token gets no gradient
    assert new.grad.tolist() == pytest.approx([0.0, -1.0])


def test_micro_batches_accumulate_to_the_full_batch_loss():
    torch.manual_seed(1)
    new, old, adv = torch.randn(10) * 0.1, torch.randn(10) * 0.1, torch.randn(10)
    n = 10
    full, _ = ppo_clip_loss(new, old, adv, n)
    parts = sum(ppo_clip_loss(new[s], old[s], adv[s], n)[0] for s in (slice(0, 4), slice(4, 10)))
    assert parts.item() == pytest.approx(full.item(), abs=1e-6)


def test_turn_ratio_is_the_geometric_mean_of_the_turn():
    log_ratio = torch.tensor([0.1, 0.3, -0.2])
    token_turn = torch.tensor([7, 7, 9])
    torch.testing.assert_close(turn_mean(log_ratio, token_turn)[:3], torch.tensor([0.2, 0.2, -0.2]))
    adv = torch.ones(3)
    loss, _ = ppo_clip_loss(log_ratio, torch.zeros(3), adv, 3, clip_high=0.5, token_turn=token_turn)
    expected = -(2 * math.exp(0.2) + math.exp(-0.2)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_kl_estimators():
    logp = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-1.5, -1.0])
    assert kl_penalty(logp, ref, "k1").tolist() == pytest.approx([0.5, -1.0])
    k3 = kl_penalty(logp, ref, "k3")
    assert k3.tolist() == pytest.approx([math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1])
    assert (k3 >= 0).all()
    assert kl_penalty(logp, logp, "k3").abs().max() == 0
    with pytest.raises(ValueError, match="k1"):
        kl_penalty(logp, ref, "k2")


def test_k1_and_k3_estimate_the_same_kl():
    torch.manual_seed(0)
    p = torch.distributions.Categorical(logits=torch.randn(6))
    q = torch.distributions.Categorical(logits=torch.randn(6))
    x = p.sample((200_000,))
    exact = torch.distributions.kl_divergence(p, q).item()
    for estimator in ("k1", "k3"):
        assert kl_penalty(p.log_prob(x), q.log_prob(x), estimator).mean().item() == pytest.approx(exact, rel=0.05)


def test_tis_caps_and_mis_masks_the_engine_to_trainer_ratio_by_hand():
    proximal = torch.log(torch.tensor([0.5, 0.5, 0.5, 0.5]))
    # rho = 0.5/0.1 = 5 (capped at 2 / masked), 0.5/0.4 = 1.25, 0.5/0.5 = 1, 0.5/0.9 = 0.56 (masked: < 1/1.5)
    behaviour = torch.log(torch.tensor([0.1, 0.4, 0.5, 0.9]))
    tis, stats = off_policy_weights(proximal, behaviour, mode="tis", cap=2.0)
    assert tis[:4].tolist() == pytest.approx([2.0, 1.25, 1.0, 5 / 9])
    assert stats.corrected == 1 and stats.weight == pytest.approx(2.0 + 1.25 + 1.0 + 5 / 9)
    mis, stats = off_policy_weights(proximal, behaviour, mode="mis", cap=1.5)
    assert mis[:4].tolist() == [0.0, 1.0, 1.0, 0.0] and stats.corrected == 2
    none, stats = off_policy_weights(proximal, behaviour, mode="none", cap=2.0)
    assert none.tolist() == [1.0] * 4 and stats.corrected == 0


def test_turn_level_correction_weighs_a_turn_by_its_geometric_mean_ratio():
    proximal = torch.zeros(3)
    behaviour = torch.tensor([-1.0, 0.2, -0.1])  # turn 3: log rho 1 and -0.2, mean 0.4; turn 5: 0.1
    token_turn = torch.tensor([3, 3, 5])
    weights, _ = off_policy_weights(proximal, behaviour, mode="tis", cap=1.45, token_turn=token_turn)
    assert weights[:3].tolist() == pytest.approx([1.45, 1.45, math.exp(0.1)])  # e^0.4 = 1.49 capped, per turn
    masked, stats = off_policy_weights(proximal, behaviour, mode="mis", cap=1.45, token_turn=token_turn)
    assert masked[:3].tolist() == [0.0, 0.0, 1.0] and stats.corrected == 2


def test_a_cap_below_one_is_refused():
    with pytest.raises(ValueError, match="cap must be >= 1"):
        off_policy_weights(torch.zeros(2), torch.zeros(2), mode="tis", cap=0.5)


@pytest.mark.parametrize("mode", ["tis", "mis"])
def test_corrected_decoupled_ppo_matches_a_plain_loop(mode):
    """The corrected loss on random tokens against the formula written one token at a time."""
    generator = torch.Generator().manual_seed(3)
    n, cap, clip_low, clip_high = 40, 1.6, 0.2, 0.28
    new = torch.randn(n, generator=generator) * 0.3
    proximal = torch.randn(n, generator=generator) * 0.3
    behaviour = proximal + torch.randn(n, generator=generator) * 0.5
    adv = torch.randn(n, generator=generator)
    mask = (torch.rand(n, generator=generator) > 0.2).float()  # the losses are given the trained tokens only
    keep = mask.bool()
    weights, stats = off_policy_weights(proximal[keep], behaviour[keep], mode=mode, cap=cap)
    loss, _ = ppo_clip_loss(new[keep], proximal[keep], adv[keep], int(mask.sum()), clip_low=clip_low,
                            clip_high=clip_high, weights=weights)
    total, corrected = 0.0, 0
    new, proximal, behaviour, adv = new.tolist(), proximal.tolist(), behaviour.tolist(), adv.tolist()
    for t in range(n):
        if not mask[t]:
            continue
        rho = math.exp(proximal[t] - behaviour[t])
        if mode == "tis":
            weight, corrected = min(rho, cap), corrected + (rho > cap)
        else:
            weight = 1.0 if 1 / cap <= rho <= cap else 0.0
            corrected += weight == 0.0
        ratio = math.exp(new[t] - proximal[t])
        total += weight * min(ratio * adv[t], min(max(ratio, 1 - clip_low), 1 + clip_high) * adv[t])
    assert loss.item() == pytest.approx(-total / int(mask.sum()), rel=1e-5)
    assert stats.corrected == corrected and 0 < corrected < mask.sum()
