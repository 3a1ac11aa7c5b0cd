"""Tool calls in sampled text, per chat-template family, as OpenAI `tool_calls`.

The gateway (`envgym.gateway`) returns a completion's tool calls structured,
the way an OpenAI-compatible server does: the text before the first call is the
message's `content`, each call becomes ``{"id", "type": "function", "function":
{"name", "arguments": JSON string}}``. A parser is chosen per template family (`PARSERS`; the gateway's
`tool_parser`):

- ``hermes`` (Hermes, Qwen2.5/Qwen3, SmolLM2's own format, and envgym's tool envs):
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one object or a
  list of them per tag (SmolLM2 writes a list).

`parse_tool_calls` never raises on model text: text with a call that is not
well-formed (not JSON, no name, arguments not an object, an unclosed tag) is a
`ParsedReply` with `malformed` set and no calls, to be returned as plain text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_HERMES_OPEN = "<tool_call>"
_HERMES_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


@dataclass(frozen=True)
class ParsedReply:
    """A completion read for tool calls: `content` (None when the text held only calls), the calls in
    OpenAI's shape, and `malformed`: what was wrong with a call that could not be read ("" when none)."""

    content: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    malformed: str = ""


def parse_hermes(text: str) -> ParsedReply:
    """Hermes/Qwen calls: every ``<tool_call>JSON</tool_call>`` span, JSON an object or a list of objects."""
    start = text.find(_HERMES_OPEN)
    if start < 0:
        return ParsedReply(text)
    calls: list[dict[str, Any]] = []
    end = start
    for match in _HERMES_CALL.finditer(text, start):
        if text[end:match.start()].strip():  # prose between calls: not a tool-call turn this parser can split
            return ParsedReply(text, malformed="text between tool calls")
        try:
            payload = json.loads(match.group(1))
        except ValueError as exc:
            return ParsedReply(text, malformed=f"a tool call is not valid JSON ({exc})")
        for item in payload if isinstance(payload, list) else [payload]:
            problem = _call_problem(item)
            if problem:
                return ParsedReply(text, malformed=problem)
            arguments = item.get("arguments", item.get("parameters", {}))
            calls.append({"id": "", "type": "function",
                          "function": {"name": item["name"], "arguments": json.dumps(arguments, ensure_ascii=False)}})
        end = match.end()
    if not calls or text[end:].strip():
        return ParsedReply(text, malformed="an unclosed <tool_call> tag" if not calls else "text after the tool calls")
    content = text[:start].strip()
    return ParsedReply(content or None, calls)


def _call_problem(item: Any) -> str:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        return 'a tool call must be a JSON object with a string "name"'
    arguments = item.get("arguments", item.get("parameters", {}))
    if not isinstance(arguments, dict):
        return f'the "arguments" of {item["name"]!r} must be a JSON object'
    return ""


#: Template family -> parser.
PARSERS: dict[str, Callable[[str], ParsedReply]] = {"hermes": parse_hermes}


def parse_tool_calls(text: str, family: str, first_id: int = 0) -> ParsedReply:
    """`text` read by `family`'s parser; calls get ids ``call_<n>`` counting from `first_id`."""
    reply = PARSERS[family](text)
    for n, call in enumerate(reply.tool_calls, first_id):
        call["id"] = f"call_{n}"
    return reply
