"""HFPolicy's episode KV caches: the same tokens and logprobs as a fresh prefill, bounded memory, the context window."""

import pytest
import torch

from envgym.models import tiny_model, word_level_tokenizer
from envgym.policies import CachingTokenPolicy, HFPolicy, SamplingParams

WORDS = ["a", "b", "c", "d", "e", "f", "g"]
SAMPLINGS = {"greedy": SamplingParams(temperature=0, max_new_tokens=6),
             "sampled": SamplingParams(temperature=1.0, max_new_tokens=6),
             "top-p": SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=6)}


@pytest.fixture(scope="module")
def tokenizer():
    return word_level_tokenizer(WORDS)


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer, num_layers=3)


def first_prompts(tokenizer, lengths=(5, 9, 14), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(len(tokenizer) - len(WORDS), len(tokenizer), (n,), generator=generator).tolist()
            for n in lengths]


def play(policy, prompts, params, turns, keys=None):
    """Multi-turn: each turn's prompt is the last prompt + its completion + an observation; seeded per turn."""
    history = []
    for turn in range(turns):
        torch.manual_seed(turn)
        completions = (policy.generate(prompts, params) if keys is None else
                       policy.generate(prompts, params, cache_keys=keys))
        history.append(completions)
        observation = [[8, 9, 10], [8], [9, 10]]
        prompts = [p + c.token_ids + observation[i % 3] for i, (p, c) in enumerate(zip(prompts, completions))]
    return history


def assert_same(cached, fresh):
    for cached_turn, fresh_turn in zip(cached, fresh, strict=True):
        for c, f in zip(cached_turn, fresh_turn, strict=True):
            assert c.token_ids == f.token_ids and c.finish_reason == f.finish_reason
            assert c.logprobs == pytest.approx(f.logprobs, abs=1e-4)


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_cached_turns_sample_what_a_fresh_prefill_samples(model, tokenizer, sampling):
    params = SAMPLINGS[sampling]
    cached = HFPolicy(model, tokenizer)
    assert isinstance(cached, CachingTokenPolicy)
    with_cache = play(cached, first_prompts(tokenizer), params, turns=5, keys=["x", "y", "z"])
    fresh = play(HFPolicy(model, tokenizer, kv_reuse=False), first_prompts(tokenizer), params, turns=5)
    assert_same(with_cache, fresh)
    assert all(c.cached_tokens == 0 for c in with_cache[0])
    assert all(c.cached_tokens > 0 for turn in with_cache[1:] for c in turn)  # the cache did serve the later turns
    cached.release(["x", "y", "z"])
    assert len(cached.cache) == 0 and cached.cache.tokens == 0


@pytest.mark.slow  # SmolLM2: ~30 s here
def test_smollm2_cached_turns_match_fresh_prefill():
    from envgym.chat import EpisodeChat, encode
    from envgym.models import load_model

    model, tokenizer = load_model("default")
    chats = [EpisodeChat(tokenizer, "Reply with one word.") for _ in range(2)]
    prompts = [chat.start(obs)[0] for chat, obs in zip(chats, ["Name a colour.", "Name an animal that flies."])]
    reply = encode(tokenizer, "<|im_end|>\n<|im_start|>user\nAnother one.<|im_end|>\n<|im_start|>assistant\n")
    cached, fresh = HFPolicy(model, tokenizer), HFPolicy(model, tokenizer, kv_reuse=False)
    for params in (SamplingParams(temperature=0, max_new_tokens=4), SamplingParams(temperature=1, max_new_tokens=4)):
        context = [list(p) for p in prompts]
        for turn in range(2):
            torch.manual_seed(turn)
            a = cached.generate(context, params, cache_keys=[0, 1])
            torch.manual_seed(turn)
            assert_same([a], [fresh.generate(context, params)])
            assert all(c.cached_tokens == (0 if turn == 0 else len(ctx) - 1 - len(reply))
                       for c, ctx in zip(a, context))
            context = [ctx + c.token_ids + reply for ctx, c in zip(context, a)]
        cached.release([0, 1])


def test_a_new_row_reuses_only_the_common_prefix(model, tokenizer):
    """A window-mode row or a template that rewrote history shares only its start (the system prompt)."""
    policy = HFPolicy(model, tokenizer)
    params = SAMPLINGS["greedy"]
    system = [8, 9, 10, 11, 12, 8, 9]
    policy.generate([system + [13, 13]], params, cache_keys=["e"])
    rewritten = system + [10, 10, 10, 12]
    again = policy.generate([rewritten], params, cache_keys=["e"])
    assert again[0].cached_tokens == len(system)
    assert_same([again], [HFPolicy(model, tokenizer, kv_reuse=False).generate([rewritten], params)])


