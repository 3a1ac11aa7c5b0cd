"""Tool schemas (OpenAI function format) and parsing of tool calls from model text.

    python = Tool("python", "Run Python code and see its output.",
                  {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]},
                  run_python)
    tools = ToolSet([python], code_tool="python")
    for call in tools.parse(model_text):        # ToolCall or ToolCallError, in text order
        observation = tools.call(call)          # str: the tool's output, or what was wrong and a valid example

Recognised call formats (the ones open models emit):
- Hermes / Qwen: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
  (a missing closing tag at the end of the text is forgiven);
- Mistral: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``;
- a fenced ```` ```python ... ``` ```` block, read as a call of `code_tool`
  with ``{"code": ...}`` when the set has one.
``arguments`` may also be spelled ``parameters`` (Llama 3.1) or be a JSON
string (OpenAI). Nothing here raises on model text: every problem becomes a
`ToolCallError` whose message says what was wrong and shows a valid call.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema

_HERMES = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_MISTRAL = re.compile(r"\[TOOL_CALLS\]\s*(\[.*?\])(?=\s*(?:\[TOOL_CALLS\]|</s>|\Z))", re.DOTALL)
_FENCED = re.compile(r"```(?:python|py)[ \t]*\n(.*?)```", re.DOTALL)
_PLACEHOLDER = {"string": "...", "integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {}}


@dataclass(frozen=True)
class Tool:
    """A callable an agent may use: `function(**arguments)` returns the observation text.

    `parameters` is a JSON schema of type "object" (properties, required, types).
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    function: Callable[..., str] = field(compare=False, repr=False)

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}", self.name):
            raise ValueError(f"tool name {self.name!r} must be 1-64 letters, digits, _ or -, starting with a letter")
        if self.parameters.get("type") != "object":
            raise ValueError(f"parameters of tool {self.name!r} must be a JSON schema with \"type\": \"object\"")
        jsonschema.Draft202012Validator.check_schema(self.parameters)
        strict = {"additionalProperties": False, **self.parameters}  # unknown arguments are errors unless allowed
        object.__setattr__(self, "_validator", jsonschema.Draft202012Validator(strict))

    def problems(self, arguments: Mapping[str, Any]) -> list[str]:
        """What is wrong with `arguments` for this tool (empty when they fit the schema)."""
        errors = sorted(self._validator.iter_errors(arguments), key=lambda e: (list(e.absolute_path), e.message))
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" if e.absolute_path else e.message
                for e in errors]

    def schema(self) -> dict[str, Any]:
        """The OpenAI function-calling schema (what chat templates render as the tool list)."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": dict(self.parameters)}}

    def example(self) -> str:
        """A valid call of this tool in the Hermes format, with placeholder values for required arguments."""
        properties = self.parameters.get("properties", {})
        arguments = {}
        for name in self.parameters.get("required", []):
            spec = properties.get(name, {})
            arguments[name] = spec["enum"][0] if "enum" in spec else _PLACEHOLDER.get(spec.get("type"), "...")
        return f'<tool_call>{json.dumps({"name": self.name, "arguments": arguments})}</tool_call>'


@dataclass(frozen=True)
class ToolCall:
    """A well-formed call: `arguments` satisfy the tool's schema. `text` is the span it was parsed from."""

    name: str
    arguments: dict[str, Any]
    text: str = ""


@dataclass(frozen=True)
class ToolCallError:
    """A call that could not be used; `message` says what was wrong and what a valid call looks like."""

    message: str
    text: str = ""


