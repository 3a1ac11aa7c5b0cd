"""Chat rendering: an episode as chat messages, tokenised through the model's own chat template.

The env's instructions are the system message, observations are user (or
tool) messages and actions are assistant messages. Two context modes:

- ``"full"``: the whole history in one token row, built incrementally. Each
  turn appends only the new tokens: the template's rendering of the new
  observation plus the generation prompt, found as the text difference between
  templating a short base conversation with and without the new messages (so a
  default system prompt or a date line cancels out), and the cost per turn
  does not grow with the history. Sampled tokens are kept verbatim, never
  re-tokenised. Each turn checks that the template renders the previous prompt
  plus the sampled text as a prefix of the new prompt; a template that rewrites
  history (e.g. Qwen3 dropping earlier `<think>` reasoning) fails the check and
  the episode falls back to one row per turn, each a fresh rendering of the
  whole chat (`EpisodeChat.rewrote_history` is then True).
- ``"window"``: one row per turn holding the system message and the last
  `window` turns before the current observation (the verl-agent style).

Text policies (an endpoint, the baselines) get `prompt_messages()`: the same
messages the token layout renders, so the window bounds their prompts too.
"""

from __future__ import annotations

import copy

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from envgym.policies.base import Message

ContextMode = Literal["full", "window"]


def render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], generation_prompt: bool,
           tools: Sequence[Mapping[str, Any]] | None = None) -> str:
    """The chat template's text for `messages` (with the assistant generation prompt if asked).

    `tools` (OpenAI-format function schemas, a tool env's `info["tools"]`) go to the
    template's `tools` variable; templates that render tools (Qwen2.5, Hermes, Llama 3.x)
    show them to the model, others ignore them.
    """
    if tokenizer.chat_template is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no chat_template; set tokenizer.chat_template "
                         "(a Jinja template, e.g. envgym.models.CHATML_TEMPLATE) before rolling out")
    return tokenizer.apply_chat_template(list(messages), tools=list(tools) if tools else None, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of rendered template text (the template writes any BOS itself, so none is added)."""
    return tokenizer.encode(text, add_special_tokens=False)


class EpisodeChat:
    """The chat of one episode and the tokens each turn adds to the model's context.

    Call `start(observation)` once, then after each sampled action
    `advance(action_ids, action_text, observation)`. Both return
    `(obs_ids, starts_row)`: the tokens to append before the next generation,
    and whether they begin a new token row (then `obs_ids` is a whole prompt).
    With `tokenizer=None` (text policies) it only keeps `messages` and returns no ids;
    `prompt_messages()` is then what the policy is sent.
    `tools` are rendered by the template in every prompt (see `render`).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase | None, instructions: str, *, context: ContextMode = "full",
                 window: int = 4, observation_role: str = "user", tools: Sequence[Mapping[str, Any]] | None = None):
        if context not in ("full", "window"):
            raise ValueError(f"context must be 'full' or 'window', got {context!r}")
        if context == "window" and window < 0:
            raise ValueError(f"window must be >= 0 turns, got {window}")
        self.tokenizer = tokenizer
        self.context, self.window, self.observation_role = context, int(window), observation_role
        self.tools = list(tools) if tools else None
        self.messages: list[dict[str, str]] = [{"role": "system", "content": instructions}] if instructions else []
        self._system = len(self.messages)
        self._base: list[dict[str, str]] = []
        self._base_prompt = ""
        self.rewrote_history = False
        self._special_ids = frozenset(tokenizer.all_special_ids) if tokenizer is not None else frozenset()

    def start(self, observation: str) -> tuple[list[int], bool]:
        """Tokens of the first prompt: system message, first observation, generation prompt."""
        if len(self.messages) > self._system:
            raise RuntimeError("start() was called twice on one EpisodeChat; make a new one per episode")
        self.messages.append({"role": self.observation_role, "content": observation})
        if self.tokenizer is None:
            return [], True
        self._base = list(self.messages)
        self._base_prompt = render(self.tokenizer, self._base, True, self.tools)
        return encode(self.tokenizer, self._base_prompt), True

    def advance(self, action_ids: Sequence[int], action_text: str, observation: str) -> tuple[list[int], bool]:
        """Record the sampled action and the env's reply; the tokens that extend the context."""
        action = {"role": "assistant", "content": action_text}
        reply = {"role": self.observation_role, "content": observation}
        self.messages += [action, reply]
        if self.tokenizer is None:
            return [], False
        if self.context == "window":
            return self._whole_prompt(), True
        if not self.rewrote_history:
            delta = self._appended_text(action_ids, action, reply)
            if delta is not None:
                return encode(self.tokenizer, delta), False
            self.rewrote_history = True
        return self._whole_prompt(), True

    def _appended_text(self, action_ids: Sequence[int], action: Message, reply: Message) -> str | None:
        """The text the template adds after the sampled tokens, or None if it renders history differently.

        The template must render the action's text right after the previous
        prompt, and the new prompt must extend that rendering. What the template
        writes after the text closes the assistant turn (ChatML: `<|im_end|>` and
        a newline); if the sampled ids already end with that special token, only
        the rest is appended (a cut-off action gets the whole closing).
        """
        with_action = render(self.tokenizer, [*self._base, action], False, self.tools)
        with_reply = render(self.tokenizer, [*self._base, action, reply], True, self.tools)
        opening = self._base_prompt + action["content"]
        if not (with_action.startswith(opening) and with_reply.startswith(with_action)):
            return None
        closing = with_action[len(opening):]
        if action_ids and action_ids[-1] in self._special_ids:
            sampled_end = self.tokenizer.decode([action_ids[-1]], skip_special_tokens=False)
            if closing.startswith(sampled_end):
                closing = closing[len(sampled_end):]
        return closing + with_reply[len(with_action):]

    def fork(self) -> EpisodeChat:
        """An independent copy for a branch episode: later turns of either leave the other's chat alone."""
        twin = copy.copy(self)
        twin.messages, twin._base = list(self.messages), list(self._base)
        return twin

    def prompt_messages(self) -> list[dict[str, str]]:
        """The messages of the next prompt: the system message, the context turns and the latest observation."""
        history = self.messages[self._system:]
        if self.context == "window":
            history = history[max(0, len(history) - 1 - 2 * self.window):]
        return [*self.messages[:self._system], *history]

    def _whole_prompt(self) -> list[int]:
        """A fresh rendering of `prompt_messages()`."""
        return encode(self.tokenizer, render(self.tokenizer, self.prompt_messages(), True, self.tools))


