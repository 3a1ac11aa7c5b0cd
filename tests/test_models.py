"""Offline models: the word-level tokenizer, tiny models, and the embedded SmolLM2 (slow)."""

import pytest

from envgym.models import CHATML_TEMPLATE, cache_dir, tiny_model, word_level_tokenizer


def test_word_level_tokenizer_is_lossless_for_known_words():
    tokenizer = word_level_tokenizer(["north", "wall", "#", "."])
    text = "<|im_start|>user\n#.#  north, wall!<|im_end|>\n"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text.replace(",", "<unk>").replace("!", "<unk>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<pad>"
    assert tokenizer.chat_template == CHATML_TEMPLATE


def test_tiny_model_matches_the_tokenizer():
    tokenizer = word_level_tokenizer(["a"])
    model = tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2)
    assert model.config.vocab_size == len(tokenizer) and model.config.eos_token_id == tokenizer.eos_token_id
    assert sum(p.numel() for p in model.parameters()) < 100_000


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ENVGYM_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path


@pytest.mark.slow  # converts the GGUF once (~20 s), then loads from the cache (< 1 s)
def test_default_model_loads_offline_and_generates():
    from envgym.chat import encode, render
    from envgym.models import default_model_dir, load_default_model
    from envgym.policies import HFPolicy, SamplingParams

    model, tokenizer = load_default_model()
    assert (default_model_dir() / "model.safetensors").exists()
    assert model.config.num_hidden_layers == 30 and len(tokenizer) == 49152
    policy = HFPolicy(model, tokenizer)
    prompt = encode(tokenizer, render(tokenizer, [{"role": "user", "content": "What is 2+2?"}], True))
    completion = policy.generate([prompt], SamplingParams(temperature=0, max_new_tokens=6))[0]
    assert len(completion.token_ids) >= 1 and completion.text.strip()
    assert completion.logprobs == pytest.approx(policy.score([prompt], [completion.token_ids])[0], abs=1e-3)
