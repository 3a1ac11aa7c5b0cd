"""What every policy is: token policies (token in, token out) and text policies (text in, text out)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: One chat message, `{"role": "system" | "user" | "assistant" | "tool", "content": str}`.
Message = Mapping[str, str]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample a completion.

    `temperature == 0` means greedy. `max_new_tokens` bounds the completion;
    a completion that reaches it has finish_reason "length". `stop` strings end
    a completion like the end-of-sequence token does (the stop string is kept).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if isinstance(self.stop, str):
            raise TypeError(f"stop must be a tuple of strings, got the string {self.stop!r}; write ({self.stop!r},)")


@dataclass(frozen=True)
class Completion:
    """One sampled continuation of a prompt.

    `token_ids` are the sampled ids verbatim (the end-of-sequence token
    included when it was sampled); `logprobs[i]` is the log-probability of
    `token_ids[i]` as the policy's docstring defines it; `text` is the decoded
    completion without special tokens. `finish_reason` is "stop" (end of
    sequence or a stop string), "length" (hit `max_new_tokens`) or "context"
    (prompt and completion filled the model's context window; the completion
    may be empty). `cached_tokens` counts the prompt tokens whose keys and
    values came from a cache instead of a prefill.
    """

    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: Literal["stop", "length", "context"]
    cached_tokens: int = 0


@runtime_checkable
class TokenPolicy(Protocol):
    """A policy that reads and writes token ids (hf, vllm). The rollout renders chats with its `tokenizer`."""

    tokenizer: PreTrainedTokenizerBase

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Completion]:
        """One completion per prompt, in order."""
        ...

    def score(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]) -> list[list[float]]:
        """Teacher-forced log-probabilities (temperature 1, no grad) of each continuation token given its prompt."""
        ...


@runtime_checkable
class CachingTokenPolicy(TokenPolicy, Protocol):
    """A token policy that keeps each episode's KV cache between turns (hf).

    The rollout passes one key per episode to `generate` and releases the key
    when the episode ends; whoever updates the weights calls `weights_changed`.
    """

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 cache_keys: Sequence[Hashable] | None = None) -> list[Completion]:
        """As `TokenPolicy.generate`; `cache_keys[i]` names the episode of `prompts[i]`."""
        ...

    def release(self, cache_keys: Iterable[Hashable]) -> None:
        """Drop the caches of episodes that ended."""
        ...

    def weights_changed(self) -> None:
        """Drop every cache: the weights they were computed with are gone."""
        ...


@dataclass(frozen=True)
class TextRequest:
    """What a text policy sees for one active episode.

    `messages` is the chat so far (system instructions, observations as user
    messages, earlier actions as assistant messages); `info` is the env's
    latest info dict; `oracle()` returns `env.unwrapped.oracle_action()`,
    computed where the env lives (in the worker process for a process pool).
    """

    messages: Sequence[Message]
    info: Mapping[str, Any]
    oracle: Callable[[], str]


class PolicyError(RuntimeError):
    """A policy could not produce an action (an endpoint refused, an oracle raised): the episode fails."""


@runtime_checkable
class TextPolicy(Protocol):
    """A policy that answers chats with text (scripted, random, openai). It is not trained."""

    def act(self, requests: Sequence[TextRequest]) -> list[str | PolicyError]:
        """One action per request, in order; a `PolicyError` in place of an action fails that episode."""
        ...


Policy = TokenPolicy | TextPolicy