def check_tools_rendered(tokenizer: PreTrainedTokenizerBase, instructions: str, observation: str,
                         tools: Sequence[Mapping[str, Any]], *, model: str, env_id: str) -> None:
    """Raise ValueError, in one line naming `model` and `env_id`, unless the chat template renders the first
    prompt of an episode (`instructions`, `observation`, `tools` as `EpisodeChat` lays them out) with the name of
    every tool in it outside the observation: a template that fails on tools, or drops both them and the system
    message that describes them, would leave the policy unable to call them."""
    chat = EpisodeChat(None, instructions, tools=tools)
    chat.start(observation)
    try:
        prompt = render(tokenizer, chat.prompt_messages(), True, tools)
    except Exception as exc:  # jinja2's errors, a template's raise_exception(), no template at all
        problem = " ".join(f"{type(exc).__name__}: {exc}".split())
        message = f"the chat template of model {model!r} cannot render the tools of {env_id}: {problem}"
        raise ValueError(message) from None
    missing = [tool["function"]["name"] for tool in tools
               if tool["function"]["name"] not in prompt.replace(observation, "")]
    if missing:
        raise ValueError(f"the chat template of model {model!r} leaves the tools of {env_id} ({', '.join(missing)}) "
                         "out of the prompt: it renders neither `tools` nor the system message describing them; use "
                         "a model whose template renders either (SmolLM2 and Qwen2.5 do)")
