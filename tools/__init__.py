"""Tools for agents: tool schemas and call parsing, sandboxes, Python executors, BM25 search.

    from envgym.tools import make_sandbox, PythonSession, Tool, parse_tool_calls, SearchIndex

Sandboxes (`make_sandbox("auto" | "bwrap" | "docker" | "subprocess")`) are the
security boundary for model-written code; see `envgym.tools.sandbox` for the
contract and each backend's module for what enforces what.
"""

from envgym.tools.bwrap_sandbox import BwrapSandbox
from envgym.tools.calls import Tool, ToolCall, ToolCallError, ToolSet
from envgym.tools.python_exec import PythonExecutor, PythonSession, python_tool
from envgym.tools.sandbox import ExecResult, ExecStatus, Limits, Sandbox
from envgym.tools.sandbox_kinds import make_sandbox
from envgym.tools.subprocess_sandbox import SubprocessSandbox

__all__ = ["BwrapSandbox", "ExecResult", "ExecStatus", "Limits", "PythonExecutor", "PythonSession", "Sandbox",
           "SubprocessSandbox", "Tool", "ToolCall", "ToolCallError", "ToolSet", "make_sandbox", "python_tool"]
