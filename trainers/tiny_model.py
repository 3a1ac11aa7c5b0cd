"""The embedded tiny policies: 0.5M-parameter Llamas with the word-level vocabulary of one env each.

SmolLM2-135M is far too slow to RL-train on a 2-core CPU in ten minutes, so the
quickstart trains one of these instead: a real `LlamaForCausalLM` built from a
`LlamaConfig` (random init, fixed seed) and a real `tokenizers` word-level
tokenizer (`envgym.models.word_level_tokenizer`) whose pre-tokenizer keeps
words of two or more letters whole and splits single map characters (`#`,
`.`, `A`, `G`) and commas into tokens of their own. `tiny-maze` reads maze
maps and the maze's local view; `tiny-guess` reads guess-the-number (the
numbers 0-100 are words); `tiny-questions` reads twenty questions (every
attribute value is a word). The chat template is ChatML without the system
message: the model cannot read English, so the env's instructions would only
cost tokens. Both save and load with `save_pretrained` / `from_pretrained`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def _twenty_questions_words() -> tuple[str, ...]:
    """Every attribute value, name and "name:" twenty questions can show, read from the registered env."""
    import envgym

    table = envgym.make("games/TwentyQuestions-v0").unwrapped.attribute_table
    return (*(value for values in table.values() for value in values), *table, *(f"{name}:" for name in table))


#: The words of each tiny model: a tuple, or a function that reads them from the env's registered code.
VOCABULARIES = {
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


def tiny_tokenizer(name: str = "tiny-maze") -> PreTrainedTokenizerBase:
    """The word-level tokenizer of tiny model `name` (a key of VOCABULARIES)."""
    from tokenizers import Regex, decoders, pre_tokenizers

    from envgym.models import word_level_tokenizer

    words = VOCABULARIES[name]
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


def tiny_policy_model(name: str = "tiny-maze", seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Tiny model `name`, random-init from `seed`: 2 layers, width 128, 4 heads."""
    from envgym.models import tiny_model

    tokenizer = tiny_tokenizer(name)
    # eager attention: on CPU, SDPA forward+backward at this width is ~8x slower
    model = tiny_model(tokenizer, hidden_size=128, num_layers=2, num_heads=4, max_positions=4096, seed=seed,
                       attn_implementation="eager")
    return model, tokenizer
