"""The model loader (tiny models, directories, hub ids offline), the word-level tokenizer, and the embedded SmolLM2
(slow)."""

import pytest
import torch

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
    from envgym.models import default_model_dir, load_model
    from envgym.policies import HFPolicy, SamplingParams

    model, tokenizer = load_model("default")
    assert (default_model_dir() / "model.safetensors").exists()
    assert model.config.num_hidden_layers == 30 and len(tokenizer) == 49152
    policy = HFPolicy(model, tokenizer)
    prompt = encode(tokenizer, render(tokenizer, [{"role": "user", "content": "What is 2+2?"}], True))
    completion = policy.generate([prompt], SamplingParams(temperature=0, max_new_tokens=6))[0]
    assert len(completion.token_ids) >= 1 and completion.text.strip()
    assert completion.logprobs == pytest.approx(policy.score([prompt], [completion.token_ids])[0], abs=1e-3)
    from peft import LoraConfig

    lora, _ = load_model("default", dtype="bfloat16", lora=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
                         tokenizer=tokenizer)
    assert {p.dtype for p in lora.parameters() if not p.requires_grad} == {torch.bfloat16}
    assert 0 < sum(p.numel() for p in lora.parameters() if p.requires_grad) < 1e6


def test_tiny_models_load_with_dtype_seed_and_lora():
    from peft import LoraConfig

    from envgym.models import TINY_MODELS, load_model, load_tokenizer

    model, tokenizer = load_model("tiny-maze", dtype="bfloat16", seed=1)
    assert next(model.parameters()).dtype == torch.bfloat16 and not model.training
    assert model.config.vocab_size == len(tokenizer) == len(load_tokenizer("tiny-maze"))
    same = load_model("tiny-maze", seed=1, tokenizer=tokenizer)[0]
    assert torch.equal(same.model.embed_tokens.weight.to(torch.bfloat16), model.model.embed_tokens.weight)
    lora = load_model("tiny-guess", lora=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))[0]
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert type(lora).__name__ == "PeftModel" and 0 < trainable < sum(p.numel() for p in lora.parameters()) / 10
    assert set(TINY_MODELS) == {"tiny-maze", "tiny-guess", "tiny-questions"}


def test_a_save_pretrained_directory_loads_in_the_dtype_asked(tmp_path):
    from envgym.models import load_model

    model, tokenizer = load_model("tiny-maze")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = load_model(str(tmp_path), dtype="bfloat16")
    assert next(loaded.parameters()).dtype == torch.bfloat16 and not loaded.training
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight.to(torch.bfloat16))
    assert loaded_tokenizer.encode("north , wall") == tokenizer.encode("north , wall")


def _in_hub_cache(cache, repo_id, files_from):
    """Lay `files_from` out as `repo_id`'s snapshot of "main" in a Hugging Face hub cache at `cache`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for path in files_from.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)


def test_a_hub_id_in_the_local_cache_loads_offline(tmp_path, monkeypatch):
    import huggingface_hub

    from envgym.models import load_model

    model, tokenizer = load_model("tiny-guess")
    (tmp_path / "saved").mkdir()
    model.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    _in_hub_cache(tmp_path / "hub", "envgym-tests/tiny-guess", tmp_path / "saved")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub, "model_info", lambda *a, **k: pytest.fail("the hub was asked"))
    loaded = load_model("envgym-tests/tiny-guess")[0]
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_a_hub_id_offline_fails_at_once_in_one_line(tmp_path, monkeypatch):
    import time

    import huggingface_hub

    from envgym.models import HUB_TIMEOUT_S, ModelLoadError, load_model

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # tests/conftest.py
    with pytest.raises(ModelLoadError) as error:
        load_model("Qwen/Qwen2.5-1.5B-Instruct")
    assert str(error.value) == (
        "model 'Qwen/Qwen2.5-1.5B-Instruct': not a local directory, not in the local Hugging Face cache, and the hub "
        "cannot be reached (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set); unset it to download the model, or name "
        "a local directory")

    def no_route(repo_id, timeout):  # what the hub client raises without DNS (it retries downloads, not this)
        assert timeout == HUB_TIMEOUT_S
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "model_info", no_route)
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as error:
        load_model("Qwen/Qwen2.5-1.5B-Instruct")
    assert str(error.value) == (
        "model 'Qwen/Qwen2.5-1.5B-Instruct': not a local directory, not in the local Hugging Face cache, and the hub "
        "cannot be reached (ConnectionError: [Errno -2] Name or service not known); download it where the hub is "
        "reachable (hf download Qwen/Qwen2.5-1.5B-Instruct) or name a local directory")
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("name, kind", [("tiny-maze", "tiny"), ("default", "default"),
                                        ("Qwen/Qwen2.5-1.5B-Instruct", "hub"), ("no/such/dir", None),
                                        ("/no/such/dir", None), ("", None)])
def test_model_kinds(name, kind):
    from envgym.models import ModelNotFound, load_tokenizer, model_kind

    assert model_kind(name) == kind
    if kind is None:
        with pytest.raises(ModelNotFound, match="no such checkpoint directory, tiny model or hub id; expected one of "
                                                "tiny-maze, tiny-guess, tiny-questions, 'default'"):
            load_tokenizer(name)
