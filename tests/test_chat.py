"""Chat rendering: incremental full-history rows equal a fresh rendering; rewriting templates fall back."""

import re

import pytest

from envgym.chat import EpisodeChat, check_tools_rendered, encode, render
from envgym.models import CHATML_TEMPLATE, word_level_tokenizer

WORDS = ["you", "see", "a", "door", "open", "it", "north", "the", "is", "locked", "<", ">", "/", "think",
         "maybe", "go", "rules", "play", "well", "SmolLM", "default", "prompt"]

# Like Qwen3: reasoning in <think>...</think> is dropped from assistant messages before the last user message.
THINK_DROPPING_TEMPLATE = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for m in messages %}{% if m['role'] == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor -%}"
    "{%- for m in messages -%}{%- set content = m['content'] -%}"
    "{%- if m['role'] == 'assistant' and loop.index0 < ns.last_user and '</think>' in content -%}"
    "{%- set content = content.split('</think>')[-1] -%}{%- endif -%}"
    "{{ '<|im_start|>' + m['role'] + '\n' + content + '<|im_end|>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif -%}"
)
# Like SmolLM2: a default system prompt when the chat has none.
DEFAULT_SYSTEM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nSmolLM default prompt<|im_end|>\n' }}{% endif %}" + CHATML_TEMPLATE[len(
        "{% for message in messages %}"):]
)

ACTIONS = ["open the door", "go north", "<think>maybe north</think>go north", "open it"]
OBSERVATIONS = ["you see a door", "the door is locked", "you see a door", "it is open", "you see the door"]


def play(chat, tokenizer, cut_off=()):
    """Roll a scripted episode through `chat`; returns the token rows it built."""
    rows = []
    ids, new_row = chat.start(OBSERVATIONS[0])
    rows.append(list(ids))
    for t, (action, obs) in enumerate(zip(ACTIONS, OBSERVATIONS[1:])):
        sampled = encode(tokenizer, action) + ([] if t in cut_off else [tokenizer.eos_token_id])
        rows[-1] += sampled
        ids, new_row = chat.advance(sampled, action, obs)
        if new_row:
            rows.append(list(ids))
        else:
            rows[-1] += ids
    return rows


@pytest.mark.parametrize("template,instructions", [(CHATML_TEMPLATE, "play well"), (DEFAULT_SYSTEM_TEMPLATE, ""),
                                                   (DEFAULT_SYSTEM_TEMPLATE, "rules")])
def test_incremental_full_history_equals_fresh_rendering(template, instructions):
    tokenizer = word_level_tokenizer(WORDS, chat_template=template)
    chat = EpisodeChat(tokenizer, instructions)
    rows = play(chat, tokenizer)
    assert len(rows) == 1 and not chat.rewrote_history
    expected = encode(tokenizer, render(tokenizer, chat.messages, True))
    assert rows[0] == expected
    assert tokenizer.decode(rows[0]).count("default prompt") == (0 if instructions else 1)


def test_cut_off_action_gets_closed_by_the_template():
    tokenizer = word_level_tokenizer(WORDS)
    chat = EpisodeChat(tokenizer, "rules")
    rows = play(chat, tokenizer, cut_off={1})
    assert rows == [encode(tokenizer, render(tokenizer, chat.messages, True))]


def test_template_that_drops_reasoning_falls_back_to_one_row_per_turn():
    tokenizer = word_level_tokenizer(WORDS, chat_template=THINK_DROPPING_TEMPLATE)
    chat = EpisodeChat(tokenizer, "rules")
    rows = play(chat, tokenizer)
    assert chat.rewrote_history
    # turns 0-2 share a row; after the <think> action of turn 2, turns 3 and 4 get fresh rows
    assert len(rows) == 3
    assert rows[-1] == encode(tokenizer, render(tokenizer, chat.messages, True))
    assert "maybe" not in tokenizer.decode(rows[-1])


def test_window_keeps_the_last_k_turns():
    tokenizer = word_level_tokenizer(WORDS)
    chat = EpisodeChat(tokenizer, "rules", context="window", window=1)
    rows = play(chat, tokenizer)
    assert len(rows) == len(ACTIONS) + 1
    last = tokenizer.decode(rows[-1])
    assert "open it" in last and "go north" not in last and "rules" in last


@pytest.mark.parametrize("instructions", ["rules", ""])
def test_text_policies_get_the_same_window_as_token_policies(instructions):
    tokenizer = word_level_tokenizer(WORDS)
    text_chat = EpisodeChat(None, instructions, context="window", window=1)
    token_chat = EpisodeChat(tokenizer, instructions, context="window", window=1)
    full_chat = EpisodeChat(None, instructions)
    for chat in (text_chat, token_chat, full_chat):
        chat.start(OBSERVATIONS[0])
    system = [{"role": "system", "content": instructions}] if instructions else []
    for previous, action, obs in zip(OBSERVATIONS, ACTIONS, OBSERVATIONS[1:]):
        ids, _ = token_chat.advance(encode(tokenizer, action) + [tokenizer.eos_token_id], action, obs)
        for chat in (text_chat, full_chat):
            assert chat.advance([], action, obs) == ([], False)
        window = text_chat.prompt_messages()
        assert tokenizer.decode(ids) == render(tokenizer, window, True)  # the messages the token row renders
        assert window == [*system, {"role": "user", "content": previous}, {"role": "assistant", "content": action},
                          {"role": "user", "content": obs}]  # the last turn before the current observation
    assert full_chat.prompt_messages() == full_chat.messages and len(full_chat.messages) == len(system) + 9