def test_over_budget_caches_are_evicted_and_those_episodes_prefill_afresh(model, tokenizer):
    params = SAMPLINGS["greedy"]
    prompts = first_prompts(tokenizer)
    tight = HFPolicy(model, tokenizer, cache_budget_tokens=40)  # holds one or two episodes, never all three
    history = play(tight, prompts, params, turns=4, keys=["x", "y", "z"])
    assert_same(history, play(HFPolicy(model, tokenizer, kv_reuse=False), prompts, params, turns=4))
    assert tight.cache.evictions > 0 and tight.cache.tokens <= 40
    assert any(c.cached_tokens == 0 for turn in history[1:] for c in turn)


def test_a_budget_smaller_than_one_prompt_is_an_error_at_the_first_call(model, tokenizer):
    policy = HFPolicy(model, tokenizer, cache_budget_tokens=12)
    with pytest.raises(ValueError, match=r"cache_budget_tokens=12 cannot hold one episode.*>= 20"):
        policy.generate(first_prompts(tokenizer), SAMPLINGS["greedy"], cache_keys=["x", "y", "z"])
    with pytest.raises(ValueError, match="budget must be >= 1"):
        HFPolicy(model, tokenizer, cache_budget_tokens=0)
    with pytest.raises(ValueError, match="distinct"):
        HFPolicy(model, tokenizer).generate([[8], [9]], SAMPLINGS["greedy"], cache_keys=["x", "x"])


@pytest.mark.parametrize("change", ["weights_changed", "in-place update", "optimizer step"])
def test_caches_computed_with_old_weights_are_never_used(tokenizer, change):
    model = tiny_model(tokenizer, num_layers=2, seed=3)
    policy, params = HFPolicy(model, tokenizer), SAMPLINGS["greedy"]
    first = policy.generate([[8, 9, 10, 11]], params, cache_keys=["e"])[0]
    if change == "weights_changed":
        with torch.no_grad():
            model.lm_head.weight.data = model.lm_head.weight.data * 1.5  # not an in-place op: torch cannot see it
        policy.weights_changed()
    elif change == "in-place update":
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(1.5)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
        model(input_ids=torch.tensor([[8, 9, 10]])).logits.sum().backward()
        optimizer.step()
    prompt = [8, 9, 10, 11, *first.token_ids, 12]
    after = policy.generate([prompt], params, cache_keys=["e"])[0]
    assert after.cached_tokens == 0
    assert_same([[after]], [HFPolicy(model, tokenizer, kv_reuse=False).generate([prompt], params)])


def test_prompts_of_different_lengths_run_in_separate_batches(model, tokenizer):
    policy = HFPolicy(model, tokenizer)
    batches = []
    handle = model.register_forward_pre_hook(lambda module, args, kwargs: batches.append(kwargs["input_ids"].shape),
                                             with_kwargs=True)
    try:
        short, long = [[8, 9]] * 3, [[8] * 300] * 2
        params = SamplingParams(temperature=0, max_new_tokens=2)
        mixed = policy.generate([*short, *long], params)
    finally:
        handle.remove()
    prefills = [shape for shape in batches if shape[1] > 1]
    assert sorted(prefills) == [(2, 300), (3, 2)]  # never 5 rows padded to 300 tokens
    assert_same([mixed], [HFPolicy(model, tokenizer, kv_reuse=False).generate([*short, *long], params)])


def test_completions_stop_at_the_context_window_instead_of_failing(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    # GPT-2 learns absolute positions: past n_positions its embedding lookup raises IndexError
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=24, n_embd=32, n_layer=2, n_head=2,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config).eval()
    with pytest.raises(IndexError):
        model(input_ids=torch.full((1, 25), 8))
    params = SamplingParams(temperature=0, max_new_tokens=6)
    suppress_eos = torch.zeros(len(tokenizer))
    suppress_eos[tokenizer.eos_token_id] = -1e4
    handle = model.lm_head.register_forward_hook(lambda module, inputs, output: output + suppress_eos)
    try:
        for policy in (HFPolicy(model, tokenizer), HFPolicy(model, tokenizer, kv_reuse=False)):
            room, full, overfull = policy.generate([[8] * 20, [8] * 24, [8] * 30], params)
            assert len(room.token_ids) == 4 and room.finish_reason == "context"
            assert full.token_ids == overfull.token_ids == []
            assert full.finish_reason == overfull.finish_reason == "context"
            with pytest.raises(ValueError, match="longer than the model's context window of 24"):
                policy.score([[8] * 20], [[8] * 5])
    finally:
        handle.remove()
