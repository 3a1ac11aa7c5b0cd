"""Agents to train or evaluate as `rollout.agent` / `envgym eval --agent` (see `envgym.agents`).

- `chat_agent`: the OpenAI SDK's chat completions in a loop; tool calls go structured (`tool_calls`
  answered by `tool` messages), any other reply is the env action; the history only grows.
- `window_agent`: the same loop, but each request holds only the instructions and the latest
  observation (a rewritten history: every request is a token row of its own).
- `sdk_agent`: the OpenAI Agents SDK with the env's tools as function tools; its final output is the
  env action when the tools have not ended the episode.

A tool env's actions are text (``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` for a call),
so the agents turn each structured call into that text for `env.step`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

MODEL = "policy"


def as_action(name: str, arguments: str) -> str:
    """A structured tool call as the ``<tool_call>`` text tool envs read (arguments that are not JSON stay
    a string, for the env to reject with its message)."""
    try:
        parsed: Any = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        parsed = arguments
    return f"<tool_call>{json.dumps({'name': name, 'arguments': parsed})}</tool_call>"


def chat_agent(env: Any, client: Any, max_requests: int = 16, history: str = "full") -> None:
    observation, info = env.reset()
    tools = info.get("tools") or None
    system = {"role": "system", "content": env.instructions}
    messages: list[dict[str, Any]] = [system, {"role": "user", "content": observation}]
    for _ in range(max_requests):
        request = messages if history == "full" else [system, messages[-1]]
        reply = client.chat.completions.create(model=MODEL, messages=request, **({"tools": tools} if tools else {}))
        message = reply.choices[0].message
        calls = message.tool_calls or []
        messages.append({"role": "assistant", "content": message.content or "",
                         **({"tool_calls": [c.model_dump() for c in calls]} if calls else {})})
        for call in calls:
            observation, _, terminated, truncated, _ = env.step(as_action(call.function.name, call.function.arguments))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": observation})
            if terminated or truncated:
                return
        if not calls:
            observation, _, terminated, truncated, _ = env.step(message.content or "")
            if terminated or truncated:
                return
            messages.append({"role": "user", "content": observation})


def window_agent(env: Any, client: Any) -> None:
    chat_agent(env, client, history="window")


def sdk_agent(env: Any, client: Any, max_turns: int = 8) -> None:
    import openai
    from agents import (Agent, FunctionTool, OpenAIChatCompletionsModel, Runner, ToolsToFinalOutputResult,
                        set_tracing_disabled)

    set_tracing_disabled(True)  # the SDK would send traces to OpenAI
    observation, info = env.reset()
    done = False

    def tool(schema: dict[str, Any]) -> FunctionTool:
        async def invoke(context: Any, arguments: str) -> str:
            nonlocal done
            observation, _, terminated, truncated, _ = env.step(as_action(schema["name"], arguments))
            done = terminated or truncated
            return observation

        return FunctionTool(name=schema["name"], description=schema.get("description", ""),
                            params_json_schema=schema["parameters"], on_invoke_tool=invoke, strict_json_schema=False)

    async def run() -> Any:
        async with openai.AsyncOpenAI(base_url=str(client.base_url), api_key=client.api_key, max_retries=0) as api:
            agent = Agent(name="solver", instructions=env.instructions,
                          model=OpenAIChatCompletionsModel(model=MODEL, openai_client=api),
                          tools=[tool(t["function"]) for t in info.get("tools") or []],
                          tool_use_behavior=lambda context, results: ToolsToFinalOutputResult(  # the env ended: stop
                              is_final_output=done, final_output=results[-1].output if done else None))
            return await Runner.run(agent, observation, max_turns=max_turns)

    result = asyncio.run(run())
    if not done:
        env.step(str(result.final_output or ""))