@pytest.mark.slow  # the first call converts the GGUF (~20 s); later ones load the cached tokenizer
def test_smollm2_tokenizer_from_gguf_renders_incrementally():
    from envgym.models import load_tokenizer

    tokenizer = load_tokenizer("default")
    chat = EpisodeChat(tokenizer, "")  # SmolLM2's template then adds its default system prompt
    rows = play(chat, tokenizer)
    assert len(rows) == 1 and rows[0] == encode(tokenizer, render(tokenizer, chat.messages, True))


def test_missing_chat_template_is_a_clear_error():
    tokenizer = word_level_tokenizer(WORDS)
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="chat_template"):
        EpisodeChat(tokenizer, "rules").start("hi")


def test_special_tokens_sampled_inside_an_action_stay_verbatim_without_fallback():
    tokenizer = word_level_tokenizer(WORDS)
    chat = EpisodeChat(tokenizer, "rules")
    first, _ = chat.start("you see a door")
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    sampled = encode(tokenizer, "open") + [start] + encode(tokenizer, " it") + [tokenizer.eos_token_id]
    text = tokenizer.decode(sampled, skip_special_tokens=True)
    ids, new_row = chat.advance(sampled, text, "it is open")
    assert not new_row and not chat.rewrote_history
    row = first + sampled + ids
    assert tokenizer.decode(row).endswith("open<|im_start|> it<|im_end|>\n<|im_start|>user\nit is open<|im_end|>\n"
                                          "<|im_start|>assistant\n")


# Like Qwen2.5 and Hermes: the tool schemas are listed in the system message when the chat has tools.
TOOLS_TEMPLATE = (
    "{%- if tools %}{{ '<|im_start|>system\n' }}{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    "{% endif %}{{ '\n\n# Tools\n<tools>' }}{% for tool in tools %}{{ '\n' + (tool | tojson) }}{% endfor %}"
    "{{ '\n</tools><|im_end|>\n' }}{% endif -%}"
    "{%- for m in messages %}{% if not (tools and m['role'] == 'system') %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor -%}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif -%}"
)
TOOL_WORDS = ["#", "Tools", "tools", "type", "function", "name", "description", "parameters", "properties",
              "required", "object", "string", "code", "python", "run", "{", "}", ":", ",", '"', "[", "]"]
TOOLS = [{"type": "function", "function": {"name": "python", "description": "run the code",
                                           "parameters": {"type": "object", "properties": {"code": {"type": "string"}},
                                                          "required": ["code"]}}}]


@pytest.mark.parametrize("context", ["full", "window"])
def test_tools_reach_the_template_and_rows_stay_token_faithful(context):
    tokenizer = word_level_tokenizer(WORDS + TOOL_WORDS, chat_template=TOOLS_TEMPLATE)
    chat = EpisodeChat(tokenizer, "play well", context=context, window=1, tools=TOOLS)
    rows = play(chat, tokenizer)
    first = tokenizer.decode(rows[0])
    assert first.startswith("<|im_start|>system\nplay well\n\n# Tools\n<tools>\n{") and '"name": "python"' in first
    if context == "full":
        assert len(rows) == 1 and not chat.rewrote_history
    fresh = render(tokenizer, chat.messages if context == "full" else [chat.messages[0], *chat.messages[-3:]], True,
                   TOOLS)
    assert rows[-1] == encode(tokenizer, fresh)
    without = EpisodeChat(tokenizer, "play well")
    assert "# Tools" not in tokenizer.decode(without.start(OBSERVATIONS[0])[0])


def test_a_tool_env_rollout_shows_its_tools_to_the_model():
    from envgym.models import tiny_model
    from envgym.policies import HFPolicy, SamplingParams
    from envgym.rollout import collect_groups

    tokenizer = word_level_tokenizer(WORDS + TOOL_WORDS, chat_template=TOOLS_TEMPLATE)
    result = collect_groups("tools/MathPython-v0", HFPolicy(tiny_model(tokenizer), tokenizer), n_groups=1,
                            group_size=1, split="test", max_turns=1, sampling=SamplingParams(max_new_tokens=2))
    prompt = tokenizer.decode(result.groups[0].episodes[0].turns[0].obs_ids)
    assert "# Tools\n<tools>\n{" in prompt and '"name": "python"' in prompt


SYSTEM_DROPPING_TEMPLATE = ("{% for m in messages %}{% if m['role'] != 'system' %}{{ m['role'] + ': ' + m['content'] }}"
                            "{% endif %}{% endfor %}")


@pytest.mark.parametrize("template, instructions, problem", [
    (TOOLS_TEMPLATE, "play well", None),
    (CHATML_TEMPLATE, "play well, run code with python", None),  # drops `tools`, but the instructions name them
    (CHATML_TEMPLATE, "play well", "leaves the tools of tools/Door-v0 (python) out of the prompt: "),
    (SYSTEM_DROPPING_TEMPLATE, "run code with python", "leaves the tools of tools/Door-v0 (python) out"),
    ("{{ raise_exception('tools are not supported') if tools }}", "play well",
     "cannot render the tools of tools/Door-v0: TemplateError: tools are not supported"),
])
def test_a_template_must_show_the_tools_to_the_model(template, instructions, problem):
    tokenizer = word_level_tokenizer(WORDS, chat_template=template)
    observation = "you see a door, python opens it"  # naming a tool here does not show the model the tool
    if problem is None:
        check_tools_rendered(tokenizer, instructions, observation, TOOLS, model="tiny", env_id="tools/Door-v0")
        return
    with pytest.raises(ValueError, match="^" + re.escape(f"the chat template of model 'tiny' {problem}")):
        check_tools_rendered(tokenizer, instructions, observation, TOOLS, model="tiny", env_id="tools/Door-v0")
