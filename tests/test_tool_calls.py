"""Tool schemas and parsing of tool calls from model text, including every way a call can be wrong."""

import json

import pytest

from envgym.tools import Tool, ToolCall, ToolCallError, ToolSet

SEARCH = Tool("search", "Search the corpus.",
              {"type": "object", "properties": {"query": {"type": "string"}, "k": {"type": "integer", "minimum": 1}},
               "required": ["query"]},
              lambda query, k=3: f"{k} results for {query}")
PYTHON = Tool("python", "Run Python.", {"type": "object", "properties": {"code": {"type": "string"}},
                                        "required": ["code"]}, lambda code: f"ran {len(code)} chars")


def broken(x):
    raise RuntimeError("disk on fire")


BROKEN = Tool("broken", "Always fails.", {"type": "object", "properties": {"x": {"type": "integer"}}}, broken)


@pytest.fixture
def tools():
    return ToolSet([SEARCH, PYTHON, BROKEN], code_tool="python")


def call(name, **arguments):
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def test_schema_is_openai_function_format():
    schema = SEARCH.schema()
    assert schema["type"] == "function"
    assert schema["function"]["name"] == "search" and schema["function"]["parameters"]["required"] == ["query"]


def test_hermes_calls_in_order_with_fenced_code(tools):
    text = (f"Let me look. {call('search', query='zarvex', k=2)}\nthen\n```python\nprint(1)\n```\n"
            f"{call('search', query='b')}")
    calls = tools.parse(text)
    assert [(c.name, c.arguments) for c in calls] == [
        ("search", {"query": "zarvex", "k": 2}), ("python", {"code": "print(1)\n"}), ("search", {"query": "b"})]
    assert all(isinstance(c, ToolCall) for c in calls)
    assert tools.call(calls[0]) == "2 results for zarvex"


def test_other_formats(tools):
    unclosed = '<tool_call>{"name": "search", "arguments": {"query": "q"}}'
    assert tools.parse(unclosed)[0].arguments == {"query": "q"}
    mistral = ('[TOOL_CALLS][{"name": "search", "arguments": {"query": "a"}}, '
               '{"name": "python", "arguments": {"code": "1"}}]')
    assert [c.name for c in tools.parse(mistral)] == ["search", "python"]
    llama_and_openai = ('<tool_call>{"name": "search", "parameters": {"query": "l"}}</tool_call>'
                        '<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"o\\"}"}</tool_call>')
    assert [c.arguments["query"] for c in tools.parse(llama_and_openai)] == ["l", "o"]


def test_no_calls_in_plain_text(tools):
    assert tools.parse("I think the answer is 4.") == []
    assert tools.parse("```\nnot python\n```") == []


@pytest.mark.parametrize("text, expected", [
    ('<tool_call>{"name": "search", "arguments": {"query": "x"</tool_call>', "not valid JSON"),
    (call("serch", query="x"), "unknown tool 'serch'"),
    (call("search"), "'query' is a required property"),
    (call("search", query=3), "query: 3 is not of type 'string'"),
    (call("search", query="x", k="two"), "k: 'two' is not of type 'integer'"),
    (call("search", query="x", depth=2), "'depth' was unexpected"),
    ('<tool_call>["search"]</tool_call>', 'must be a JSON object with "name"'),
    ('<tool_call>{"name": "search", "arguments": "{oops"}</tool_call>', "arguments of 'search' are not valid JSON"),
    ('<tool_call>{"name": "search", "arguments": [1]}</tool_call>', "must be a JSON object, got list"),
])
def test_malformed_calls_become_clear_errors(tools, text, expected):
    (parsed,) = tools.parse(text)
    assert isinstance(parsed, ToolCallError)
    assert expected in parsed.message
    observation = tools.call(parsed)
    assert observation.startswith("Tool call error:") and "A valid call looks like: <tool_call>" in observation


def test_unknown_tool_suggests_the_closest(tools):
    (parsed,) = tools.parse(call("pyton", code="1"))
    assert '"name": "python"' in parsed.message


def test_examples_are_valid_calls(tools):
    for tool in tools.tools.values():
        (parsed,) = tools.parse(tool.example())
        assert isinstance(parsed, ToolCall) and parsed.name == tool.name


def test_a_failing_tool_is_an_observation(tools):
    (parsed,) = tools.parse(call("broken", x=1))
    assert tools.call(parsed) == "Tool 'broken' failed: RuntimeError: disk on fire"


def test_bad_definitions_are_rejected():
    with pytest.raises(ValueError, match="tool name"):
        Tool("bad name", "", {"type": "object"}, print)
    with pytest.raises(ValueError, match='"type": "object"'):
        Tool("t", "", {"type": "string"}, print)
    with pytest.raises(ValueError, match="code_tool"):
        ToolSet([SEARCH], code_tool="python")
    with pytest.raises(ValueError, match="at least one tool"):
        ToolSet([])


def test_huge_and_binary_text_does_not_crash(tools):
    assert tools.parse("<tool_call>" * 10_000 + "\x00\xff" * 1000)
    assert tools.parse("x" * 1_000_000) == []