class ToolSet:
    """The tools of one env: their schemas, parsing of calls from model text, and execution."""

    def __init__(self, tools: Iterable[Tool], code_tool: str | None = None):
        self.tools = {t.name: t for t in tools}
        if not self.tools:
            raise ValueError("a ToolSet needs at least one tool")
        if code_tool is not None and code_tool not in self.tools:
            raise ValueError(f"code_tool {code_tool!r} is not one of the tools {sorted(self.tools)}")
        self.code_tool = code_tool

    def schemas(self) -> list[dict[str, Any]]:
        """OpenAI-format schemas of all tools, for `info["tools"]` and chat templates."""
        return [t.schema() for t in self.tools.values()]

    def describe(self) -> str:
        """One line per tool with a valid example call, for instructions."""
        return "\n".join(f"- {t.name}: {t.description} Example: {t.example()}" for t in self.tools.values())

    def parse(self, text: str) -> list[ToolCall | ToolCallError]:
        """Every tool call in `text`, in order of appearance; empty when there is none."""
        found: list[tuple[int, ToolCall | ToolCallError]] = []
        for match in _HERMES.finditer(text):
            found.append((match.start(), self._from_json(match.group(1), match.group(0))))
        for match in _MISTRAL.finditer(text):
            found.extend((match.start(), c) for c in self._from_json_list(match.group(1), match.group(0)))
        if self.code_tool is not None:
            for match in _FENCED.finditer(text):
                if not any(start <= match.start() < start + len(c.text) for start, c in found):
                    found.append((match.start(), self.check(self.code_tool, {"code": match.group(1)}, match.group(0))))
        return [call for _, call in sorted(found, key=lambda item: item[0])]

    def check(self, name: Any, arguments: Any, text: str = "") -> ToolCall | ToolCallError:
        """A `ToolCall` if `name` is a known tool and `arguments` fit its schema, else a `ToolCallError`."""
        if not isinstance(name, str) or name not in self.tools:
            close = difflib.get_close_matches(str(name), self.tools, n=1)
            nearest = self.tools[close[0]] if close else next(iter(self.tools.values()))
            return ToolCallError(f"unknown tool {name!r}; the tools are: {', '.join(sorted(self.tools))}. "
                                 f"A valid call looks like: {nearest.example()}", text)
        tool = self.tools[name]
        if isinstance(arguments, str):  # OpenAI sends arguments as a JSON string
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as exc:
                return ToolCallError(f"the arguments of {name!r} are not valid JSON ({exc.msg} at character "
                                     f"{exc.pos}). A valid call looks like: {tool.example()}", text)
        if not isinstance(arguments, dict):
            return ToolCallError(f"the arguments of {name!r} must be a JSON object, got {type(arguments).__name__}. "
                                 f"A valid call looks like: {tool.example()}", text)
        problems = tool.problems(arguments)
        if problems:
            said = "; ".join(problems[:3])
            return ToolCallError(f"bad arguments for {name!r}: {said}. A valid call looks like: {tool.example()}",
                                 text)
        return ToolCall(name, arguments, text)

    def call(self, call: ToolCall | ToolCallError) -> str:
        """Run a checked call and return its observation; errors (the call's or the tool's) become text."""
        if isinstance(call, ToolCallError):
            return f"Tool call error: {call.message}"
        try:
            return str(self.tools[call.name].function(**call.arguments))
        except Exception as exc:  # a tool failing on odd input is the agent's observation, not a crash
            return f"Tool {call.name!r} failed: {type(exc).__name__}: {exc}"

    def _from_json(self, body: str, text: str) -> ToolCall | ToolCallError:
        try:
            payload = json.loads(body)
        except json.JSONDecodeError as exc:
            example = next(iter(self.tools.values())).example()
            return ToolCallError(f"the tool call is not valid JSON ({exc.msg} at character {exc.pos}). "
                                 f"A valid call looks like: {example}", text)
        return self._from_payload(payload, text)

    def _from_json_list(self, body: str, text: str) -> list[ToolCall | ToolCallError]:
        try:
            payload = json.loads(body)
        except json.JSONDecodeError:
            return [self._from_json(body, text)]
        return [self._from_payload(p, text) for p in payload] if isinstance(payload, list) else [
            self._from_payload(payload, text)]

    def _from_payload(self, payload: Any, text: str) -> ToolCall | ToolCallError:
        if not isinstance(payload, dict) or "name" not in payload:
            example = next(iter(self.tools.values())).example()
            return ToolCallError(f'a tool call must be a JSON object with "name" and "arguments". '
                                 f"A valid call looks like: {example}", text)
        arguments = payload.get("arguments", payload.get("parameters", {}))
        return self.check(payload["name"], arguments, text)

